package certs

import (
	"reflect"
	"testing"
	"time"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func TestGatewayDNSNames(t *testing.T) {
	internal := []string{
		"metrics-gateway",
		"metrics-gateway.opstrace",
		"metrics-gateway.opstrace.svc",
		"metrics-gateway.opstrace.svc.cluster.local",
	}
	for _, tc := range []struct {
		name     string
		hostname string
		want     []string
	}{
		{"without hostname", "", internal},
		{"with hostname", "metrics.example.com", []string{
			"metrics-gateway",
			"metrics-gateway.opstrace",
			"metrics-gateway.opstrace.svc",
			"metrics-gateway.opstrace.svc.cluster.local",
			"metrics.example.com",
		}},
		{"hostname sorts first", "a.example.com", append([]string{"a.example.com"}, internal...)},
		{"hostname upper-case with a trailing dot", "Metrics.Example.COM.", append(append([]string{}, internal...), "metrics.example.com")},
		{"hostname equal to an internal name", "metrics-gateway.opstrace.svc", internal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := GatewayDNSNames("metrics", "opstrace", tc.hostname); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("GatewayDNSNames = %q, want %q", got, tc.want)
			}
		})
	}
	if got := GatewayServiceName("metrics"); got != "metrics-gateway" {
		t.Errorf("GatewayServiceName = %q", got)
	}
}

func TestBuildCertificate(t *testing.T) {
	names := GatewayDNSNames("metrics", "opstrace", "metrics.example.com")
	for _, tc := range []struct {
		name              string
		issuer            v1alpha1.IssuerReference
		wantKind, wantGrp string
	}{
		{"defaults", v1alpha1.IssuerReference{Name: "letsencrypt"}, "Issuer", "cert-manager.io"},
		{"cluster issuer", v1alpha1.IssuerReference{Name: "letsencrypt", Kind: "ClusterIssuer", Group: "cert-manager.io"}, "ClusterIssuer", "cert-manager.io"},
		{"external issuer group", v1alpha1.IssuerReference{Name: "pca", Kind: "Issuer", Group: "awspca.cert-manager.io"}, "Issuer", "awspca.cert-manager.io"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obj := BuildCertificate("opstrace", "metrics-gateway", "metrics-gateway-tls", names, tc.issuer)
			// DeepCopy panics on values unstructured cannot hold (such as []string or int).
			obj = obj.DeepCopy()

			if obj.GetAPIVersion() != "cert-manager.io/v1" || obj.GetKind() != "Certificate" {
				t.Errorf("apiVersion/kind = %s/%s", obj.GetAPIVersion(), obj.GetKind())
			}
			if obj.GetNamespace() != "opstrace" || obj.GetName() != "metrics-gateway" {
				t.Errorf("namespace/name = %s/%s", obj.GetNamespace(), obj.GetName())
			}
			for _, f := range []struct {
				path []string
				want string
			}{
				{[]string{"spec", "secretName"}, "metrics-gateway-tls"},
				{[]string{"spec", "issuerRef", "name"}, tc.issuer.Name},
				{[]string{"spec", "issuerRef", "kind"}, tc.wantKind},
				{[]string{"spec", "issuerRef", "group"}, tc.wantGrp},
				{[]string{"spec", "privateKey", "algorithm"}, "ECDSA"},
				{[]string{"spec", "privateKey", "rotationPolicy"}, "Always"},
				{[]string{"spec", "duration"}, "2160h"},
				{[]string{"spec", "renewBefore"}, "720h"},
			} {
				got, found, err := unstructured.NestedString(obj.Object, f.path...)
				if err != nil || !found || got != f.want {
					t.Errorf("%v = %q (found %v, %v), want %q", f.path, got, found, err, f.want)
				}
			}
			size, found, err := unstructured.NestedInt64(obj.Object, "spec", "privateKey", "size")
			if err != nil || !found || size != 256 {
				t.Errorf("spec.privateKey.size = %d (found %v, %v), want 256", size, found, err)
			}
			usages, found, err := unstructured.NestedStringSlice(obj.Object, "spec", "usages")
			if want := []string{"digital signature", "server auth", "client auth"}; err != nil || !found || !reflect.DeepEqual(usages, want) {
				t.Errorf("spec.usages = %q (found %v, %v), want %q", usages, found, err, want)
			}
			dnsNames, found, err := unstructured.NestedStringSlice(obj.Object, "spec", "dnsNames")
			if err != nil || !found || !reflect.DeepEqual(dnsNames, names) {
				t.Errorf("spec.dnsNames = %q (found %v, %v), want %q", dnsNames, found, err, names)
			}
		})
	}
}

func TestServiceDNSNames(t *testing.T) {
	got := ServiceDNSNames("obs", []string{"m-ingester", "M-Distributor"}, []string{"m-ingester-headless"})
	want := []string{
		"*.m-ingester-headless.obs.svc",
		"*.m-ingester-headless.obs.svc.cluster.local",
		"m-distributor",
		"m-distributor.obs",
		"m-distributor.obs.svc",
		"m-distributor.obs.svc.cluster.local",
		"m-ingester",
		"m-ingester-headless",
		"m-ingester-headless.obs",
		"m-ingester-headless.obs.svc",
		"m-ingester-headless.obs.svc.cluster.local",
		"m-ingester.obs",
		"m-ingester.obs.svc",
		"m-ingester.obs.svc.cluster.local",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ServiceDNSNames = %q\nwant %q", got, want)
	}
	if got := ServiceDNSNames("obs", []string{"a", "a"}, nil); !reflect.DeepEqual(got, []string{"a", "a.obs", "a.obs.svc", "a.obs.svc.cluster.local"}) {
		t.Errorf("a Service named twice: %q", got)
	}
}

// A certificate for ServiceDNSNames verifies for a pod's name under a headless Service through the wildcard.
func TestServiceDNSNamesCoverPodNames(t *testing.T) {
	now := time.Now()
	ca, err := NewCA("test CA", now, CALifetime)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := IssueServing(ca, ServiceDNSNames("obs", []string{"m-ingester"}, []string{"m-ingester-headless"}), nil, now, LeafLifetime)
	if err != nil {
		t.Fatal(err)
	}
	cert, _, err := ParseKeyPair(leaf.CertPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"m-ingester-0.m-ingester-headless.obs.svc", "m-ingester-2.m-ingester-headless.obs.svc.cluster.local", "m-ingester.obs"} {
		if err := cert.VerifyHostname(host); err != nil {
			t.Errorf("the certificate does not cover %s: %v", host, err)
		}
	}
	if err := cert.VerifyHostname("m-querier.obs.svc"); err == nil {
		t.Error("the certificate covers a Service it was not issued for")
	}
}
