package certs

import (
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
)

// cert-manager's API, written out so that cert-manager is not a Go dependency.
const (
	CertManagerGroup      = "cert-manager.io"
	CertManagerAPIVersion = CertManagerGroup + "/v1"
	CertificateKind       = "Certificate"
	defaultIssuerKind     = "Issuer"
)

// BuildCertificate is the cert-manager.io/v1 Certificate that has issuer write a certificate for dnsNames into
// the kubernetes.io/tls Secret secretName, used instead of the built-in CA when spec.tls.issuerRef is set.
// The key is ECDSA P-256, regenerated on every renewal; the certificate lives LeafLifetime and cert-manager
// renews it LeafRenewBefore its expiry. Like IssueServing's, it is both a server and a client certificate:
// the Cortex components present theirs on both ends of mutual TLS. An empty issuer kind or group takes the CRD's defaults (Issuer,
// cert-manager.io), so the object is the same whether or not the MetricsCluster was defaulted.
func BuildCertificate(namespace, name, secretName string, dnsNames []string, issuer v1alpha1.IssuerReference) *unstructured.Unstructured {
	kind, group := issuer.Kind, issuer.Group
	if kind == "" {
		kind = defaultIssuerKind
	}
	if group == "" {
		group = CertManagerGroup
	}
	names := make([]any, 0, len(dnsNames))
	for _, n := range dnsNames {
		names = append(names, n)
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": CertManagerAPIVersion,
		"kind":       CertificateKind,
		"metadata": map[string]any{
			"name":      name,
			"namespace": namespace,
		},
		"spec": map[string]any{
			"secretName": secretName,
			"dnsNames":   names,
			"issuerRef": map[string]any{
				"name":  issuer.Name,
				"kind":  kind,
				"group": group,
			},
			"privateKey": map[string]any{
				"algorithm":      "ECDSA",
				"size":           int64(256),
				"rotationPolicy": "Always",
			},
			"usages":      []any{"digital signature", "server auth", "client auth"},
			"duration":    hours(LeafLifetime),
			"renewBefore": hours(LeafRenewBefore),
		},
	}}
}

// hours writes a whole number of hours the way cert-manager's documentation does ("2160h").
func hours(d time.Duration) string {
	return fmt.Sprintf("%dh", int64(d/time.Hour))
}
