package controlplane

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/opstrace/opstrace/internal/certs"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s: no PEM", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestEnsurePKI(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	p := pkiPaths{t.TempDir()}
	if err := ensurePKI(p.dir, now); err != nil {
		t.Fatal(err)
	}
	ca := readCert(t, p.crt(pkiCA))
	pool := x509.NewCertPool()
	pool.AddCert(ca)

	for _, tc := range []struct {
		name   string
		cn     string
		orgs   []string
		client bool
	}{
		{pkiAdmin, "opstrace-admin", []string{"system:masters"}, true},
		{pkiControllerManager, "system:kube-controller-manager", nil, true},
		{pkiScheduler, "system:kube-scheduler", nil, true},
		{pkiAPIServerKubelet, "kube-apiserver-kubelet-client", []string{"system:masters"}, true},
		{pkiAPIServer, "localhost", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cert := readCert(t, p.crt(tc.name))
			usage := x509.ExtKeyUsageServerAuth
			if tc.client {
				usage = x509.ExtKeyUsageClientAuth
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
				t.Errorf("verify against the cluster CA: %v", err)
			}
			if cert.Subject.CommonName != tc.cn || !slices.Equal(cert.Subject.Organization, tc.orgs) {
				t.Errorf("subject = %s, want CN=%s O=%v", cert.Subject, tc.cn, tc.orgs)
			}
		})
	}

	apiserver := readCert(t, p.crt(pkiAPIServer))
	for _, host := range []string{"127.0.0.1", "localhost", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "10.96.0.1"} {
		if err := apiserver.VerifyHostname(host); err != nil {
			t.Errorf("apiserver certificate: %v", err)
		}
	}
	// etcd trusts only its own CA: a certificate the cluster CA signs (for an approved CSR) cannot reach it.
	etcdClient := readCert(t, p.crt(pkiAPIServerEtcdClient))
	if _, err := etcdClient.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("the etcd client certificate verifies against the cluster CA; want a separate etcd CA")
	}
	if _, err := os.Stat(p.path(pkiServiceAccountPub)); err != nil {
		t.Error(err)
	}

	t.Run("a second run keeps everything", func(t *testing.T) {
		before := snapshot(t, p)
		if err := ensurePKI(p.dir, now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		for name, b := range snapshot(t, p) {
			if !bytes.Equal(b, before[name]) {
				t.Errorf("%s changed", name)
			}
		}
	})

	t.Run("leaves are renewed at 80% of their lifetime, CAs and the service-account key kept", func(t *testing.T) {
		before := snapshot(t, p)
		later := now.Add(certs.LeafLifetime * 81 / 100)
		if err := ensurePKI(p.dir, later); err != nil {
			t.Fatal(err)
		}
		after := snapshot(t, p)
		for _, kept := range []string{p.crt(pkiCA), p.key(pkiCA), p.crt(pkiEtcdCA), p.path(pkiServiceAccountKey), p.path(pkiServiceAccountPub)} {
			if !bytes.Equal(before[kept], after[kept]) {
				t.Errorf("%s changed", kept)
			}
		}
		for _, renewed := range []string{p.crt(pkiAPIServer), p.crt(pkiAdmin), p.crt(pkiEtcdServer)} {
			if bytes.Equal(before[renewed], after[renewed]) {
				t.Errorf("%s was not renewed", renewed)
			}
		}
		if cert := readCert(t, p.crt(pkiAPIServer)); cert.NotAfter.Before(later.Add(certs.LeafLifetime - time.Hour)) {
			t.Errorf("renewed apiserver certificate expires %s", cert.NotAfter)
		}
	})
}

func snapshot(t *testing.T, p pkiPaths) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(p.dir)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for _, e := range entries {
		b, err := os.ReadFile(p.path(e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[p.path(e.Name())] = b
	}
	return files
}

func TestIssueClientRejectsForeignCA(t *testing.T) {
	if _, err := issueClient(certs.KeyPair{}, "x", nil, time.Now(), time.Hour); err == nil {
		t.Error("issueClient with no CA succeeded")
	}
}
