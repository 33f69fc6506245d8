package controllers

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
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

// leafCertificate is a certificate the controller keeps in a kubernetes.io/tls Secret.
type leafCertificate struct {
	secretName string
	dnsNames   []string
	// issuer is the cert-manager issuer of the certificate, and field the spec field that names it; a nil
	// issuer means the built-in CA issues it.
	issuer *v1alpha1.IssuerReference
	field  string
}

// clusterCertificates are the leaves of a cluster: the gateway's serving certificate, and the component
// certificate every Cortex and Loki process presents as gRPC server and client and on the gossip port. spec.tls
// decides who issues both, unless spec.gateway.tls.issuerRef takes the gateway's: then the certificate names
// only spec.gateway.hostname, because a public issuer (ACME, Let's Encrypt) cannot vouch for *.svc names.
func clusterCertificates(cluster *v1alpha1.MetricsCluster) []leafCertificate {
	services, headless := manifests.ComponentServices(cluster.Name, cluster.Spec.Topology)
	gateway := leafCertificate{secretName: manifests.GatewayTLSSecretName(cluster.Name),
		dnsNames: certs.GatewayDNSNames(cluster.Name, cluster.Namespace, cluster.Spec.Gateway.Hostname),
		issuer:   cluster.Spec.TLS.IssuerRef, field: "spec.tls.issuerRef"}
	if gw := cluster.Spec.Gateway.TLS; gw != nil && gw.IssuerRef != nil {
		gateway.dnsNames = []string{strings.TrimSuffix(cluster.Spec.Gateway.Hostname, ".")}
		gateway.issuer, gateway.field = gw.IssuerRef, "spec.gateway.tls.issuerRef"
	}
	return []leafCertificate{gateway, {secretName: manifests.CortexTLSSecretName(cluster.Name),
		dnsNames: certs.ServiceDNSNames(cluster.Namespace, services, headless),
		issuer:   cluster.Spec.TLS.IssuerRef, field: "spec.tls.issuerRef"}}
}

// reconcileCertificates keeps the gateway's certificate (Secret <cluster>-gateway-tls) and the Cortex and
// Loki components' (Secret <cluster>-cortex-tls). A leaf with an issuer is a cert-manager Certificate, and
// cert-manager writes its Secret; the others come from the built-in CA, renewed at 80% of their lifetime
// and reissued when their names change. It returns when to look again and the component certificate as the
// Cortex and Loki pods mount it.
func (r *MetricsClusterReconciler) reconcileCertificates(ctx context.Context, cluster *v1alpha1.MetricsCluster) (time.Duration, manifests.ComponentTLS, error) {
	applier := apply.Applier{Client: r.Client, Scheme: r.Scheme}
	certManager := r.kindExists(certificateKind)
	componentSecret := manifests.CortexTLSSecretName(cluster.Name)
	var builtIn []leafCertificate
	var component manifests.ComponentTLS
	for _, leaf := range clusterCertificates(cluster) {
		if leaf.issuer == nil {
			builtIn = append(builtIn, leaf)
			continue
		}
		if !certManager {
			return 0, manifests.ComponentTLS{}, &DegradedError{Reason: v1alpha1.ReasonCertManagerUnavailable, Message: fmt.Sprintf(
				"%s names %s %s, but cert-manager is not installed (no certificates.cert-manager.io CRD); install cert-manager or remove issuerRef to use the built-in CA",
				leaf.field, leaf.issuer.Kind, leaf.issuer.Name)}
		}
		// A Secret the built-in CA wrote (before issuerRef was set) holds that CA's ca.crt, which an ACME
		// issuer never overwrites: clients would keep trusting only the old CA. cert-manager issues into a
		// new Secret instead; the running pods keep the mounted certificate until then.
		if err := r.deleteOwnedSecret(ctx, cluster, leaf.secretName); err != nil {
			return 0, manifests.ComponentTLS{}, err
		}
		certificate := certs.BuildCertificate(cluster.Namespace, leaf.secretName, leaf.secretName, leaf.dnsNames, *leaf.issuer)
		if _, err := applier.Apply(ctx, cluster, certificate); err != nil {
			return 0, manifests.ComponentTLS{}, err
		}
		if leaf.secretName == componentSecret {
			// cert-manager writes the Secret; its watch event brings the controller back to restart the pods.
			var secret corev1.Secret
			key := client.ObjectKey{Namespace: cluster.Namespace, Name: componentSecret}
			if err := r.Client.Get(ctx, key, &secret); err != nil && !apierrors.IsNotFound(err) {
				return 0, manifests.ComponentTLS{}, fmt.Errorf("get component certificate: %w", err)
			}
			component = componentTLS(secret.Data)
		}
	}
	if len(builtIn) == 0 {
		return 0, component, nil
	}
	if certManager {
		// A Certificate left from an issuerRef that was removed would make cert-manager overwrite the
		// Secret the built-in CA now keeps, and the two would take turns.
		for _, leaf := range builtIn {
			if err := r.deleteOwnedCertificate(ctx, cluster, leaf.secretName); err != nil {
				return 0, manifests.ComponentTLS{}, err
			}
		}
	}

	now := r.now()
	ca, trusted, err := r.ensureCA(ctx, cluster, now)
	if err != nil {
		return 0, manifests.ComponentTLS{}, err
	}
	caCert, _, err := certs.ParseKeyPair(ca.CertPEM, ca.KeyPEM)
	if err != nil {
		return 0, manifests.ComponentTLS{}, fmt.Errorf("read back CA: %w", err)
	}
	recheck := max(certs.RenewAt(caCert).Sub(now), time.Minute)
	for _, leaf := range builtIn {
		data, renewAt, err := r.ensureLeaf(ctx, cluster, ca, trusted, leaf, now)
		if err != nil {
			return 0, manifests.ComponentTLS{}, err
		}
		recheck = min(recheck, max(renewAt.Sub(now), time.Minute))
		if leaf.secretName == componentSecret {
			component = componentTLS(data)
		}
	}
	return recheck, component, nil
}

// deleteOwnedCertificate deletes the cert-manager Certificate name when this cluster controls it; one
// someone else made is left alone.
func (r *MetricsClusterReconciler) deleteOwnedCertificate(ctx context.Context, cluster *v1alpha1.MetricsCluster, name string) error {
	certificate := &metav1.PartialObjectMetadata{}
	certificate.SetGroupVersionKind(certificateKind)
	return r.deleteOwned(ctx, cluster, certificate, name, "Certificate, whose issuerRef was removed")
}

// deleteOwnedSecret deletes the Secret name when this cluster controls it, as the built-in CA's certificates
// are; one cert-manager wrote is left alone.
func (r *MetricsClusterReconciler) deleteOwnedSecret(ctx context.Context, cluster *v1alpha1.MetricsCluster, name string) error {
	return r.deleteOwned(ctx, cluster, &corev1.Secret{}, name, "Secret of the built-in CA, which cert-manager now issues")
}

// deleteOwned deletes obj (of name, in the cluster's namespace) when this cluster controls it.
func (r *MetricsClusterReconciler) deleteOwned(ctx context.Context, cluster *v1alpha1.MetricsCluster, obj client.Object, name, what string) error {
	err := r.Client.Get(ctx, client.ObjectKey{Namespace: cluster.Namespace, Name: name}, obj)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("get %s %s: %w", what, name, err)
	}
	if !metav1.IsControlledBy(obj, cluster) {
		return nil
	}
	uid := obj.GetUID()
	if err := r.Client.Delete(ctx, obj, client.Preconditions{UID: &uid}); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("delete %s %s: %w", what, name, err)
	}
	return nil
}

// componentTLS is the component certificate as the Cortex and Loki pods mount it, identified by a hash of the
// certificate and CA in the Secret's data (never of the key; empty while the Secret does not exist yet).
func componentTLS(data map[string][]byte) manifests.ComponentTLS {
	tls := manifests.ComponentTLS{Dir: manifests.CortexTLSDir}
	if len(data[corev1.TLSCertKey]) > 0 {
		sum := sha256.New()
		for _, key := range []string{corev1.TLSCertKey, manifests.TLSCAKey} {
			fmt.Fprintf(sum, "%s %d\n", key, len(data[key]))
			sum.Write(data[key])
		}
		tls.Hash = hex.EncodeToString(sum.Sum(nil)[:16])
	}
	return tls
}

// ensureLeaf keeps leaf in its Secret with ca.crt = trusted. It issues the certificate from ca when it is
// missing, unreadable, past 80% of its lifetime, issued for other names, or issued by a CA that trusted does
// not hold. A leaf of the previous CA is kept until its own renewal: the pods that present it restart with
// the new ca.crt first, so that no pod meets a peer whose CA it does not trust yet. It returns the Secret's
// data and when to renew the certificate.
func (r *MetricsClusterReconciler) ensureLeaf(ctx context.Context, cluster *v1alpha1.MetricsCluster, ca certs.KeyPair, trusted []byte, leaf leafCertificate, now time.Time) (map[string][]byte, time.Time, error) {
	var existing corev1.Secret
	key := client.ObjectKey{Namespace: cluster.Namespace, Name: leaf.secretName}
	if err := r.Client.Get(ctx, key, &existing); err != nil && !apierrors.IsNotFound(err) {
		return nil, time.Time{}, fmt.Errorf("get certificate %s: %w", leaf.secretName, err)
	}
	data := existing.Data
	reissue, reason := certs.NeedsReissue(data[corev1.TLSCertKey], ca, leaf.dnsNames, nil, now)
	if reissue && reason == certs.ReasonOtherCA && certs.IssuedByOneOf(data[corev1.TLSCertKey], trusted) {
		reissue = false
	}
	if _, _, err := certs.ParseKeyPair(data[corev1.TLSCertKey], data[corev1.TLSPrivateKeyKey]); err != nil {
		reissue = true
	}
	if reissue || !bytes.Equal(data[manifests.TLSCAKey], trusted) {
		certPEM, keyPEM := data[corev1.TLSCertKey], data[corev1.TLSPrivateKeyKey]
		if reissue {
			issued, err := certs.IssueServing(ca, leaf.dnsNames, nil, now, certs.LeafLifetime)
			if err != nil {
				return nil, time.Time{}, fmt.Errorf("issue certificate %s: %w", leaf.secretName, err)
			}
			certPEM, keyPEM = issued.CertPEM, issued.KeyPEM
		}
		data = map[string][]byte{corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM, manifests.TLSCAKey: trusted}
		secret := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: key.Namespace},
			Type:       corev1.SecretTypeTLS,
			Data:       data,
		}
		if _, err := (&apply.Applier{Client: r.Client, Scheme: r.Scheme}).Apply(ctx, cluster, secret); err != nil {
			return nil, time.Time{}, err
		}
	}
	cert, _, err := certs.ParseKeyPair(data[corev1.TLSCertKey], data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("read back certificate %s: %w", leaf.secretName, err)
	}
	return data, certs.RenewAt(cert), nil
}

// ensureCA creates the cluster's CA once and renews it at 80% of its lifetime. It returns the CA that signs
// and what clients must trust: the Secret's ca.crt, which on renewal becomes the new CA and the one it
// replaced (certs package documentation), less any certificate that has expired.
func (r *MetricsClusterReconciler) ensureCA(ctx context.Context, cluster *v1alpha1.MetricsCluster, now time.Time) (certs.KeyPair, []byte, error) {
	var secret corev1.Secret
	key := client.ObjectKey{Namespace: cluster.Namespace, Name: manifests.CASecretName(cluster.Name)}
	if err := r.Client.Get(ctx, key, &secret); err != nil && !apierrors.IsNotFound(err) {
		return certs.KeyPair{}, nil, fmt.Errorf("get CA: %w", err)
	}
	ca := certs.KeyPair{CertPEM: secret.Data[corev1.TLSCertKey], KeyPEM: secret.Data[corev1.TLSPrivateKeyKey]}
	bundle := secret.Data[manifests.TLSCAKey]
	renew, _ := certs.NeedsRenewal(ca.CertPEM, now)
	if _, _, err := certs.ParseKeyPair(ca.CertPEM, ca.KeyPEM); err != nil {
		renew = true
	}
	if !renew {
		if len(bundle) == 0 { // written before ca.crt was kept
			bundle = ca.CertPEM
		}
		return ca, certs.Trusted(bundle, now), nil
	}
	previous := certs.Trusted(ca.CertPEM, now) // nil when missing, unreadable or expired
	ca, err := certs.NewCA(fmt.Sprintf("opstrace %s/%s CA", cluster.Namespace, cluster.Name), now, certs.CALifetime)
	if err != nil {
		return certs.KeyPair{}, nil, err
	}
	bundle = certs.Bundle(ca.CertPEM, previous)
	fresh := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: key.Namespace},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: ca.CertPEM, corev1.TLSPrivateKeyKey: ca.KeyPEM, manifests.TLSCAKey: bundle},
	}
	applier := apply.Applier{Client: r.Client, Scheme: r.Scheme}
	if _, err := applier.Apply(ctx, cluster, fresh); err != nil {
		return certs.KeyPair{}, nil, err
	}
	return ca, bundle, nil
}
