package certs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// now is the injected clock of every test: far from the real time, so nothing passes by accident.
var now = time.Date(2031, time.March, 4, 5, 6, 7, 0, time.UTC)

func mustCA(t *testing.T, name string, at time.Time) KeyPair {
	t.Helper()
	ca, err := NewCA(name, at, CALifetime)
	if err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	return ca
}

func mustLeaf(t *testing.T, ca KeyPair, names []string, ips []net.IP, at time.Time, lifetime time.Duration) KeyPair {
	t.Helper()
	leaf, err := IssueServing(ca, names, ips, at, lifetime)
	if err != nil {
		t.Fatalf("IssueServing: %v", err)
	}
	return leaf
}

func mustParse(t *testing.T, kp KeyPair) *x509.Certificate {
	t.Helper()
	cert, _, err := ParseKeyPair(kp.CertPEM, kp.KeyPEM)
	if err != nil {
		t.Fatalf("ParseKeyPair: %v", err)
	}
	return cert
}

func pool(t *testing.T, pems ...[]byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	for _, b := range pems {
		if !p.AppendCertsFromPEM(b) {
			t.Fatalf("no certificate in %q", b)
		}
	}
	return p
}

func TestNewCA(t *testing.T) {
	ca := mustCA(t, "opstrace metrics CA", now)
	cert, key, err := ParseKeyPair(ca.CertPEM, ca.KeyPEM)
	if err != nil {
		t.Fatalf("ParseKeyPair: %v", err)
	}
	ecKey, ok := key.(*ecdsa.PrivateKey)
	if !ok || ecKey.Curve != elliptic.P256() {
		t.Errorf("key is %T, want ECDSA P-256", key)
	}
	if block, _ := pem.Decode(ca.KeyPEM); block == nil || block.Type != "PRIVATE KEY" {
		t.Errorf("key PEM is not PKCS #8")
	}
	checks := []struct {
		name string
		ok   bool
	}{
		{"IsCA", cert.IsCA && cert.BasicConstraintsValid},
		{"path length 0", cert.MaxPathLen == 0 && cert.MaxPathLenZero},
		{"KeyUsage CertSign|CRLSign", cert.KeyUsage == x509.KeyUsageCertSign|x509.KeyUsageCRLSign},
		{"CommonName", cert.Subject.CommonName == "opstrace metrics CA"},
		{"NotBefore = now - 5m", cert.NotBefore.Equal(now.Add(-5 * time.Minute))},
		{"NotAfter = now + 5y", cert.NotAfter.Equal(now.Add(5 * 365 * 24 * time.Hour))},
		{"serial positive, at most 128 bits", cert.SerialNumber.Sign() > 0 && cert.SerialNumber.BitLen() <= 128},
		{"subject key id", len(cert.SubjectKeyId) == 20},
		{"signature ECDSA-SHA256", cert.SignatureAlgorithm == x509.ECDSAWithSHA256},
		{"self-signed", cert.CheckSignatureFrom(cert) == nil},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("CA certificate: %s does not hold", c.name)
		}
	}

	other := mustCA(t, "opstrace metrics CA", now)
	if bytes.Equal(other.KeyPEM, ca.KeyPEM) || mustParse(t, other).SerialNumber.Cmp(cert.SerialNumber) == 0 {
		t.Errorf("two CAs share a key or a serial number")
	}
}

func TestNewCAErrors(t *testing.T) {
	for _, tc := range []struct {
		name, cn string
		lifetime time.Duration
		want     string
	}{
		{"empty common name", "", CALifetime, "common name is empty"},
		{"long common name", strings.Repeat("a", 65), CALifetime, "longer than 64"},
		{"zero lifetime", "ca", 0, "not positive"},
		{"negative lifetime", "ca", -time.Hour, "not positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewCA(tc.cn, now, tc.lifetime); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewCA error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestIssueServingVerifies(t *testing.T) {
	ca := mustCA(t, "test CA", now)
	names := GatewayDNSNames("metrics", "opstrace", "Metrics.Example.com")
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
	leaf := mustLeaf(t, ca, names, ips, now, LeafLifetime)
	cert := mustParse(t, leaf)

	if cert.Subject.CommonName != names[0] {
		t.Errorf("CommonName = %q, want the first DNS name %q", cert.Subject.CommonName, names[0])
	}
	if cert.IsCA {
		t.Errorf("leaf is a CA")
	}
	if cert.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("KeyUsage = %v, want DigitalSignature", cert.KeyUsage)
	}
	if fmt.Sprint(cert.ExtKeyUsage) != fmt.Sprint([]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("ExtKeyUsage = %v, want ServerAuth, ClientAuth", cert.ExtKeyUsage)
	}
	if !cert.NotBefore.Equal(now.Add(-ClockSkew)) || !cert.NotAfter.Equal(now.Add(LeafLifetime)) {
		t.Errorf("validity = %s..%s, want %s..%s", cert.NotBefore, cert.NotAfter, now.Add(-ClockSkew), now.Add(LeafLifetime))
	}
	if !bytes.Equal(cert.AuthorityKeyId, mustParse(t, ca).SubjectKeyId) {
		t.Errorf("AuthorityKeyId is not the CA's SubjectKeyId")
	}

	roots := pool(t, ca.CertPEM)
	verify := func(name string, at time.Time, usage x509.ExtKeyUsage) error {
		_, err := cert.Verify(x509.VerifyOptions{
			DNSName: name, Roots: roots, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{usage},
		})
		return err
	}
	for _, tc := range []struct {
		name   string
		host   string
		at     time.Time
		usage  x509.ExtKeyUsage
		wantOK bool
	}{
		{"service short name", "metrics-gateway", now, x509.ExtKeyUsageServerAuth, true},
		{"service namespace", "metrics-gateway.opstrace", now, x509.ExtKeyUsageServerAuth, true},
		{"service svc", "metrics-gateway.opstrace.svc", now, x509.ExtKeyUsageServerAuth, true},
		{"service fqdn", "metrics-gateway.opstrace.svc.cluster.local", now, x509.ExtKeyUsageServerAuth, true},
		{"public hostname, any case", "METRICS.example.COM", now, x509.ExtKeyUsageServerAuth, true},
		{"IPv4", "127.0.0.1", now, x509.ExtKeyUsageServerAuth, true},
		{"IPv6", "::1", now, x509.ExtKeyUsageServerAuth, true},
		{"client auth", "", now, x509.ExtKeyUsageClientAuth, true},
		{"a moment before now, within the clock skew", "metrics-gateway", now.Add(-4 * time.Minute), x509.ExtKeyUsageServerAuth, true},
		{"name outside the SANs", "other-gateway.opstrace.svc", now, x509.ExtKeyUsageServerAuth, false},
		{"IP outside the SANs", "10.0.0.1", now, x509.ExtKeyUsageServerAuth, false},
		{"after expiry", "metrics-gateway", now.Add(LeafLifetime + time.Second), x509.ExtKeyUsageServerAuth, false},
		{"code signing", "", now, x509.ExtKeyUsageCodeSigning, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := verify(tc.host, tc.at, tc.usage)
			if (err == nil) != tc.wantOK {
				t.Errorf("Verify(%q) error = %v, want ok = %v", tc.host, err, tc.wantOK)
			}
		})
	}

	t.Run("another CA", func(t *testing.T) {
		_, err := cert.Verify(x509.VerifyOptions{DNSName: "metrics-gateway", Roots: pool(t, mustCA(t, "other", now).CertPEM), CurrentTime: now})
		if err == nil {
			t.Errorf("leaf verifies against a CA that did not sign it")
		}
	})
}

func TestIssueServingShape(t *testing.T) {
	ca := mustCA(t, "test CA", now)
	caCert := mustParse(t, ca)

	t.Run("names lower-cased and deduplicated, CN the first", func(t *testing.T) {
		cert := mustParse(t, mustLeaf(t, ca, []string{"B.example", "a.example", "b.example"}, nil, now, LeafLifetime))
		if got := strings.Join(cert.DNSNames, ","); got != "b.example,a.example" {
			t.Errorf("DNSNames = %s", got)
		}
		if cert.Subject.CommonName != "b.example" {
			t.Errorf("CommonName = %q", cert.Subject.CommonName)
		}
	})
	t.Run("IP only: no common name", func(t *testing.T) {
		cert := mustParse(t, mustLeaf(t, ca, nil, []net.IP{net.ParseIP("10.1.2.3")}, now, LeafLifetime))
		if cert.Subject.CommonName != "" || len(cert.IPAddresses) != 1 {
			t.Errorf("CommonName = %q, IPs = %v", cert.Subject.CommonName, cert.IPAddresses)
		}
	})
	t.Run("first name longer than a common name may be", func(t *testing.T) {
		long := strings.Repeat("a", 60) + ".example.com"
		cert := mustParse(t, mustLeaf(t, ca, []string{long}, nil, now, LeafLifetime))
		if cert.Subject.CommonName != "" || cert.DNSNames[0] != long {
			t.Errorf("CommonName = %q, DNSNames = %v", cert.Subject.CommonName, cert.DNSNames)
		}
	})
	t.Run("never outlives the CA", func(t *testing.T) {
		late := caCert.NotAfter.Add(-24 * time.Hour)
		cert := mustParse(t, mustLeaf(t, ca, []string{"a"}, nil, late, LeafLifetime))
		if !cert.NotAfter.Equal(caCert.NotAfter) {
			t.Errorf("NotAfter = %s, want the CA's %s", cert.NotAfter, caCert.NotAfter)
		}
	})
	t.Run("never starts before the CA", func(t *testing.T) {
		cert := mustParse(t, mustLeaf(t, ca, []string{"a"}, nil, now.Add(-time.Hour), LeafLifetime))
		if cert.NotBefore.Before(caCert.NotBefore) {
			t.Errorf("NotBefore = %s, before the CA's %s", cert.NotBefore, caCert.NotBefore)
		}
	})
}

func TestIssueServingErrors(t *testing.T) {
	ca := mustCA(t, "test CA", now)
	leaf := mustLeaf(t, ca, []string{"a"}, nil, now, LeafLifetime)
	for _, tc := range []struct {
		name     string
		ca       KeyPair
		names    []string
		ips      []net.IP
		at       time.Time
		lifetime time.Duration
		want     string
	}{
		{"no names", ca, nil, nil, now, LeafLifetime, "no DNS names or IP addresses"},
		{"empty name", ca, []string{"a", ""}, nil, now, LeafLifetime, "a DNS name is empty"},
		{"malformed IP", ca, []string{"a"}, []net.IP{{1, 2, 3}}, now, LeafLifetime, "IP address is malformed"},
		{"zero lifetime", ca, []string{"a"}, nil, now, 0, "not positive"},
		{"no CA", KeyPair{}, []string{"a"}, nil, now, LeafLifetime, "no CERTIFICATE PEM block"},
		{"CA key of another CA", KeyPair{CertPEM: ca.CertPEM, KeyPEM: mustCA(t, "x", now).KeyPEM}, []string{"a"}, nil, now, LeafLifetime, "does not match"},
		{"leaf as CA", leaf, []string{"a"}, nil, now, LeafLifetime, "may not sign certificates"},
		{"expired CA", ca, []string{"a"}, nil, now.Add(CALifetime + time.Second), LeafLifetime, "the CA has expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := IssueServing(tc.ca, tc.names, tc.ips, tc.at, tc.lifetime)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("IssueServing error = %v, want one containing %q", err, tc.want)
			}
			assertNoKeyMaterial(t, err, tc.ca.KeyPEM)
		})
	}
}

// handshake runs one TLS handshake on 127.0.0.1 between a server presenting serverKP and a client trusting
// only roots, verifying serverName at now. A non-nil clientKP is presented to a server that requires and
// verifies client certificates against roots.
func handshake(t *testing.T, serverKP KeyPair, clientKP *KeyPair, roots *x509.CertPool, serverName string) (clientErr, serverErr error) {
	t.Helper()
	serverCert, err := tls.X509KeyPair(serverKP.CertPEM, serverKP.KeyPEM)
	if err != nil {
		t.Fatalf("tls.X509KeyPair: %v", err)
	}
	clock := func() time.Time { return now }
	serverConfig := &tls.Config{Certificates: []tls.Certificate{serverCert}, Time: clock, MinVersion: tls.VersionTLS12}
	if clientKP != nil {
		serverConfig.ClientAuth = tls.RequireAndVerifyClientCert
		serverConfig.ClientCAs = roots
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", serverConfig)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()

	serverDone := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			serverDone <- err
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		serverDone <- conn.(*tls.Conn).Handshake()
	}()

	clientConfig := &tls.Config{RootCAs: roots, ServerName: serverName, Time: clock, MinVersion: tls.VersionTLS12}
	if clientKP != nil {
		c, err := tls.X509KeyPair(clientKP.CertPEM, clientKP.KeyPEM)
		if err != nil {
			t.Fatalf("tls.X509KeyPair: %v", err)
		}
		clientConfig.Certificates = []tls.Certificate{c}
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	conn, clientErr := tls.DialWithDialer(dialer, "tcp", ln.Addr().String(), clientConfig)
	if clientErr == nil {
		// In TLS 1.3 the server verifies the client's certificate after the client's handshake returns:
		// one read surfaces the server's verdict.
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Write([]byte("x")); err != nil {
			clientErr = err
		}
		serverErr = <-serverDone
		conn.Close()
		return clientErr, serverErr
	}
	return clientErr, <-serverDone
}

func TestTLSHandshake(t *testing.T) {
	ca := mustCA(t, "test CA", now)
	gateway := mustLeaf(t, ca, GatewayDNSNames("metrics", "opstrace", "metrics.example.com"), []net.IP{net.ParseIP("127.0.0.1")}, now, LeafLifetime)
	component := mustLeaf(t, ca, []string{"metrics-distributor.opstrace.svc"}, nil, now, LeafLifetime)
	stranger := mustLeaf(t, mustCA(t, "other CA", now), []string{"metrics-distributor.opstrace.svc"}, nil, now, LeafLifetime)
	roots := pool(t, ca.CertPEM)

	for _, tc := range []struct {
		name       string
		serverName string
		client     *KeyPair
		roots      *x509.CertPool
		wantOK     bool
	}{
		{"service fqdn", "metrics-gateway.opstrace.svc.cluster.local", nil, roots, true},
		{"service short name", "metrics-gateway", nil, roots, true},
		{"public hostname", "metrics.example.com", nil, roots, true},
		{"IP address", "127.0.0.1", nil, roots, true},
		{"mutual TLS with a component certificate", "metrics-gateway.opstrace.svc", &component, roots, true},
		{"name outside the SANs", "metrics-querier.opstrace.svc", nil, roots, false},
		{"client trusting another CA", "metrics-gateway", nil, pool(t, mustCA(t, "other CA", now).CertPEM), false},
		{"client certificate from another CA", "metrics-gateway", &stranger, roots, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clientErr, serverErr := handshake(t, gateway, tc.client, tc.roots, tc.serverName)
			ok := clientErr == nil && serverErr == nil
			if ok != tc.wantOK {
				t.Errorf("handshake: client error %v, server error %v; want ok = %v", clientErr, serverErr, tc.wantOK)
			}
		})
	}
}

func TestParseKeyPair(t *testing.T) {
	ca := mustCA(t, "test CA", now)
	leaf := mustLeaf(t, ca, []string{"a"}, nil, now, LeafLifetime)

	keyDER := func(kp KeyPair) []byte { b, _ := pem.Decode(kp.KeyPEM); return b.Bytes }
	ecKey, err := x509.ParsePKCS8PrivateKey(keyDER(leaf))
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(ecKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	sec1PEM := append(pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 8, 42, 134, 72, 206, 61, 3, 1, 7}}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})...)
	// A key block whose bytes are the real key with its tail cut off: the parser's own error would describe it.
	truncated := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER(leaf)[:len(keyDER(leaf))-7]})
	random := make([]byte, 64)
	_, _ = rand.Read(random)
	garbageKey := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: random})

	for _, tc := range []struct {
		name    string
		certPEM []byte
		keyPEM  []byte
		want    string // empty: parses
	}{
		{"PKCS #8", leaf.CertPEM, leaf.KeyPEM, ""},
		{"SEC 1 after EC PARAMETERS", leaf.CertPEM, sec1PEM, ""},
		{"chain: first certificate", append(append([]byte{}, leaf.CertPEM...), ca.CertPEM...), leaf.KeyPEM, ""},
		{"key of another certificate", leaf.CertPEM, ca.KeyPEM, "private key does not match the certificate"},
		{"no key", leaf.CertPEM, nil, "no PRIVATE KEY PEM block"},
		{"key where the certificate goes", leaf.KeyPEM, leaf.KeyPEM, "no CERTIFICATE PEM block"},
		{"truncated key", leaf.CertPEM, truncated, "PRIVATE KEY PEM block is malformed"},
		{"random key bytes", leaf.CertPEM, garbageKey, "PRIVATE KEY PEM block is malformed"},
		{"garbage certificate", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), leaf.KeyPEM, "certificate:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cert, key, err := ParseKeyPair(tc.certPEM, tc.keyPEM)
			if tc.want == "" {
				if err != nil || cert == nil || key == nil {
					t.Fatalf("ParseKeyPair: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseKeyPair error = %v, want one containing %q", err, tc.want)
			}
			assertNoKeyMaterial(t, err, tc.keyPEM, leaf.KeyPEM, ca.KeyPEM)
		})
	}
}

func TestKeyPairFormattingHidesKey(t *testing.T) {
	kp := mustCA(t, "test CA", now)
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		out := fmt.Sprintf(verb, kp)
		assertNoKeyMaterial(t, errors.New(out), kp.KeyPEM)
		if !strings.Contains(out, "<redacted>") {
			t.Errorf("%s of a KeyPair = %q, want the key redacted", verb, out)
		}
	}
	if out := fmt.Sprint(KeyPair{}); !strings.Contains(out, "<empty>") {
		t.Errorf("empty KeyPair prints %q", out)
	}
}

// assertNoKeyMaterial fails when err quotes any part of the given PEM private keys: a line of their base64, or
// a run of their DER bytes in hex or raw.
func assertNoKeyMaterial(t *testing.T, err error, keyPEMs ...[]byte) {
	t.Helper()
	if err == nil {
		return
	}
	msg := err.Error()
	for _, keyPEM := range keyPEMs {
		if len(keyPEM) == 0 {
			continue
		}
		for _, line := range strings.Split(string(keyPEM), "\n") {
			if len(line) >= 16 && !strings.HasPrefix(line, "-----") && strings.Contains(msg, line[:16]) {
				t.Errorf("error %q quotes the private key", msg)
			}
		}
		block, _ := pem.Decode(keyPEM)
		if block == nil {
			continue
		}
		for i := 0; i+8 <= len(block.Bytes); i += 8 {
			chunk := block.Bytes[i : i+8]
			if strings.Contains(msg, fmt.Sprintf("%x", chunk)) || strings.Contains(msg, string(chunk)) ||
				strings.Contains(msg, base64.StdEncoding.EncodeToString(chunk)[:8]) {
				t.Errorf("error %q quotes the private key's bytes", msg)
				return
			}
		}
	}
}

func TestBundle(t *testing.T) {
	a := mustCA(t, "CA a", now).CertPEM
	b := mustCA(t, "CA b", now).CertPEM
	withKey := mustCA(t, "CA c", now)
	ab := append(append([]byte{}, a...), b...)

	for _, tc := range []struct {
		name string
		in   [][]byte
		want []byte
	}{
		{"nothing", nil, nil},
		{"one", [][]byte{a}, a},
		{"two in order", [][]byte{b, a}, append(append([]byte{}, b...), a...)},
		{"repeated input", [][]byte{a, b, a, b}, ab},
		{"new CA plus an old bundle holding it", [][]byte{a, ab}, ab},
		{"text around the blocks", [][]byte{append([]byte("# trust these\n"), a...), []byte("not pem"), b}, ab},
		{"private keys are left out", [][]byte{a, withKey.KeyPEM, b}, ab},
		{"key and certificate in one input", [][]byte{append(append([]byte{}, withKey.KeyPEM...), a...)}, a},
		{"no certificate at all", [][]byte{withKey.KeyPEM, []byte("garbage")}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Bundle(tc.in...)
			if !bytes.Equal(got, tc.want) {
				t.Errorf("Bundle =\n%s\nwant\n%s", got, tc.want)
			}
			if bytes.Contains(got, []byte("PRIVATE KEY")) {
				t.Errorf("bundle holds a private key")
			}
		})
	}

	t.Run("a leaf from either CA verifies against the bundle", func(t *testing.T) {
		oldCA := mustCA(t, "old", now)
		newCA := mustCA(t, "new", now.Add(4*365*24*time.Hour))
		at := now.Add(4*365*24*time.Hour + time.Hour)
		roots := pool(t, Bundle(newCA.CertPEM, oldCA.CertPEM))
		for _, ca := range []KeyPair{oldCA, newCA} {
			cert := mustParse(t, mustLeaf(t, ca, []string{"gw"}, nil, at, LeafLifetime))
			if _, err := cert.Verify(x509.VerifyOptions{DNSName: "gw", Roots: roots, CurrentTime: at}); err != nil {
				t.Errorf("leaf of %s: %v", cert.Issuer.CommonName, err)
			}
		}
	})
}
