package certs

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"net"
	"sort"
	"strings"
	"time"
)

// Reasons returned by NeedsRenewal and NeedsReissue. They are stable (no timestamps, serials or random names)
// because they go into Kubernetes conditions and events; only ReasonHostnamesChanged is followed by the names
// that were added and removed, which depend on the spec alone.
const (
	ReasonMissing          = "certificate missing or unreadable"
	ReasonExpired          = "certificate expired"
	ReasonNotYetValid      = "certificate not yet valid"
	ReasonLifetime         = "certificate passed 80% of its lifetime"
	ReasonCAUnreadable     = "issuing CA missing or unreadable"
	ReasonOtherCA          = "issued by another CA"
	ReasonHostnamesChanged = "hostnames changed"
)

// RenewAt is when cert has passed RenewAtPercent of its lifetime (NotBefore to NotAfter): the time for a
// controller to come back (RequeueAfter = RenewAt(cert).Sub(now)).
func RenewAt(cert *x509.Certificate) time.Time {
	return renewAt(cert.NotBefore, cert.NotAfter)
}

func renewAt(notBefore, notAfter time.Time) time.Time {
	lifetime := notAfter.Sub(notBefore)
	// Split to stay exact without overflowing for lifetimes up to the largest time.Duration.
	share := lifetime/100*RenewAtPercent + lifetime%100*RenewAtPercent/100
	return notBefore.Add(share)
}

// NeedsRenewal reports whether the certificate in certPEM (its first CERTIFICATE block) must be replaced at
// now, and why: it is missing or unreadable, expired, not yet valid, or has passed RenewAtPercent of its
// lifetime. The reason is empty when it need not.
func NeedsRenewal(certPEM []byte, now time.Time) (bool, string) {
	cert, err := parseCertificate(certPEM)
	if err != nil {
		return true, ReasonMissing
	}
	switch {
	case now.After(cert.NotAfter):
		return true, ReasonExpired
	case now.Before(cert.NotBefore):
		return true, ReasonNotYetValid
	case !now.Before(renewAt(cert.NotBefore, cert.NotAfter)):
		return true, ReasonLifetime
	}
	return false, ""
}

// NeedsReissue reports whether the leaf certificate in certPEM must be issued again at now, and why: every
// reason of NeedsRenewal, and also when it was not signed by ca ("issued by another CA") or its DNS names and
// IP addresses are not exactly dnsNames and ipAddresses ("hostnames changed: added …; removed …"). Names
// compare case-insensitively and in any order. It does not look at the leaf's private key: check that with
// ParseKeyPair.
func NeedsReissue(certPEM []byte, ca KeyPair, dnsNames []string, ipAddresses []net.IP, now time.Time) (bool, string) {
	if renew, reason := NeedsRenewal(certPEM, now); renew {
		return true, reason
	}
	leaf, err := parseCertificate(certPEM)
	if err != nil {
		return true, ReasonMissing
	}
	caCert, err := parseCertificate(ca.CertPEM)
	if err != nil {
		return true, ReasonCAUnreadable
	}
	if !bytes.Equal(leaf.RawIssuer, caCert.RawSubject) || leaf.CheckSignatureFrom(caCert) != nil {
		return true, ReasonOtherCA
	}
	if added, removed := diffNames(sanSet(dnsNames, ipAddresses), sanSet(leaf.DNSNames, leaf.IPAddresses)); len(added)+len(removed) > 0 {
		var parts []string
		if len(added) > 0 {
			parts = append(parts, "added "+strings.Join(added, ", "))
		}
		if len(removed) > 0 {
			parts = append(parts, "removed "+strings.Join(removed, ", "))
		}
		return true, ReasonHostnamesChanged + ": " + strings.Join(parts, "; ")
	}
	return false, ""
}

// sanSet is the set of lower-cased DNS names and canonical IP strings.
func sanSet(dnsNames []string, ipAddresses []net.IP) map[string]bool {
	set := map[string]bool{}
	for _, name := range dnsNames {
		set[strings.ToLower(strings.TrimSpace(name))] = true
	}
	for _, ip := range ipAddresses {
		set[ip.String()] = true
	}
	return set
}

// diffNames is what want has that have lacks (added) and the other way round (removed), each sorted.
func diffNames(want, have map[string]bool) (added, removed []string) {
	for name := range want {
		if !have[name] {
			added = append(added, name)
		}
	}
	for name := range have {
		if !want[name] {
			removed = append(removed, name)
		}
	}
	sort.Strings(added)
	sort.Strings(removed)
	return added, removed
}

// Trusted is what a client should trust at now out of a ca.crt bundle: its certificates that are valid at now,
// in order, as a bundle. See the package documentation for how the bundle carries a renewed CA.
func Trusted(bundlePEM []byte, now time.Time) []byte {
	var valid [][]byte
	for _, cert := range parseCertificates(bundlePEM) {
		if !now.Before(cert.NotBefore) && !now.After(cert.NotAfter) {
			valid = append(valid, pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: cert.Raw}))
		}
	}
	return Bundle(valid...)
}

// IssuedByOneOf reports whether the leaf certificate in certPEM was signed by one of the certificates of
// bundlePEM: a leaf of the previous CA stays usable, without being reissued, for as long as its clients
// trust that CA too.
func IssuedByOneOf(certPEM, bundlePEM []byte) bool {
	leaf, err := parseCertificate(certPEM)
	if err != nil {
		return false
	}
	for _, ca := range parseCertificates(bundlePEM) {
		if bytes.Equal(leaf.RawIssuer, ca.RawSubject) && leaf.CheckSignatureFrom(ca) == nil {
			return true
		}
	}
	return false
}

// parseCertificates parses every CERTIFICATE block of bundlePEM, skipping what does not parse.
func parseCertificates(bundlePEM []byte) []*x509.Certificate {
	var certs []*x509.Certificate
	rest := bundlePEM
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return certs
		}
		if block.Type != pemCertificate {
			continue
		}
		if cert, err := x509.ParseCertificate(block.Bytes); err == nil {
			certs = append(certs, cert)
		}
	}
}
