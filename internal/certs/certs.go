// Package certs is the controller's built-in certificate authority, used when a MetricsCluster has no
// spec.tls.issuerRef, and the builder of the cert-manager Certificate used when it has one.
//
// Everything here is pure: no API server, no clock (callers pass now), no files. Private keys never appear in
// errors or in the fmt output of a KeyPair.
//
// # Lifetimes and renewal
//
// The CA lives CALifetime (5 years), leaves LeafLifetime (90 days). Both are renewed when they have passed
// RenewAtPercent (80%) of their lifetime, which is what NeedsRenewal reports; leaves are also reissued when
// their hostnames change or when they were signed by another CA (NeedsReissue).
//
// Renewing the CA is not invisible: a client trusts the gateway only if it trusts the CA that signed the
// gateway's certificate, so every client needs the new ca.crt. With the defaults the CA is renewed one year
// before it expires. The CA's Secret therefore keeps two things apart:
//
//   - tls.crt / tls.key: the current CA, the one that signs;
//   - ca.crt: what clients trust, Bundle(current.CertPEM, previous.CertPEM) — the new CA and the one it
//     replaced, for as long as the replaced one is valid.
//
// On each CA renewal the controller writes ca.crt = Bundle(new.CertPEM, old.CertPEM), where old.CertPEM is the
// outgoing CA's tls.crt (not the previous bundle), so the bundle never holds more than two certificates and a
// CA drops out one renewal after it was replaced; Trusted drops it earlier, once it has expired. In-cluster
// components mount ca.crt and trust both CAs across the switch. A leaf of the previous CA is not reissued at
// once (NeedsReissue reports "issued by another CA", IssuedByOneOf says it is still trusted): it is replaced
// at its own renewal, by which time every pod has restarted with the bundle, so no pod ever meets a peer
// whose CA it does not trust yet. Clients outside the cluster must be given the new ca.crt: one that copied
// only the old CA stops trusting the gateway once its certificate comes from the new CA. Hand out ca.crt (the
// bundle), never the CA's tls.crt.
package certs

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"time"
)

// Defaults of the built-in CA.
const (
	// CALifetime is how long the built-in CA is valid. It is renewed at RenewAtPercent, one year before it
	// expires, which is the overlap during which clients must pick up the new ca.crt.
	CALifetime = 5 * 365 * 24 * time.Hour
	// LeafLifetime is how long a gateway or component certificate is valid.
	LeafLifetime = 90 * 24 * time.Hour
	// LeafRenewBefore is how long before expiry cert-manager renews a leaf it issues (BuildCertificate).
	LeafRenewBefore = 30 * 24 * time.Hour
	// ClockSkew is how far NotBefore is back-dated, so that a peer whose clock is a little behind accepts a
	// certificate issued a moment ago.
	ClockSkew = 5 * time.Minute
	// RenewAtPercent is the share of its lifetime after which a certificate is renewed.
	RenewAtPercent = 80
)

// PEM block types written by this package.
const (
	pemCertificate = "CERTIFICATE"
	pemPrivateKey  = "PRIVATE KEY" // PKCS #8
)

// maxCommonNameLength is the upper bound of a subject common name (RFC 5280, ub-common-name).
const maxCommonNameLength = 64

// KeyPair is a PEM-encoded certificate and its PEM-encoded (PKCS #8) private key, as stored in a
// kubernetes.io/tls Secret's tls.crt and tls.key.
type KeyPair struct {
	CertPEM []byte
	KeyPEM  []byte
}

// String keeps the private key out of logs and error messages: %v and %s print only whether it is set.
func (k KeyPair) String() string {
	return fmt.Sprintf("certs.KeyPair{CertPEM: %d bytes, KeyPEM: %s}", len(k.CertPEM), redacted(k.KeyPEM))
}

// GoString keeps the private key out of %#v.
func (k KeyPair) GoString() string { return k.String() }

func redacted(b []byte) string {
	if len(b) == 0 {
		return "<empty>"
	}
	return "<redacted>"
}

// ParseKeyPair parses the first certificate of certPEM and the private key of keyPEM (PKCS #8, SEC 1 or
// PKCS #1) and checks that the key belongs to the certificate. Errors never quote the key.
func ParseKeyPair(certPEM, keyPEM []byte) (*x509.Certificate, crypto.Signer, error) {
	cert, err := parseCertificate(certPEM)
	if err != nil {
		return nil, nil, err
	}
	key, err := parsePrivateKey(keyPEM)
	if err != nil {
		return nil, nil, err
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, nil, errors.New("private key does not match the certificate")
	}
	return cert, key, nil
}

// NewCA creates a self-signed ECDSA P-256 certificate authority valid from now-ClockSkew to now+lifetime.
// It signs leaf certificates only (path length 0).
func NewCA(commonName string, now time.Time, lifetime time.Duration) (KeyPair, error) {
	if commonName == "" {
		return KeyPair{}, errors.New("new CA: common name is empty")
	}
	if len(commonName) > maxCommonNameLength {
		return KeyPair{}, fmt.Errorf("new CA: common name %q is longer than %d characters", commonName, maxCommonNameLength)
	}
	if lifetime <= 0 {
		return KeyPair{}, fmt.Errorf("new CA: lifetime %s is not positive", lifetime)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return KeyPair{}, fmt.Errorf("new CA: generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return KeyPair{}, fmt.Errorf("new CA: %w", err)
	}
	skid, err := subjectKeyID(key.Public())
	if err != nil {
		return KeyPair{}, fmt.Errorf("new CA: %w", err)
	}
	template := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-ClockSkew),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		SubjectKeyId:          skid,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, key.Public(), key)
	if err != nil {
		return KeyPair{}, fmt.Errorf("new CA: create certificate: %w", err)
	}
	return encode(der, key)
}

// IssueServing issues a certificate signed by ca for dnsNames and ipAddresses, usable both as a TLS server
// certificate and as a TLS client certificate (so the same function issues the gateway's certificate and the
// components'). The common name is the first DNS name. The certificate is valid from now-ClockSkew to
// now+lifetime, cut at the CA's own NotAfter: a leaf never outlives its issuer.
func IssueServing(ca KeyPair, dnsNames []string, ipAddresses []net.IP, now time.Time, lifetime time.Duration) (KeyPair, error) {
	names, err := normalizeDNSNames(dnsNames)
	if err != nil {
		return KeyPair{}, fmt.Errorf("issue certificate: %w", err)
	}
	ips, err := normalizeIPs(ipAddresses)
	if err != nil {
		return KeyPair{}, fmt.Errorf("issue certificate: %w", err)
	}
	if len(names) == 0 && len(ips) == 0 {
		return KeyPair{}, errors.New("issue certificate: no DNS names or IP addresses")
	}
	if lifetime <= 0 {
		return KeyPair{}, fmt.Errorf("issue certificate: lifetime %s is not positive", lifetime)
	}
	caCert, caKey, err := ParseKeyPair(ca.CertPEM, ca.KeyPEM)
	if err != nil {
		return KeyPair{}, fmt.Errorf("issue certificate: CA: %w", err)
	}
	if !caCert.IsCA || caCert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return KeyPair{}, errors.New("issue certificate: the CA certificate may not sign certificates")
	}
	if now.After(caCert.NotAfter) {
		return KeyPair{}, errors.New("issue certificate: the CA has expired")
	}

	notBefore, notAfter := now.Add(-ClockSkew), now.Add(lifetime)
	if notBefore.Before(caCert.NotBefore) {
		notBefore = caCert.NotBefore
	}
	if notAfter.After(caCert.NotAfter) {
		notAfter = caCert.NotAfter
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return KeyPair{}, fmt.Errorf("issue certificate: generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return KeyPair{}, fmt.Errorf("issue certificate: %w", err)
	}
	skid, err := subjectKeyID(key.Public())
	if err != nil {
		return KeyPair{}, fmt.Errorf("issue certificate: %w", err)
	}
	var subject pkix.Name
	if len(names) > 0 && len(names[0]) <= maxCommonNameLength {
		subject.CommonName = names[0]
	}
	template := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		DNSNames:              names,
		IPAddresses:           ips,
		SubjectKeyId:          skid,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, caCert, key.Public(), caKey)
	if err != nil {
		return KeyPair{}, fmt.Errorf("issue certificate: create certificate: %w", err)
	}
	return encode(der, key)
}

// Bundle concatenates the certificates of the given PEM inputs in order, each once (by DER bytes), into one
// PEM bundle for a Secret's ca.crt. Anything that is not a CERTIFICATE block — a private key passed by mistake,
// text around the blocks — is left out. Meant as ca.crt = Bundle(newCA.CertPEM, oldCA.CertPEM) when the CA is
// renewed (see the package documentation); returns nil when there is no certificate.
func Bundle(pems ...[]byte) []byte {
	var out []byte
	seen := map[string]bool{}
	for _, in := range pems {
		rest := in
		for {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			if block.Type != pemCertificate || seen[string(block.Bytes)] {
				continue
			}
			seen[string(block.Bytes)] = true
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: block.Bytes})...)
		}
	}
	return out
}

func encode(der []byte, key *ecdsa.PrivateKey) (KeyPair, error) {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return KeyPair{}, errors.New("marshal private key failed")
	}
	return KeyPair{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: keyDER}),
	}, nil
}

// newSerial is a random positive 128-bit serial number (RFC 5280 allows up to 20 octets).
func newSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		serial, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("generate serial number: %w", err)
		}
		if serial.Sign() > 0 {
			return serial, nil
		}
	}
}

// subjectKeyID is the leftmost 160 bits of the SHA-256 of the subjectPublicKey bits (RFC 7093, method 1).
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	spkiDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("marshal public key: %w", err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(spkiDER, &spki); err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	sum := sha256.Sum256(spki.PublicKey.Bytes)
	return sum[:20], nil
}

// parseCertificate parses the first CERTIFICATE block of certPEM.
func parseCertificate(certPEM []byte) (*x509.Certificate, error) {
	rest := certPEM
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("certificate: no CERTIFICATE PEM block")
		}
		if block.Type != pemCertificate {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate: %w", err)
		}
		return cert, nil
	}
}

// parsePrivateKey parses the first private key block of keyPEM. Its errors are fixed strings: the parsers'
// own errors may describe the bytes they choked on, and these are secret.
func parsePrivateKey(keyPEM []byte) (crypto.Signer, error) {
	rest := keyPEM
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("private key: no PRIVATE KEY PEM block")
		}
		if !strings.HasSuffix(block.Type, pemPrivateKey) {
			continue // such as the EC PARAMETERS block that openssl ecparam writes first
		}
		var key any
		var err error
		switch block.Type {
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		}
		if err != nil {
			return nil, fmt.Errorf("private key: the %s PEM block is malformed or encrypted", block.Type)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("private key: unsupported key type %T", key)
		}
		return signer, nil
	}
}

// normalizeDNSNames lower-cases the names and drops repeats, keeping the first occurrence's place.
func normalizeDNSNames(dnsNames []string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, name := range dnsNames {
		name = strings.ToLower(strings.TrimSpace(name))
		if name == "" {
			return nil, errors.New("a DNS name is empty")
		}
		if !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	return out, nil
}

func normalizeIPs(ipAddresses []net.IP) ([]net.IP, error) {
	var out []net.IP
	for _, ip := range ipAddresses {
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
			return nil, errors.New("an IP address is malformed")
		}
		if !containsIP(out, ip) {
			out = append(out, ip)
		}
	}
	return out, nil
}

func containsIP(ips []net.IP, ip net.IP) bool {
	for _, other := range ips {
		if bytes.Equal(other.To16(), ip.To16()) {
			return true
		}
	}
	return false
}
