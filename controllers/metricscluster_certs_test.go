package controllers

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/certs"
	"github.com/opstrace/opstrace/internal/manifests"
)

// leafOf reads the certificate of a TLS Secret and checks it against the cluster's CA, for server and client
// use under name.
func (h *harness) leafOf(secretName, caSecretName, name string) *x509.Certificate {
	h.t.Helper()
	var secret, ca corev1.Secret
	h.get(secretName, &secret)
	h.get(caSecretName, &ca)
	if secret.Type != corev1.SecretTypeTLS {
		h.t.Fatalf("Secret %s has type %s, want %s", secretName, secret.Type, corev1.SecretTypeTLS)
	}
	cert, _, err := certs.ParseKeyPair(secret.Data[corev1.TLSCertKey], secret.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		h.t.Fatalf("Secret %s: %v", secretName, err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(secret.Data[manifests.TLSCAKey]) {
		h.t.Fatalf("Secret %s has no CA in %s", secretName, manifests.TLSCAKey)
	}
	caCert, _, err := certs.ParseKeyPair(ca.Data[corev1.TLSCertKey], ca.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		h.t.Fatalf("CA Secret %s: %v", caSecretName, err)
	}
	only := x509.NewCertPool()
	only.AddCert(caCert)
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		for _, pool := range []*x509.CertPool{roots, only} {
			if _, err := cert.Verify(x509.VerifyOptions{DNSName: name, Roots: pool, CurrentTime: h.now, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
				h.t.Fatalf("certificate of %s does not verify for %s (usage %v) against the cluster CA: %v", secretName, name, usage, err)
			}
		}
	}
	return cert
}

func TestComponentCertificateIsKeptMountedAndRenewedAt80Percent(t *testing.T) {
	h := newHarness(t)
	h.create(singleCluster("metrics"))
	h.reconcileCluster("metrics")

	var cluster v1alpha1.MetricsCluster
	h.get("metrics", &cluster)
	secretName := manifests.CortexTLSSecretName("metrics")
	var secret corev1.Secret
	h.get(secretName, &secret)
	if !ownedBy(&secret, &cluster) {
		t.Fatalf("Secret %s is not controlled by the MetricsCluster: %v", secretName, secret.OwnerReferences)
	}
	ns := h.ns
	component := h.leafOf(secretName, manifests.CASecretName("metrics"), "metrics-all."+ns+".svc")
	// Cortex's and Loki's names: Loki's components present the same certificate.
	for _, name := range []string{"metrics-all", "metrics-all." + ns + ".svc.cluster.local", "metrics-all-0.metrics-all-headless." + ns + ".svc",
		"metrics-loki." + ns + ".svc", "metrics-loki-0.metrics-loki-headless." + ns + ".svc"} {
		if err := component.VerifyHostname(name); err != nil {
			t.Errorf("the component certificate does not cover %s: %v", name, err)
		}
	}
	gateway := h.leafOf(manifests.GatewayTLSSecretName("metrics"), manifests.CASecretName("metrics"), "metrics-gateway."+ns+".svc")

	// The pods mount the Secret and carry a hash of it, so that a new certificate restarts them.
	statefulSetOf := func(name string) (string, *corev1.Volume) {
		var sts appsv1.StatefulSet
		h.get(name, &sts)
		for i, v := range sts.Spec.Template.Spec.Volumes {
			if v.Secret != nil && v.Secret.SecretName == secretName {
				return sts.Spec.Template.Annotations[manifests.TLSHashAnnotation], &sts.Spec.Template.Spec.Volumes[i]
			}
		}
		return sts.Spec.Template.Annotations[manifests.TLSHashAnnotation], nil
	}
	statefulSet := func() (string, *corev1.Volume) { return statefulSetOf("metrics-all") }
	hash0, volume := statefulSet()
	if volume == nil || hash0 == "" {
		t.Fatalf("the StatefulSet mounts no %s (%v) or has no %s annotation (%q)", secretName, volume, manifests.TLSHashAnnotation, hash0)
	}
	if hash0 != componentTLS(secret.Data).Hash {
		t.Fatalf("pod template annotation %s = %q, want the hash of the Secret %q", manifests.TLSHashAnnotation, hash0, componentTLS(secret.Data).Hash)
	}
	// Loki's single process mounts the same Secret and carries the same hash.
	if lokiHash, lokiVolume := statefulSetOf("metrics-loki"); lokiVolume == nil || lokiHash != hash0 {
		t.Fatalf("the Loki StatefulSet mounts %v with %s %q, want Secret %s and hash %q", lokiVolume, manifests.TLSHashAnnotation, lokiHash, secretName, hash0)
	}

	// Before 80% of its lifetime nothing is renewed, and the controller comes back at 80%.
	renewAt := certs.RenewAt(component)
	h.now = renewAt.Add(-time.Hour)
	result := h.reconcileCluster("metrics")
	if result.RequeueAfter <= 0 || result.RequeueAfter > time.Hour {
		t.Errorf("an hour before renewal the reconcile asks to come back after %v, want at most an hour", result.RequeueAfter)
	}
	if again := h.leafOf(secretName, manifests.CASecretName("metrics"), "metrics-all."+ns+".svc"); again.SerialNumber.Cmp(component.SerialNumber) != 0 {
		t.Fatal("the component certificate was renewed before 80% of its lifetime")
	}
	if hash, _ := statefulSet(); hash != hash0 {
		t.Fatal("the pods' certificate hash changed although the certificate did not")
	}

	// Past 80% it is renewed (and the gateway's, issued at the same time, too); the pods' hash follows.
	h.now = renewAt.Add(time.Minute)
	h.reconcileCluster("metrics")
	renewed := h.leafOf(secretName, manifests.CASecretName("metrics"), "metrics-all."+ns+".svc")
	if renewed.SerialNumber.Cmp(component.SerialNumber) == 0 || !renewed.NotAfter.After(component.NotAfter) {
		t.Fatalf("the component certificate was not renewed past 80%% of its lifetime (NotAfter %v, was %v)", renewed.NotAfter, component.NotAfter)
	}
	if g := h.leafOf(manifests.GatewayTLSSecretName("metrics"), manifests.CASecretName("metrics"), "metrics-gateway."+ns+".svc"); g.SerialNumber.Cmp(gateway.SerialNumber) == 0 {
		t.Fatal("the gateway certificate was not renewed past 80% of its lifetime")
	}
	if hash, _ := statefulSet(); hash == hash0 {
		t.Fatal("the pods' certificate hash did not change with the certificate: Cortex's clients would keep the old one")
	}
	var renewedSecret corev1.Secret
	h.get(secretName, &renewedSecret)
	if hash, _ := statefulSetOf("metrics-loki"); hash == hash0 || hash != componentTLS(renewedSecret.Data).Hash {
		t.Fatalf("the Loki pods' certificate hash is %q after the renewal, want the renewed Secret's: Loki's clients would keep the old certificate", hash)
	}

	// Once the status has caught up with the restart the new hash started (one more reconcile), a reconcile
	// with nothing changed writes nothing again: the renewal does not repeat.
	h.reconcileCluster("metrics")
	before := h.writes.n.Load()
	h.reconcileCluster("metrics")
	if writes := h.writes.n.Load() - before; writes != 0 {
		t.Fatalf("a reconcile after the renewal made %d write calls, want 0", writes)
	}
}

func TestIssuerRefMakesACertManagerCertificateForTheComponents(t *testing.T) {
	h := newHarness(t)
	cluster := singleCluster("metrics")
	cluster.Spec.TLS.IssuerRef = &v1alpha1.IssuerReference{Name: "internal-ca", Kind: "ClusterIssuer"}
	h.create(cluster)
	h.reconcileCluster("metrics")

	secretName := manifests.CortexTLSSecretName("metrics")
	certificate := &unstructured.Unstructured{}
	certificate.SetAPIVersion("cert-manager.io/v1")
	certificate.SetKind("Certificate")
	h.get(secretName, certificate)
	h.get("metrics", cluster)
	if !ownedBy(certificate, cluster) {
		t.Errorf("Certificate %s is not controlled by the MetricsCluster", secretName)
	}
	names, _, _ := unstructured.NestedStringSlice(certificate.Object, "spec", "dnsNames")
	target, _, _ := unstructured.NestedString(certificate.Object, "spec", "secretName")
	issuer, _, _ := unstructured.NestedString(certificate.Object, "spec", "issuerRef", "name")
	usages, _, _ := unstructured.NestedStringSlice(certificate.Object, "spec", "usages")
	for _, want := range []string{"metrics-all." + h.ns + ".svc", "*.metrics-all-headless." + h.ns + ".svc"} {
		if !slices.Contains(names, want) {
			t.Errorf("Certificate dnsNames %v lack %s", names, want)
		}
	}
	if target != secretName || issuer != "internal-ca" || !slices.Contains(usages, "client auth") || !slices.Contains(usages, "server auth") {
		t.Errorf("Certificate secretName %q issuer %q usages %v; want %s, internal-ca, server and client auth", target, issuer, usages, secretName)
	}

	// When cert-manager writes the Secret, the pods get its hash (and restart when it renews it).
	hash := func() string {
		var sts appsv1.StatefulSet
		h.get("metrics-all", &sts)
		return sts.Spec.Template.Annotations[manifests.TLSHashAnnotation]
	}
	if got := hash(); got != "" {
		t.Fatalf("before cert-manager issued anything the pods' certificate hash is %q, want empty", got)
	}
	now := time.Now()
	ca, err := certs.NewCA("cert-manager test CA", now, certs.CALifetime)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := certs.IssueServing(ca, names, nil, now, certs.LeafLifetime)
	if err != nil {
		t.Fatal(err)
	}
	data := map[string][]byte{corev1.TLSCertKey: leaf.CertPEM, corev1.TLSPrivateKeyKey: leaf.KeyPEM, manifests.TLSCAKey: ca.CertPEM}
	h.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: secretName}, Type: corev1.SecretTypeTLS, Data: data})
	h.reconcileCluster("metrics")
	if got := hash(); got == "" || got != componentTLS(data).Hash {
		t.Fatalf("after cert-manager wrote the Secret the pods' certificate hash is %q, want %q", got, componentTLS(data).Hash)
	}
}

// A CA renewal never leaves a pod facing a peer whose CA it does not trust: the leaves keep their certificate
// (from the previous CA) and get ca.crt = new CA + previous CA, so the pods restart trusting both; only at
// their own renewal do the leaves come from the new CA; the previous CA leaves ca.crt once it has expired.
func TestCARenewalKeepsLeavesTrustedAcrossTheSwitch(t *testing.T) {
	h := newHarness(t)
	h.create(singleCluster("metrics"))
	h.reconcileCluster("metrics")
	secretName := manifests.CortexTLSSecretName("metrics")
	read := func(name string) (*x509.Certificate, []byte) {
		var secret corev1.Secret
		h.get(name, &secret)
		cert, _, err := certs.ParseKeyPair(secret.Data[corev1.TLSCertKey], secret.Data[corev1.TLSPrivateKeyKey])
		if err != nil {
			t.Fatalf("Secret %s: %v", name, err)
		}
		return cert, secret.Data[manifests.TLSCAKey]
	}
	verifies := func(leaf *x509.Certificate, bundle []byte) bool {
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(bundle)
		_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: h.now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		return err == nil
	}
	hash := func() string {
		var sts appsv1.StatefulSet
		h.get("metrics-all", &sts)
		return sts.Spec.Template.Annotations[manifests.TLSHashAnnotation]
	}

	oldCA, _ := read(manifests.CASecretName("metrics"))
	h.now = certs.RenewAt(oldCA).Add(-time.Hour)
	h.reconcileCluster("metrics") // the leaves, long expired by now, are renewed by the old CA
	leaf, _ := read(secretName)
	hashBefore := hash()

	h.now = certs.RenewAt(oldCA).Add(time.Minute)
	h.reconcileCluster("metrics")
	newCA, caBundle := read(manifests.CASecretName("metrics"))
	if newCA.SerialNumber.Cmp(oldCA.SerialNumber) == 0 {
		t.Fatal("the CA was not renewed past 80% of its lifetime")
	}
	kept, bundle := read(secretName)
	if kept.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Fatal("the component certificate was reissued at the CA's renewal: pods not yet restarted would not trust it")
	}
	if want := certs.Bundle(pemOf(newCA), pemOf(oldCA)); string(bundle) != string(want) || string(caBundle) != string(want) {
		t.Fatalf("after the CA renewal ca.crt is not the new CA then the previous one:\nleaf Secret:\n%s\nCA Secret:\n%s", bundle, caBundle)
	}
	if !verifies(kept, bundle) {
		t.Fatal("the kept leaf does not verify against the new ca.crt")
	}
	if hash() == hashBefore {
		t.Fatal("the pods' certificate hash did not change with ca.crt: they would not learn the new CA")
	}

	h.now = certs.RenewAt(kept).Add(time.Minute)
	h.reconcileCluster("metrics")
	renewed, bundle := read(secretName)
	onlyNew := pemOf(newCA)
	if renewed.SerialNumber.Cmp(kept.SerialNumber) == 0 || !verifies(renewed, onlyNew) || !verifies(renewed, bundle) {
		t.Fatal("at its renewal the component certificate was not issued by the new CA")
	}

	h.now = oldCA.NotAfter.Add(time.Minute)
	h.reconcileCluster("metrics")
	if _, bundle := read(secretName); string(bundle) != string(onlyNew) {
		t.Fatalf("after the previous CA expired ca.crt still holds it:\n%s", bundle)
	}
}

// pemOf is the PEM of a parsed certificate.
func pemOf(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

// certificateOf reads the cert-manager Certificate name: its dnsNames and issuer; found is false when there is none.
func (h *harness) certificateOf(name string) (dnsNames []string, issuer string, found bool) {
	h.t.Helper()
	certificate := &unstructured.Unstructured{}
	certificate.SetAPIVersion("cert-manager.io/v1")
	certificate.SetKind("Certificate")
	err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: h.ns, Name: name}, certificate)
	if apierrors.IsNotFound(err) {
		return nil, "", false
	}
	if err != nil {
		h.t.Fatal(err)
	}
	dnsNames, _, _ = unstructured.NestedStringSlice(certificate.Object, "spec", "dnsNames")
	kind, _, _ := unstructured.NestedString(certificate.Object, "spec", "issuerRef", "kind")
	issuerName, _, _ := unstructured.NestedString(certificate.Object, "spec", "issuerRef", "name")
	return dnsNames, kind + "/" + issuerName, true
}

// A public ACME issuer (Let's Encrypt) cannot sign *.svc names nor writes ca.crt: spec.gateway.tls.issuerRef
// gives it the gateway's certificate alone, for gateway.hostname only, while the components' mutual TLS
// stays on the built-in CA (or spec.tls.issuerRef). Removing it gives the gateway back to the built-in CA
// and deletes the Certificate, so that cert-manager and the controller do not take turns on the Secret.
func TestGatewayIssuerRefIssuesOnlyTheGatewayCertificateForItsHostname(t *testing.T) {
	h := newHarness(t)
	letsEncrypt := &v1alpha1.IssuerReference{Name: "opstrace-letsencrypt-prod", Kind: "ClusterIssuer"}

	// The API server refuses a gateway issuer without the hostname it would issue for, and says how to fix it.
	noHost := singleCluster("nohost")
	noHost.Namespace = h.ns
	noHost.Spec.Gateway.TLS = &v1alpha1.GatewayTLSSpec{IssuerRef: letsEncrypt}
	err := env.Client.Create(context.Background(), noHost)
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.gateway.tls.issuerRef") ||
		!strings.Contains(err.Error(), "set gateway.hostname to the name clients use") {
		t.Fatalf("a gateway issuer without gateway.hostname: %v", err)
	}

	cluster := singleCluster("metrics")
	cluster.Spec.Gateway.Hostname = "metrics.example.com"
	cluster.Spec.Gateway.TLS = &v1alpha1.GatewayTLSSpec{IssuerRef: letsEncrypt}
	h.create(cluster)
	h.reconcileCluster("metrics")

	gatewaySecret, componentSecret := manifests.GatewayTLSSecretName("metrics"), manifests.CortexTLSSecretName("metrics")
	names, issuer, found := h.certificateOf(gatewaySecret)
	if !found || !slices.Equal(names, []string{"metrics.example.com"}) || issuer != "ClusterIssuer/opstrace-letsencrypt-prod" {
		t.Fatalf("gateway Certificate: found %v, dnsNames %v, issuer %s; want [metrics.example.com] from ClusterIssuer/opstrace-letsencrypt-prod", found, names, issuer)
	}
	if _, _, found := h.certificateOf(componentSecret); found {
		t.Fatal("the components' certificate went to the gateway's issuer: an ACME issuer cannot sign their *.svc names")
	}
	// The components keep mutual TLS from the built-in CA; the gateway's Secret is cert-manager's to write.
	h.leafOf(componentSecret, manifests.CASecretName("metrics"), "metrics-all."+h.ns+".svc")
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: h.ns, Name: gatewaySecret}, &corev1.Secret{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the controller wrote the gateway Secret that cert-manager issues: %v", err)
	}
	// Nothing changed: once the status has caught up (one more reconcile), a reconcile writes nothing.
	h.reconcileCluster("metrics")
	before := h.writes.n.Load()
	h.reconcileCluster("metrics")
	if writes := h.writes.n.Load() - before; writes != 0 {
		t.Errorf("an unchanged reconcile made %d write calls, want 0", writes)
	}

	// With spec.tls.issuerRef too, each certificate goes to its own issuer, and no built-in CA is made.
	mixed := singleCluster("mixed")
	mixed.Spec.Gateway.Hostname = "mixed.example.com"
	mixed.Spec.Gateway.TLS = &v1alpha1.GatewayTLSSpec{IssuerRef: letsEncrypt}
	mixed.Spec.TLS.IssuerRef = &v1alpha1.IssuerReference{Name: "internal-ca", Kind: "Issuer"}
	h.create(mixed)
	h.reconcileCluster("mixed")
	if names, issuer, _ := h.certificateOf(manifests.GatewayTLSSecretName("mixed")); !slices.Equal(names, []string{"mixed.example.com"}) || issuer != "ClusterIssuer/opstrace-letsencrypt-prod" {
		t.Errorf("gateway Certificate of mixed: %v from %s", names, issuer)
	}
	if names, issuer, _ := h.certificateOf(manifests.CortexTLSSecretName("mixed")); !slices.Contains(names, "mixed-all."+h.ns+".svc") || issuer != "Issuer/internal-ca" {
		t.Errorf("component Certificate of mixed: %v from %s", names, issuer)
	}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: h.ns, Name: manifests.CASecretName("mixed")}, &corev1.Secret{}); !apierrors.IsNotFound(err) {
		t.Errorf("a built-in CA was made although cert-manager issues every certificate: %v", err)
	}

	// gateway.tls removed: the built-in CA issues the gateway's certificate (in-cluster names and the
	// hostname) and the Certificate is gone.
	h.get("metrics", cluster)
	cluster.Spec.Gateway.TLS = nil
	if err := env.Client.Update(context.Background(), cluster); err != nil {
		t.Fatal(err)
	}
	h.reconcileCluster("metrics")
	if _, _, found := h.certificateOf(gatewaySecret); found {
		t.Fatal("the gateway Certificate was kept after gateway.tls.issuerRef was removed: cert-manager would overwrite the built-in CA's certificate")
	}
	gateway := h.leafOf(gatewaySecret, manifests.CASecretName("metrics"), "metrics.example.com")
	if err := gateway.VerifyHostname("metrics-gateway." + h.ns + ".svc"); err != nil {
		t.Errorf("the built-in CA's gateway certificate lacks the in-cluster name: %v", err)
	}

	// gateway.tls.issuerRef set on a cluster whose gateway Secret the built-in CA wrote: that Secret (and
	// its ca.crt of the built-in CA, which an ACME issuer never overwrites) is deleted once, for cert-manager
	// to issue into; the Secret cert-manager writes (no owner) is kept.
	h.get("metrics", cluster)
	cluster.Spec.Gateway.TLS = &v1alpha1.GatewayTLSSpec{IssuerRef: letsEncrypt}
	if err := env.Client.Update(context.Background(), cluster); err != nil {
		t.Fatal(err)
	}
	h.reconcileCluster("metrics")
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: h.ns, Name: gatewaySecret}, &corev1.Secret{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the built-in CA's gateway Secret was kept for cert-manager: %v", err)
	}
	if _, issuer, found := h.certificateOf(gatewaySecret); !found || issuer != "ClusterIssuer/opstrace-letsencrypt-prod" {
		t.Fatalf("gateway Certificate after setting the issuer again: %v %s", found, issuer)
	}
	issued := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: gatewaySecret, Annotations: map[string]string{"cert-manager.io/issuer-name": "opstrace-letsencrypt-prod"}},
		Type: corev1.SecretTypeTLS, Data: map[string][]byte{corev1.TLSCertKey: []byte("public chain"), corev1.TLSPrivateKeyKey: []byte("key")}}
	h.create(issued)
	h.reconcileCluster("metrics")
	var kept corev1.Secret
	h.get(gatewaySecret, &kept)
	if kept.UID != issued.UID || string(kept.Data[corev1.TLSCertKey]) != "public chain" || len(kept.Data[manifests.TLSCAKey]) != 0 {
		t.Errorf("the Secret cert-manager wrote was changed or replaced: %v", kept.Data)
	}
}
