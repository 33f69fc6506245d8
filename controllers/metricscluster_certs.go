package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/apply"
	"github.com/opstrace/opstrace/internal/certs"
	"github.com/opstrace/opstrace/internal/manifests"
)

// reconcileCertificates keeps the gateway's serving certificate in Secret <cluster>-gateway-tls: from the
// built-in CA by default, renewed at 80% of its lifetime and reissued when the hostname changes; or as a
// cert-manager Certificate when spec.tls.issuerRef is set. It returns when to look again.
func (r *MetricsClusterReconciler) reconcileCertificates(ctx context.Context, cluster *v1alpha1.MetricsCluster) (time.Duration, error) {
	dnsNames := certs.GatewayDNSNames(cluster.Name, cluster.Namespace, cluster.Spec.Gateway.Hostname)
	applier := apply.Applier{Client: r.Client, Scheme: r.Scheme}
	if issuer := cluster.Spec.TLS.IssuerRef; issuer != nil {
		if !r.kindExists(certificateKind) {
			return 0, &DegradedError{Reason: v1alpha1.ReasonCertManagerUnavailable, Message: fmt.Sprintf(
				"spec.tls.issuerRef names %s %s, but cert-manager is not installed (no certificates.cert-manager.io CRD); install cert-manager or remove issuerRef to use the built-in CA",
				issuer.Kind, issuer.Name)}
		}
		certificate := certs.BuildCertificate(cluster.Namespace, manifests.GatewayTLSSecretName(cluster.Name),
			manifests.GatewayTLSSecretName(cluster.Name), dnsNames, *issuer)
		_, err := applier.Apply(ctx, cluster, certificate)
		return 0, err
	}

	now := r.now()
	ca, err := r.ensureCA(ctx, cluster, now)
	if err != nil {
		return 0, err
	}
	var existing corev1.Secret
	key := client.ObjectKey{Namespace: cluster.Namespace, Name: manifests.GatewayTLSSecretName(cluster.Name)}
	if err := r.Client.Get(ctx, key, &existing); err != nil && !apierrors.IsNotFound(err) {
		return 0, fmt.Errorf("get gateway certificate: %w", err)
	}
	reissue, _ := certs.NeedsReissue(existing.Data[corev1.TLSCertKey], ca, dnsNames, nil, now)
	if _, _, err := certs.ParseKeyPair(existing.Data[corev1.TLSCertKey], existing.Data[corev1.TLSPrivateKeyKey]); err != nil {
		reissue = true
	}
	certPEM, keyPEM := existing.Data[corev1.TLSCertKey], existing.Data[corev1.TLSPrivateKeyKey]
	if reissue {
		leaf, err := certs.IssueServing(ca, dnsNames, nil, now, certs.LeafLifetime)
		if err != nil {
			return 0, err
		}
		certPEM, keyPEM = leaf.CertPEM, leaf.KeyPEM
		secret := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: key.Namespace},
			Type:       corev1.SecretTypeTLS,
			Data: map[string][]byte{
				corev1.TLSCertKey: leaf.CertPEM, corev1.TLSPrivateKeyKey: leaf.KeyPEM,
				"ca.crt": certs.Bundle(ca.CertPEM),
			},
		}
		if _, err := applier.Apply(ctx, cluster, secret); err != nil {
			return 0, err
		}
	}
	leaf, _, err := certs.ParseKeyPair(certPEM, keyPEM)
	if err != nil {
		return 0, fmt.Errorf("read back gateway certificate: %w", err)
	}
	return max(certs.RenewAt(leaf).Sub(now), time.Minute), nil
}

// ensureCA creates the cluster's CA once and renews it at 80% of its lifetime.
func (r *MetricsClusterReconciler) ensureCA(ctx context.Context, cluster *v1alpha1.MetricsCluster, now time.Time) (certs.KeyPair, error) {
	var secret corev1.Secret
	key := client.ObjectKey{Namespace: cluster.Namespace, Name: manifests.CASecretName(cluster.Name)}
	if err := r.Client.Get(ctx, key, &secret); err != nil && !apierrors.IsNotFound(err) {
		return certs.KeyPair{}, fmt.Errorf("get CA: %w", err)
	}
	ca := certs.KeyPair{CertPEM: secret.Data[corev1.TLSCertKey], KeyPEM: secret.Data[corev1.TLSPrivateKeyKey]}
	renew, _ := certs.NeedsRenewal(ca.CertPEM, now)
	if _, _, err := certs.ParseKeyPair(ca.CertPEM, ca.KeyPEM); err != nil {
		renew = true
	}
	if !renew {
		return ca, nil
	}
	ca, err := certs.NewCA(fmt.Sprintf("opstrace %s/%s CA", cluster.Namespace, cluster.Name), now, certs.CALifetime)
	if err != nil {
		return certs.KeyPair{}, err
	}
	fresh := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: key.Namespace},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: ca.CertPEM, corev1.TLSPrivateKeyKey: ca.KeyPEM},
	}
	applier := apply.Applier{Client: r.Client, Scheme: r.Scheme}
	if _, err := applier.Apply(ctx, cluster, fresh); err != nil {
		return certs.KeyPair{}, err
	}
	return ca, nil
}
