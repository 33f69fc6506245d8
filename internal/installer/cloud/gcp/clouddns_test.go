package gcp

// The gateway's DNS name in Cloud DNS and cert-manager's service account, against the in-memory Cloud DNS
// of fake_clouddns_test.go (Cloud DNS cannot run offline): the tests assert the exact changes and policies.

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"

	"cloud.google.com/go/iam/admin/apiv1/adminpb"
	dns "google.golang.org/api/dns/v1"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

const (
	publicZone  = "example-com"
	privateZone = "example-com-internal"
	gatewayName = "metrics.acme.example.com"
	certManager = "serviceAccount:opstrace-prod-cert-manager@acme-prod.iam.gserviceaccount.com"
)

// dnsWorld has the public zone example.com, and a private zone of the same name that must be ignored.
func dnsWorld() *world {
	w := newWorld()
	w.addZone(publicZone, "example.com", "public")
	w.addZone(privateZone, "example.com", "private")
	w.addZone("example-org", "example.org", "public")
	return w
}

func dnsConfig(t testing.TB) config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte("node_count: 4\ndns: {domain: acme.example.com}\ngcp: {project: acme-prod, region: europe-west1}\n"), config.ProviderGCP)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// lb is the gateway's load balancer as the test sets it; "" while it has no IP.
type lb struct{ ip string }

func (l *lb) target(context.Context) (string, error) {
	if l.ip == "" {
		return "", plan.Errorf(plan.NotFound, "read the gateway's load balancer", errors.New("no address yet"))
	}
	return l.ip, nil
}

// recordSteps are the zone check and the record, without the rest of an install.
func recordSteps(w *world, cfg config.Config, l *lb) []plan.Step {
	return []plan.Step{zoneStep(w.clients(), testCluster, *cfg.DNS), RecordStep(w.clients(), testCluster, *cfg.DNS, l.target)}
}

func describeRecords(rs []*dns.ResourceRecordSet) string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Name+" "+r.Type+" "+strings.Join(r.Rrdatas, " ")+" ttl="+strconv.FormatInt(r.Ttl, 10))
	}
	return strings.Join(out, ", ")
}

func changes(w *world) []string {
	var out []string
	for _, c := range inputs[*dns.Change](w, "dns:CreateChange") {
		out = append(out, "add ["+describeRecords(c.Additions)+"] delete ["+describeRecords(c.Deletions)+"]")
	}
	return out
}

func TestGatewayRecordIsCreatedOnceUpdatedAndDeleted(t *testing.T) {
	w := dnsWorld()
	cfg := dnsConfig(t)
	l := &lb{ip: "203.0.113.10"}
	if _, err := run(w, recordSteps(w, cfg, l), 2); err != nil {
		t.Fatal(err)
	}
	// One atomic change in the public zone of the nearest parent domain: the ownership TXT and the A record.
	want := []string{`add [a-metrics.acme.example.com. TXT "opstrace.io/cluster=prod" ttl=300, metrics.acme.example.com. A 203.0.113.10 ttl=60] delete []`}
	if got := changes(w); !slices.Equal(got, want) {
		t.Fatalf("changes\n got %q\nwant %q", got, want)
	}
	if got := w.records(publicZone); len(got) != 2 {
		t.Errorf("public zone: %q", got)
	}
	if got := w.records(privateZone); len(got) != 0 {
		t.Errorf("the private zone was written: %q", got)
	}
	if lookups := inputs[string](w, "dns:ListManagedZones"); len(lookups) < 2 || lookups[0] != "acme.example.com." || lookups[1] != "example.com." {
		t.Errorf("zone lookups %q: want acme.example.com., then its parent example.com.", lookups)
	}

	// A rerun reads and changes nothing.
	before := len(changes(w))
	rep, err := run(w, recordSteps(w, cfg, l), 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range rep.Steps {
		if s.Action != plan.NoOp {
			t.Errorf("rerun: %s planned %s", s.Name, s.Action)
		}
	}
	if n := len(changes(w)); n != before {
		t.Errorf("rerun made %d changes", n-before)
	}

	// A new load balancer IP: the old A record is deleted exactly as it was and the new one added, at once.
	l.ip = "203.0.113.20"
	if _, err := run(w, recordSteps(w, cfg, l), 2); err != nil {
		t.Fatal(err)
	}
	if got := changes(w)[before:]; !slices.Equal(got, []string{"add [metrics.acme.example.com. A 203.0.113.20 ttl=60] delete [metrics.acme.example.com. A 203.0.113.10 ttl=60]"}) {
		t.Errorf("update changes %q", got)
	}

	found, err := Find(context.Background(), w.clients(), "")
	if err != nil {
		t.Fatal(err)
	}
	if got := found[testCluster]; len(got) != 1 || got[0] != (cloud.Resource{Kind: "clouddns:record", ID: publicZone + "/" + gatewayName}) {
		t.Errorf("Find: %v", found)
	}

	// destroy deletes both, exactly as they are; again, nothing.
	rev, err := plan.Reverse(recordSteps(w, cfg, l))
	if err != nil {
		t.Fatal(err)
	}
	before = len(changes(w))
	if _, err := run(w, rev, 2); err != nil {
		t.Fatal(err)
	}
	if got := changes(w)[before:]; !slices.Equal(got, []string{`add [] delete [a-metrics.acme.example.com. TXT "opstrace.io/cluster=prod" ttl=300, metrics.acme.example.com. A 203.0.113.20 ttl=60]`}) {
		t.Errorf("destroy changes %q", got)
	}
	if got := w.records(publicZone); len(got) != 0 {
		t.Errorf("records left after destroy: %q", got)
	}
	p, err := plan.Preview(context.Background(), rev)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range p {
		if s.Change.Action != plan.NoOp {
			t.Errorf("destroy again: %s plans %s %q", s.Name, s.Change.Action, s.Change.Diff)
		}
	}
}

// Records with the gateway's name that this cluster did not make stop create in its first wave, with the
// fix; neither create nor destroy nor the sweep touches them.
func TestForeignGatewayRecordsAreRefusedAndNeverTouched(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(w *world)
		want  string
	}{
		{"A without TXT", func(w *world) { w.addRecord(publicZone, gatewayName, "A", "198.51.100.1") },
			`Cloud DNS has a A record metrics.acme.example.com in zone example-com without the TXT record a-metrics.acme.example.com "opstrace.io/cluster=prod" that would make it this cluster's`},
		{"CNAME without TXT", func(w *world) { w.addRecord(publicZone, gatewayName, "CNAME", "their-lb.example.net.") },
			"Cloud DNS has a CNAME record metrics.acme.example.com"},
		{"another cluster's", func(w *world) {
			w.addRecord(publicZone, gatewayName, "A", "198.51.100.2")
			w.addRecord(publicZone, "a-"+gatewayName, "TXT", `"opstrace.io/cluster=staging"`)
		}, `the Cloud DNS records of metrics.acme.example.com belong to the Opstrace cluster staging (TXT a-metrics.acme.example.com "opstrace.io/cluster=staging")`},
	} {
		synctest.Test(t, func(t *testing.T) {
			w := dnsWorld()
			w.latency = slowWorld().latency // waves take their real time: the refusal comes first
			tc.setup(w)
			before := w.records(publicZone)
			cfg := dnsConfig(t)
			steps := append(Steps(w.clients(), testCluster, cfg), RecordStep(w.clients(), testCluster, *cfg.DNS, (&lb{ip: "203.0.113.10"}).target, "gcp/node-pool"))
			rep, err := run(w, steps, 8)
			if plan.Classify(err) != plan.NotOwned || !strings.Contains(err.Error(), tc.want) ||
				!strings.Contains(err.Error(), "opstrace never changes DNS records it did not create: delete that record if it is unused, or choose another dns.domain") {
				t.Fatalf("%s: create over a foreign record: %v", tc.name, err)
			}
			for _, s := range rep.Steps {
				if s.Name == "gcp/gke-cluster" && s.State != plan.Skipped {
					t.Errorf("%s: gcp/gke-cluster %s: create went on past the refusal", tc.name, s.State)
				}
			}
			rev, err := plan.Reverse(steps)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := run(w, rev, 8); err != nil {
				t.Fatalf("%s: destroy with a foreign record at the gateway's name: %v", tc.name, err)
			}
			if _, err := Sweep(context.Background(), w.clients(), testCluster, false); err != nil {
				t.Fatal(err)
			}
			if n := len(changes(w)); n != 0 {
				t.Errorf("%s: %d changes on a zone with a foreign record: %q", tc.name, n, changes(w))
			}
			if got := w.records(publicZone); !slices.Equal(got, before) {
				t.Errorf("%s: records changed: %q, were %q", tc.name, got, before)
			}
		})
	}
}

func TestManagedZoneLookup(t *testing.T) {
	w := dnsWorld()
	w.addZone("acme", "acme.example.com", "public")
	w.addZone("dup-1", "dup.example.net", "public")
	w.addZone("dup-2", "dup.example.net", "public")
	for _, tc := range []struct {
		dns     config.DNS
		want    ManagedZone
		problem string
	}{
		{dns: config.DNS{Domain: "acme.example.com"}, want: ManagedZone{Name: "acme", DNSName: "acme.example.com"}},
		{dns: config.DNS{Domain: "team.acme.example.com"}, want: ManagedZone{Name: "acme", DNSName: "acme.example.com"}},
		{dns: config.DNS{Domain: "other.example.com"}, want: ManagedZone{Name: publicZone, DNSName: "example.com"}},
		{dns: config.DNS{Domain: "acme.example.com", HostedZone: publicZone}, want: ManagedZone{Name: publicZone, DNSName: "example.com"}},
		{dns: config.DNS{Domain: "acme.example.com", HostedZone: "example-org"},
			problem: "dns.hosted_zone example-org is the zone of example.org, which does not contain metrics.acme.example.com: set it to the zone of acme.example.com, or remove it to look the zone up by name"},
		{dns: config.DNS{Domain: "acme.example.com", HostedZone: privateZone},
			problem: "dns.hosted_zone example-com-internal (example.com) is a private zone: clients and Let's Encrypt resolve metrics.acme.example.com on the internet; set it to a public zone"},
		{dns: config.DNS{Domain: "acme.example.com", HostedZone: "missing"},
			problem: "dns.hosted_zone missing is not a managed zone of project acme-prod: set it to the name of the public zone of acme.example.com, or remove it to look the zone up by name"},
		{dns: config.DNS{Domain: "acme.example.io"},
			problem: "no public Cloud DNS zone of acme.example.io or a parent domain in project acme-prod: create one and delegate the domain to its name servers, or set dns.hosted_zone"},
		{dns: config.DNS{Domain: "x.dup.example.net"},
			problem: "2 public managed zones of project acme-prod are for dup.example.net (dup-1, dup-2): set dns.hosted_zone to the one its domain is delegated to"},
	} {
		got, err := FindManagedZone(context.Background(), w.clients().DNS, "acme-prod", tc.dns)
		switch {
		case tc.problem == "" && (err != nil || got != tc.want):
			t.Errorf("%+v: %+v %v, want %+v", tc.dns, got, err, tc.want)
		case tc.problem != "" && (err == nil || !strings.Contains(err.Error(), tc.problem) || plan.Retryable(err)):
			t.Errorf("%+v: %v\nwant the final error %q", tc.dns, err, tc.problem)
		}
	}
}

// cert-manager's Google service account: only cert-manager's Kubernetes service account may act as it, and
// it holds roles/dns.admin on the one managed zone, next to the zone's other bindings; destroy removes that
// binding (the zone outlives the cluster) before deleting the account.
func TestCertManagerIdentityHoldsOnlyTheZone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		w.addZone(publicZone, "example.com", "public")
		cfg := dnsConfig(t)
		steps := Steps(w.clients(), testCluster, cfg)
		if _, err := run(w, steps, 8); err != nil {
			t.Fatal(err)
		}
		var created []string
		for _, in := range inputs[*adminpb.CreateServiceAccountRequest](w, "iam:CreateServiceAccount") {
			created = append(created, in.GetAccountId()+" "+in.GetServiceAccount().GetDescription())
		}
		if !slices.Contains(created, "opstrace-prod-cert-manager opstrace-io-cluster=prod") {
			t.Errorf("service accounts created: %q", created)
		}
		sa := w.sas["opstrace-prod-cert-manager@acme-prod.iam.gserviceaccount.com"]
		if sa == nil || !slices.Equal(members(sa.policy, RoleWorkloadIdentityUser), []string{"serviceAccount:acme-prod.svc.id.goog[cert-manager/cert-manager]"}) ||
			len(sa.policy.GetBindings()) != 1 {
			t.Fatalf("cert-manager's service account policy: %v", sa)
		}
		if got := w.zoneBindings(publicZone); !slices.Equal(got, []string{"roles/dns.reader=group:dns-team@example.com", "roles/dns.admin=" + certManager}) {
			t.Errorf("zone policy %q", got)
		}
		sets := inputs[*dns.GoogleIamV1Policy](w, "dns:SetZonePolicy")
		if len(sets) != 1 || sets[0].Etag != "etag-0" {
			t.Errorf("SetZonePolicy requests %v: want one, with the etag read", sets)
		}
		// A rerun changes nothing.
		rep, err := run(w, steps, 8)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range rep.Steps {
			if s.Action != plan.NoOp {
				t.Errorf("rerun: %s planned %s", s.Name, s.Action)
			}
		}

		rev, err := plan.Reverse(steps)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := run(w, rev, 8); err != nil {
			t.Fatal(err)
		}
		if got := w.zoneBindings(publicZone); !slices.Equal(got, []string{"roles/dns.reader=group:dns-team@example.com"}) {
			t.Errorf("zone policy after destroy %q: want the binding of the deleted account removed, the others kept", got)
		}
		if got := w.inventory(); !slices.Equal(got, withOthers("zone example-com binding roles/dns.reader=group:dns-team@example.com")) {
			t.Errorf("left after destroy: %q", got)
		}

		// self-signed: no cert-manager, so no identity; the zone is still checked for the record.
		selfSigned := dnsConfig(t)
		selfSigned.CertIssuer = config.CertIssuerSelfSigned
		var names []string
		for _, s := range Steps(w.clients(), testCluster, selfSigned) {
			names = append(names, s.Name())
		}
		if slices.Contains(names, "gcp/cert-manager-identity") || !slices.Contains(names, "gcp/dns-zone") {
			t.Errorf("steps of a self-signed config with dns: %v", names)
		}
	})
}

// The sweep finds records by their ownership TXT in every public zone and deletes only this cluster's.
func TestSweepDeletesOnlyThisClustersRecords(t *testing.T) {
	w := dnsWorld()
	w.addRecord(publicZone, "www.example.com", "A", "192.0.2.1")
	w.addRecord(publicZone, gatewayName, "A", "203.0.113.10")
	w.addRecord(publicZone, "a-"+gatewayName, "TXT", `"opstrace.io/cluster=prod"`)
	w.addRecord(publicZone, "metrics.staging.example.com", "A", "203.0.113.11")
	w.addRecord(publicZone, "a-metrics.staging.example.com", "TXT", `"opstrace.io/cluster=staging"`)

	rep, err := Sweep(context.Background(), w.clients(), testCluster, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Left) != 0 || len(rep.Removed) != 1 || rep.Removed[0].ID != publicZone+"/"+gatewayName {
		t.Fatalf("sweep: %s", rep)
	}
	want := []string{`a-metrics.staging.example.com. TXT 300 "opstrace.io/cluster=staging"`,
		"metrics.staging.example.com. A 300 203.0.113.11", "www.example.com. A 300 192.0.2.1"}
	if got := w.records(publicZone); !slices.Equal(got, want) {
		t.Errorf("after the sweep\n got %q\nwant %q", got, want)
	}
}
