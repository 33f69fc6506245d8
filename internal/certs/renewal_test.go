package certs

import (
	"bytes"
	"net"
	"testing"
	"time"
)

func TestNeedsRenewal(t *testing.T) {
	ca := mustCA(t, "test CA", now)
	leaf := mustParse(t, mustLeaf(t, ca, []string{"a"}, nil, now, LeafLifetime))
	leafPEM := mustLeaf(t, ca, []string{"a"}, nil, now, LeafLifetime).CertPEM
	// The lifetime NeedsRenewal measures is the certificate's: NotBefore (back-dated by ClockSkew) to NotAfter.
	lifetime := leaf.NotAfter.Sub(leaf.NotBefore)
	at := func(percent int64) time.Time {
		return leaf.NotBefore.Add(time.Duration(int64(lifetime) / 100 * percent))
	}

	for _, tc := range []struct {
		name       string
		certPEM    []byte
		at         time.Time
		want       bool
		wantReason string
	}{
		{"missing", nil, now, true, "certificate missing or unreadable"},
		{"garbage", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), now, true, "certificate missing or unreadable"},
		{"not PEM", []byte("hello"), now, true, "certificate missing or unreadable"},
		{"only a key", ca.KeyPEM, now, true, "certificate missing or unreadable"},
		{"fresh", leafPEM, now, false, ""},
		{"at 79%", leafPEM, at(79), false, ""},
		{"a nanosecond before 80%", leafPEM, RenewAt(leaf).Add(-time.Nanosecond), false, ""},
		{"at 80%", leafPEM, at(80), true, "certificate passed 80% of its lifetime"},
		{"at 99%", leafPEM, at(99), true, "certificate passed 80% of its lifetime"},
		{"at NotAfter, still valid", leafPEM, leaf.NotAfter, true, "certificate passed 80% of its lifetime"},
		{"expired", leafPEM, leaf.NotAfter.Add(time.Second), true, "certificate expired"},
		{"not yet valid", leafPEM, leaf.NotBefore.Add(-time.Second), true, "certificate not yet valid"},
		{"CA fresh", ca.CertPEM, now.Add(365 * 24 * time.Hour), false, ""},
		{"CA after four years", ca.CertPEM, now.Add(4 * 365 * 24 * time.Hour), true, "certificate passed 80% of its lifetime"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, reason := NeedsRenewal(tc.certPEM, tc.at)
			if got != tc.want || reason != tc.wantReason {
				t.Errorf("NeedsRenewal = %v, %q; want %v, %q", got, reason, tc.want, tc.wantReason)
			}
		})
	}
}

func TestRenewAt(t *testing.T) {
	ca := mustCA(t, "test CA", now)
	leaf := mustParse(t, mustLeaf(t, ca, []string{"a"}, nil, now, LeafLifetime))
	// 90 days and 5 minutes of lifetime: 80% is 72 days and 4 minutes after NotBefore.
	want := leaf.NotBefore.Add(72*24*time.Hour + 4*time.Minute)
	if got := RenewAt(leaf); !got.Equal(want) {
		t.Errorf("RenewAt = %s, want %s", got, want)
	}
	if got := renewAt(time.Time{}, time.Time{}.Add(1<<63-1)); got.Before(time.Time{}) {
		t.Errorf("renewAt overflows for the longest lifetime: %s", got)
	}
}

func TestNeedsReissue(t *testing.T) {
	ca := mustCA(t, "test CA", now)
	otherCA := mustCA(t, "test CA", now) // same name, other key
	names := GatewayDNSNames("metrics", "opstrace", "")
	ips := []net.IP{net.ParseIP("10.0.0.1")}
	leaf := mustLeaf(t, ca, names, ips, now, LeafLifetime).CertPEM
	fromOther := mustLeaf(t, otherCA, names, ips, now, LeafLifetime).CertPEM
	withHostname := GatewayDNSNames("metrics", "opstrace", "metrics.example.com")
	reversed := []string{names[3], names[2], "METRICS-GATEWAY", names[1], names[0]}

	for _, tc := range []struct {
		name       string
		certPEM    []byte
		ca         KeyPair
		names      []string
		ips        []net.IP
		at         time.Time
		want       bool
		wantReason string
	}{
		{"same", leaf, ca, names, ips, now, false, ""},
		{"same names, other order and case, repeated", leaf, ca, reversed, []net.IP{net.ParseIP("10.0.0.1").To4()}, now, false, ""},
		{"issued by another CA", fromOther, ca, names, ips, now, true, "issued by another CA"},
		{"CA renewed", leaf, otherCA, names, ips, now, true, "issued by another CA"},
		{"hostname added", leaf, ca, withHostname, ips, now, true, "hostnames changed: added metrics.example.com"},
		{"hostname removed", mustLeaf(t, ca, withHostname, ips, now, LeafLifetime).CertPEM, ca, names, ips, now, true,
			"hostnames changed: removed metrics.example.com"},
		{"names and IPs changed", leaf, ca, append([]string{"b.example", "a.example"}, names[1:]...), []net.IP{net.ParseIP("10.0.0.2")}, now, true,
			"hostnames changed: added 10.0.0.2, a.example, b.example; removed 10.0.0.1, metrics-gateway"},
		{"missing", nil, ca, names, ips, now, true, "certificate missing or unreadable"},
		{"expired beats everything", fromOther, ca, withHostname, ips, now.Add(LeafLifetime + time.Hour), true, "certificate expired"},
		{"80% of its lifetime", leaf, ca, names, ips, now.Add(80 * 24 * time.Hour), true, "certificate passed 80% of its lifetime"},
		{"CA unreadable", leaf, KeyPair{}, names, ips, now, true, "issuing CA missing or unreadable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, reason := NeedsReissue(tc.certPEM, tc.ca, tc.names, tc.ips, tc.at)
			if got != tc.want || reason != tc.wantReason {
				t.Errorf("NeedsReissue = %v, %q; want %v, %q", got, reason, tc.want, tc.wantReason)
			}
		})
	}
}

func TestReasonsAreStable(t *testing.T) {
	// Two leaves issued at different times by different CAs give the same reasons: nothing of the certificate
	// (serial, time) leaks into them, so a condition does not change on every reconcile.
	for i := 0; i < 2; i++ {
		at := now.Add(time.Duration(i) * 7 * time.Hour)
		ca := mustCA(t, "test CA", at)
		leaf := mustLeaf(t, ca, []string{"a"}, nil, at, LeafLifetime).CertPEM
		if _, reason := NeedsReissue(leaf, mustCA(t, "test CA", at), []string{"a"}, nil, at); reason != ReasonOtherCA {
			t.Errorf("reason = %q", reason)
		}
		if _, reason := NeedsRenewal(leaf, at.Add(LeafLifetime+time.Minute)); reason != ReasonExpired {
			t.Errorf("reason = %q", reason)
		}
	}
}

func TestTrustedAndIssuedByOneOf(t *testing.T) {
	old := mustCA(t, "old CA", now.Add(-CALifetime+24*time.Hour)) // expires in a day
	current := mustCA(t, "current CA", now)
	stranger := mustCA(t, "stranger CA", now)
	bundle := Bundle(current.CertPEM, old.CertPEM)
	names := []string{"metrics-all"}

	if got := Trusted(bundle, now); !bytes.Equal(got, bundle) {
		t.Errorf("Trusted dropped a valid CA:\n%s", got)
	}
	if got := Trusted(bundle, now.Add(48*time.Hour)); !bytes.Equal(got, Bundle(current.CertPEM)) {
		t.Errorf("Trusted kept the expired CA:\n%s", got)
	}
	if got := Trusted([]byte("not PEM"), now); got != nil {
		t.Errorf("Trusted of garbage = %q, want nil", got)
	}

	fromOld := mustLeaf(t, old, names, nil, now, LeafLifetime).CertPEM
	fromCurrent := mustLeaf(t, current, names, nil, now, LeafLifetime).CertPEM
	fromStranger := mustLeaf(t, stranger, names, nil, now, LeafLifetime).CertPEM
	for _, tc := range []struct {
		name   string
		leaf   []byte
		bundle []byte
		want   bool
	}{
		{"previous CA in the bundle", fromOld, bundle, true},
		{"current CA in the bundle", fromCurrent, bundle, true},
		{"another CA", fromStranger, bundle, false},
		{"previous CA dropped", fromOld, Bundle(current.CertPEM), false},
		{"no leaf", nil, bundle, false},
	} {
		if got := IssuedByOneOf(tc.leaf, tc.bundle); got != tc.want {
			t.Errorf("%s: IssuedByOneOf = %v, want %v", tc.name, got, tc.want)
		}
	}
}
