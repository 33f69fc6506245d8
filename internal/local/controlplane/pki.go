package controlplane

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // subject key identifier, RFC 5280 method 1; not a security use
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/opstrace/opstrace/internal/certs"
)

// Certificate subjects. The groups and users are the ones Kubernetes' default RBAC binds.
const (
	adminUser             = "opstrace-admin"
	mastersGroup          = "system:masters"
	controllerManagerUser = "system:kube-controller-manager"
	schedulerUser         = "system:kube-scheduler"
	apiserverKubeletUser  = "kube-apiserver-kubelet-client"
	apiserverEtcdUser     = "kube-apiserver-etcd-client"
	frontProxyUser        = "front-proxy-client"
)

// serviceIP is the first address of ServiceCIDR, which the apiserver gives the default/kubernetes Service.
var serviceIP = net.IPv4(10, 96, 0, 1)

// apiserverDNSNames are the names a client may use for the apiserver.
var apiserverDNSNames = []string{
	"localhost",
	"kubernetes",
	"kubernetes.default",
	"kubernetes.default.svc",
	"kubernetes.default.svc.cluster.local",
}

var loopbackIPs = []net.IP{net.IPv4(127, 0, 0, 1)}

// pkiPaths are the files under StateDir/pki.
type pkiPaths struct{ dir string }

func (p pkiPaths) path(name string) string { return filepath.Join(p.dir, name) }
func (p pkiPaths) crt(name string) string  { return p.path(name + ".crt") }
func (p pkiPaths) key(name string) string  { return p.path(name + ".key") }

// Names of the key pairs (name.crt, name.key) under pki/.
const (
	pkiCA                    = "ca"      // cluster CA: client-ca-file, root-ca-file, cluster-signing
	pkiEtcdCA                = "etcd-ca" // etcd's own CA, so that certificates the cluster CA signs for CSRs cannot reach etcd
	pkiEtcdServer            = "etcd-server"
	pkiAPIServer             = "apiserver"
	pkiAPIServerEtcdClient   = "apiserver-etcd-client"
	pkiAPIServerKubelet      = "apiserver-kubelet-client"
	pkiFrontProxyCA          = "front-proxy-ca" // trusted only for the request headers of aggregated APIs
	pkiFrontProxyClient      = "front-proxy-client"
	pkiAdmin                 = "admin"
	pkiControllerManager     = "controller-manager"
	pkiControllerManagerServ = "controller-manager-serving"
	pkiScheduler             = "scheduler"
	pkiSchedulerServing      = "scheduler-serving"
	pkiServiceAccountKey     = "sa.key"
	pkiServiceAccountPub     = "sa.pub"
)

// leafSpec is one certificate to keep current: a serving certificate (dnsNames/ips) or a client certificate
// (client, cn, orgs).
type leafSpec struct {
	name     string
	caName   string
	client   bool
	cn       string
	orgs     []string
	dnsNames []string
	ips      []net.IP
}

func leafSpecs() []leafSpec {
	return []leafSpec{
		{name: pkiEtcdServer, caName: pkiEtcdCA, dnsNames: []string{"localhost"}, ips: loopbackIPs},
		{name: pkiAPIServerEtcdClient, caName: pkiEtcdCA, client: true, cn: apiserverEtcdUser},
		{name: pkiAPIServer, caName: pkiCA, dnsNames: apiserverDNSNames, ips: []net.IP{loopbackIPs[0], serviceIP}},
		{name: pkiAPIServerKubelet, caName: pkiCA, client: true, cn: apiserverKubeletUser, orgs: []string{mastersGroup}},
		{name: pkiFrontProxyClient, caName: pkiFrontProxyCA, client: true, cn: frontProxyUser},
		{name: pkiAdmin, caName: pkiCA, client: true, cn: adminUser, orgs: []string{mastersGroup}},
		{name: pkiControllerManager, caName: pkiCA, client: true, cn: controllerManagerUser},
		{name: pkiControllerManagerServ, caName: pkiCA, dnsNames: []string{"localhost"}, ips: loopbackIPs},
		{name: pkiScheduler, caName: pkiCA, client: true, cn: schedulerUser},
		{name: pkiSchedulerServing, caName: pkiCA, dnsNames: []string{"localhost"}, ips: loopbackIPs},
	}
}

// ensurePKI creates what is missing under dir and reissues leaves that are expiring (80% of their lifetime),
// were issued by another CA or no longer have the right names or subject. CAs and the service-account key
// are created once and kept: a new CA would invalidate every kubeconfig handed out, a new service-account key
// every token.
func ensurePKI(dir string, now time.Time) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	p := pkiPaths{dir}
	cas := map[string]certs.KeyPair{}
	for name, cn := range map[string]string{
		pkiCA:           "opstrace-local-ca",
		pkiEtcdCA:       "opstrace-local-etcd-ca",
		pkiFrontProxyCA: "opstrace-local-front-proxy-ca",
	} {
		ca, err := ensureCA(p, name, cn, now)
		if err != nil {
			return err
		}
		cas[name] = ca
	}
	for _, spec := range leafSpecs() {
		if err := ensureLeaf(p, spec, cas[spec.caName], now); err != nil {
			return err
		}
	}
	return ensureServiceAccountKey(p)
}

func ensureCA(p pkiPaths, name, cn string, now time.Time) (certs.KeyPair, error) {
	pair, err := readPair(p, name)
	if err == nil {
		cert, _, perr := certs.ParseKeyPair(pair.CertPEM, pair.KeyPEM)
		if perr != nil {
			return certs.KeyPair{}, fmt.Errorf("CA %s: %w; run `opstrace destroy local` to start over", p.crt(name), perr)
		}
		if now.After(cert.NotAfter) {
			return certs.KeyPair{}, fmt.Errorf("CA %s expired on %s; run `opstrace destroy local` to start over",
				p.crt(name), cert.NotAfter.Format(time.DateOnly))
		}
		return pair, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return certs.KeyPair{}, err
	}
	pair, err = certs.NewCA(cn, now, certs.CALifetime)
	if err != nil {
		return certs.KeyPair{}, err
	}
	return pair, writePair(p, name, pair)
}

func ensureLeaf(p pkiPaths, spec leafSpec, ca certs.KeyPair, now time.Time) error {
	if pair, err := readPair(p, spec.name); err == nil && leafCurrent(pair, spec, ca, now) {
		return nil
	}
	var pair certs.KeyPair
	var err error
	if spec.client {
		pair, err = issueClient(ca, spec.cn, spec.orgs, now, certs.LeafLifetime)
	} else {
		pair, err = certs.IssueServing(ca, spec.dnsNames, spec.ips, now, certs.LeafLifetime)
	}
	if err != nil {
		return fmt.Errorf("issue %s certificate: %w", spec.name, err)
	}
	return writePair(p, spec.name, pair)
}

// leafCurrent reports whether pair can be kept: its key matches, the CA signed it, it is not due for renewal
// and it has the names (serving) or subject (client) of spec.
func leafCurrent(pair certs.KeyPair, spec leafSpec, ca certs.KeyPair, now time.Time) bool {
	cert, _, err := certs.ParseKeyPair(pair.CertPEM, pair.KeyPEM)
	if err != nil {
		return false
	}
	if reissue, _ := certs.NeedsReissue(pair.CertPEM, ca, spec.dnsNames, spec.ips, now); reissue {
		return false
	}
	if spec.client {
		return cert.Subject.CommonName == spec.cn && slices.Equal(cert.Subject.Organization, spec.orgs)
	}
	return true
}

// issueClient issues a TLS client certificate for user cn in groups orgs, the way the apiserver's
// client-ca-file authenticator reads them.
func issueClient(ca certs.KeyPair, cn string, orgs []string, now time.Time, lifetime time.Duration) (certs.KeyPair, error) {
	caCert, caKey, err := certs.ParseKeyPair(ca.CertPEM, ca.KeyPEM)
	if err != nil {
		return certs.KeyPair{}, fmt.Errorf("CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return certs.KeyPair{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return certs.KeyPair{}, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return certs.KeyPair{}, err
	}
	skid := sha1.Sum(pubDER) //nolint:gosec // see import
	notBefore, notAfter := now.Add(-certs.ClockSkew), now.Add(lifetime)
	if notAfter.After(caCert.NotAfter) {
		notAfter = caCert.NotAfter
	}
	template := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		SubjectKeyId:          skid[:],
	}
	der, err := x509.CreateCertificate(rand.Reader, template, caCert, key.Public(), caKey)
	if err != nil {
		return certs.KeyPair{}, fmt.Errorf("create certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return certs.KeyPair{}, err
	}
	return certs.KeyPair{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// ensureServiceAccountKey keeps the RSA key that signs service-account tokens (sa.key) and writes its public
// half (sa.pub), which verifies them.
func ensureServiceAccountKey(p pkiPaths) error {
	keyPath, pubPath := p.path(pkiServiceAccountKey), p.path(pkiServiceAccountPub)
	var key *rsa.PrivateKey
	if b, err := os.ReadFile(keyPath); err == nil {
		block, _ := pem.Decode(b)
		if block == nil {
			return fmt.Errorf("%s holds no PEM block; run `opstrace destroy local` to start over", keyPath)
		}
		parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return fmt.Errorf("%s: %w", keyPath, err)
		}
		rsaKey, ok := parsed.(*rsa.PrivateKey)
		if !ok {
			return fmt.Errorf("%s is not an RSA key", keyPath)
		}
		key = rsaKey
	} else if errors.Is(err, os.ErrNotExist) {
		if key, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			return err
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return err
		}
	} else {
		return err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	pub := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	if old, err := os.ReadFile(pubPath); err == nil && bytes.Equal(old, pub) {
		return nil
	}
	return writeFileAtomic(pubPath, pub, 0o644)
}

func readPair(p pkiPaths, name string) (certs.KeyPair, error) {
	crt, err := os.ReadFile(p.crt(name))
	if err != nil {
		return certs.KeyPair{}, err
	}
	key, err := os.ReadFile(p.key(name))
	if err != nil {
		return certs.KeyPair{}, err
	}
	return certs.KeyPair{CertPEM: crt, KeyPEM: key}, nil
}

func writePair(p pkiPaths, name string, pair certs.KeyPair) error {
	if err := writeFileAtomic(p.key(name), pair.KeyPEM, 0o600); err != nil {
		return err
	}
	return writeFileAtomic(p.crt(name), pair.CertPEM, 0o644)
}

func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	if err := os.Chmod(tmp, perm); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
