package aws

// The gateway's DNS name in Route 53 and cert-manager's IRSA role, against the in-memory Route 53 of
// fake_route53_test.go (Route 53 cannot run offline): the tests assert the exact change batches.

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	r53types "github.com/aws/aws-sdk-go-v2/service/route53/types"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

const (
	publicZone  = "Z0PUBLIC"
	privateZone = "Z0PRIVATE"
	gatewayName = "metrics.acme.example.com"
)

// dnsWorld has the public zone example.com, and a private zone of the same name that must be ignored.
func dnsWorld() *world {
	w := newWorld("eu-west-1")
	w.addZone(publicZone, "example.com", false)
	w.addZone(privateZone, "example.com", true)
	w.addZone("Z0OTHER", "example.org", false)
	return w
}

func dnsConfig(t testing.TB, extra string) config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte("dns: {domain: acme.example.com"+extra+"}\naws: {region: eu-west-1}\n"), config.ProviderAWS)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// lb is the gateway's load balancer as the test sets it; "" while it has no name.
type lb struct{ name string }

func (l *lb) target(context.Context) (string, error) {
	if l.name == "" {
		return "", plan.Errorf(plan.NotFound, "read the gateway's load balancer", errors.New("no address yet"))
	}
	return l.name, nil
}

// recordSteps are the zone check and the record, without the rest of an install.
func recordSteps(w *world, cfg config.Config, l *lb) []plan.Step {
	return []plan.Step{zoneStep(w.clients(), testCluster, *cfg.DNS), RecordStep(w.clients(), testCluster, *cfg.DNS, l.target)}
}

func changeBatches(w *world) []string {
	var out []string
	for _, in := range inputs[*route53.ChangeResourceRecordSetsInput](w, "route53:ChangeResourceRecordSets") {
		var changes []string
		for _, c := range in.ChangeBatch.Changes {
			r := c.ResourceRecordSet
			changes = append(changes, string(c.Action)+" "+aws.ToString(r.Name)+" "+string(r.Type)+" "+
				strings.Join(recordValues(*r), " ")+" ttl="+strconv.FormatInt(aws.ToInt64(r.TTL), 10))
		}
		out = append(out, aws.ToString(in.HostedZoneId)+": "+strings.Join(changes, "; "))
	}
	return out
}

func TestGatewayRecordIsCreatedOnceUpdatedAndDeleted(t *testing.T) {
	w := dnsWorld()
	cfg := dnsConfig(t, "")
	l := &lb{name: "a1b2c3-123.elb.eu-west-1.amazonaws.com"}
	if _, err := run(t, w, recordSteps(w, cfg, l), 2); err != nil {
		t.Fatal(err)
	}
	// One atomic batch in the public zone of the nearest parent domain: the ownership TXT and the CNAME.
	want := []string{publicZone + `: CREATE cname-metrics.acme.example.com. TXT "opstrace.io/cluster=prod" ttl=300; ` +
		"CREATE metrics.acme.example.com. CNAME a1b2c3-123.elb.eu-west-1.amazonaws.com ttl=60"}
	if got := changeBatches(w); !slices.Equal(got, want) {
		t.Fatalf("change batches\n got %q\nwant %q", got, want)
	}
	lookups := inputs[*route53.ListHostedZonesByNameInput](w, "route53:ListHostedZonesByName")
	if len(lookups) < 2 || aws.ToString(lookups[0].DNSName) != "acme.example.com" || aws.ToString(lookups[1].DNSName) != "example.com" {
		t.Errorf("zone lookups %v: want acme.example.com, then its parent example.com", lookups)
	}
	if got := w.records(privateZone); len(got) != 0 {
		t.Errorf("the private zone was written: %q", got)
	}

	// A rerun reads and changes nothing.
	before := len(changeBatches(w))
	rep, err := run(t, w, recordSteps(w, cfg, l), 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range rep.Steps {
		if s.Action != plan.NoOp {
			t.Errorf("rerun: %s planned %s", s.Name, s.Action)
		}
	}
	if n := len(changeBatches(w)); n != before {
		t.Errorf("rerun made %d change batches", n-before)
	}

	// A new load balancer: the old CNAME is deleted exactly as it was and the new one made, in one batch.
	l.name = "d4e5f6-456.elb.eu-west-1.amazonaws.com"
	if _, err := run(t, w, recordSteps(w, cfg, l), 2); err != nil {
		t.Fatal(err)
	}
	if got := changeBatches(w)[before:]; !slices.Equal(got, []string{publicZone + ": DELETE metrics.acme.example.com. CNAME a1b2c3-123.elb.eu-west-1.amazonaws.com ttl=60; " +
		"CREATE metrics.acme.example.com. CNAME d4e5f6-456.elb.eu-west-1.amazonaws.com ttl=60"}) {
		t.Errorf("update batches %q", got)
	}

	// list and sweep find the record by its ownership TXT.
	found, err := Find(context.Background(), w.clients(), "")
	if err != nil {
		t.Fatal(err)
	}
	if got := found[testCluster]; len(got) != 1 || got[0] != (cloud.Resource{Kind: "route53:record", ID: publicZone + "/" + gatewayName}) {
		t.Errorf("Find: %v", found)
	}

	// destroy deletes both records, exactly as they are; again, nothing.
	rev, err := plan.Reverse(recordSteps(w, cfg, l))
	if err != nil {
		t.Fatal(err)
	}
	before = len(changeBatches(w))
	if _, err := run(t, w, rev, 2); err != nil {
		t.Fatal(err)
	}
	if got := changeBatches(w)[before:]; !slices.Equal(got, []string{publicZone + `: DELETE cname-metrics.acme.example.com. TXT "opstrace.io/cluster=prod" ttl=300; ` +
		"DELETE metrics.acme.example.com. CNAME d4e5f6-456.elb.eu-west-1.amazonaws.com ttl=60"}) {
		t.Errorf("destroy batches %q", got)
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

// Records with the gateway's name that this cluster did not make (no ownership TXT, or another cluster's)
// stop create in its first wave, with the fix; neither create nor destroy nor the sweep touches them.
func TestForeignGatewayRecordsAreRefusedAndNeverTouched(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(w *world)
		want  string
	}{
		{"CNAME without TXT", func(w *world) {
			w.addRecord(publicZone, gatewayName, r53types.RRTypeCname, "their-lb.example.net")
		}, `Route 53 has a CNAME record metrics.acme.example.com in zone example.com without the TXT record cname-metrics.acme.example.com "opstrace.io/cluster=prod" that would make it this cluster's`},
		{"A record without TXT", func(w *world) {
			w.addRecord(publicZone, gatewayName, r53types.RRTypeA, "203.0.113.7")
		}, "Route 53 has a A record metrics.acme.example.com"},
		{"another cluster's", func(w *world) {
			w.addRecord(publicZone, gatewayName, r53types.RRTypeCname, "staging-lb.example.net")
			w.addRecord(publicZone, "cname-"+gatewayName, r53types.RRTypeTxt, `"opstrace.io/cluster=staging"`)
		}, `the Route 53 records of metrics.acme.example.com belong to the Opstrace cluster staging (TXT cname-metrics.acme.example.com "opstrace.io/cluster=staging")`},
	} {
		synctest.Test(t, func(t *testing.T) {
			w := dnsWorld()
			w.latency = slowWorld().latency // waves take their real time: the refusal comes first
			tc.setup(w)
			before := w.records(publicZone)
			cfg := dnsConfig(t, "")
			steps := append(Steps(w.clients(), testCluster, cfg), RecordStep(w.clients(), testCluster, *cfg.DNS, (&lb{name: "x.elb.amazonaws.com"}).target, "aws/node-group"))

			p, err := plan.Preview(context.Background(), steps)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range p {
				if s.Name == "aws/dns-zone" && (s.Change.Action == plan.NoOp || !strings.Contains(strings.Join(s.Change.Diff, " "), "BLOCKED: use "+gatewayName)) {
					t.Errorf("%s: plan of aws/dns-zone: %s %q", tc.name, s.Change.Action, s.Change.Diff)
				}
			}
			rep, err := run(t, w, steps, 8)
			if plan.Classify(err) != plan.NotOwned || !strings.Contains(err.Error(), tc.want) ||
				!strings.Contains(err.Error(), "opstrace never changes DNS records it did not create: delete that record if it is unused, or choose another dns.domain; "+
					`to hand it to this cluster instead, add the TXT record cname-metrics.acme.example.com "opstrace.io/cluster=prod"`) {
				t.Fatalf("%s: create over a foreign record: %v", tc.name, err)
			}
			// It stops in the first wave: no EKS cluster was started.
			for _, s := range rep.Steps {
				if s.Name == "aws/eks-cluster" && s.State != plan.Skipped {
					t.Errorf("%s: aws/eks-cluster %s: create went on past the refusal", tc.name, s.State)
				}
			}
			rev, err := plan.Reverse(steps)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := run(t, w, rev, 8); err != nil {
				t.Fatalf("%s: destroy with a foreign record at the gateway's name: %v", tc.name, err)
			}
			if _, err := Sweep(context.Background(), w.clients(), testCluster, false); err != nil {
				t.Fatal(err)
			}
			if n := len(changeBatches(w)); n != 0 {
				t.Errorf("%s: %d change batches on a zone with a foreign record: %q", tc.name, n, changeBatches(w))
			}
			if got := w.records(publicZone); !slices.Equal(got, before) {
				t.Errorf("%s: records changed: %q, were %q", tc.name, got, before)
			}
		})
	}
}

func TestHostedZoneLookup(t *testing.T) {
	w := dnsWorld()
	w.addZone("Z0ACME", "acme.example.com", false)
	w.addZone("Z0DUP1", "dup.example.net", false)
	w.addZone("Z0DUP2", "dup.example.net", false)
	for _, tc := range []struct {
		dns     config.DNS
		want    HostedZone
		problem string
	}{
		{dns: config.DNS{Domain: "acme.example.com"}, want: HostedZone{ID: "Z0ACME", Name: "acme.example.com"}},
		{dns: config.DNS{Domain: "team.acme.example.com"}, want: HostedZone{ID: "Z0ACME", Name: "acme.example.com"}},
		{dns: config.DNS{Domain: "other.example.com"}, want: HostedZone{ID: publicZone, Name: "example.com"}},
		{dns: config.DNS{Domain: "acme.example.com", HostedZone: publicZone}, want: HostedZone{ID: publicZone, Name: "example.com"}},
		{dns: config.DNS{Domain: "acme.example.com", HostedZone: "Z0OTHER"},
			problem: "dns.hosted_zone Z0OTHER is the zone of example.org, which does not contain metrics.acme.example.com: set it to the zone of acme.example.com, or remove it to look the zone up by name"},
		{dns: config.DNS{Domain: "acme.example.com", HostedZone: privateZone},
			problem: "dns.hosted_zone Z0PRIVATE (example.com) is a private zone: clients and Let's Encrypt resolve metrics.acme.example.com on the internet; set it to a public zone"},
		{dns: config.DNS{Domain: "acme.example.com", HostedZone: "Z0MISSING"},
			problem: "dns.hosted_zone Z0MISSING does not exist in this AWS account: set it to the ID of the public zone of acme.example.com, or remove it to look the zone up by name"},
		{dns: config.DNS{Domain: "acme.example.io"},
			problem: "no public Route 53 hosted zone of acme.example.io or a parent domain in this AWS account: create one and delegate the domain to its name servers, or set dns.hosted_zone"},
		{dns: config.DNS{Domain: "x.dup.example.net"},
			problem: "2 public hosted zones are named dup.example.net (Z0DUP1, Z0DUP2): set dns.hosted_zone to the one its domain is delegated to"},
	} {
		got, err := FindHostedZone(context.Background(), w.clients().Route53, tc.dns)
		switch {
		case tc.problem == "" && (err != nil || got != tc.want):
			t.Errorf("%+v: %+v %v, want %+v", tc.dns, got, err, tc.want)
		case tc.problem != "" && (err == nil || !strings.Contains(err.Error(), tc.problem) || plan.Retryable(err)):
			t.Errorf("%+v: %v\nwant the final error %q", tc.dns, err, tc.problem)
		}
	}
}

// cert-manager's IRSA role: trusted only by cert-manager's service account, allowed only the DNS01
// challenge TXT of the gateway's name in the one zone, reading that zone, and following its changes.
func TestCertManagerRoleIsLimitedToTheChallengeRecord(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		w.addZone(publicZone, "example.com", false)
		cfg := dnsConfig(t, "")
		if cfg.CertIssuer != config.CertIssuerLetsEncryptProd {
			t.Fatalf("cert_issuer defaults to %s with dns, want letsencrypt-prod", cfg.CertIssuer)
		}
		if _, err := run(t, w, Steps(w.clients(), testCluster, cfg), 8); err != nil {
			t.Fatal(err)
		}
		var trust, policy string
		for _, in := range inputs[*iam.CreateRoleInput](w, "iam:CreateRole") {
			if aws.ToString(in.RoleName) == "opstrace-prod-cert-manager" {
				trust = aws.ToString(in.AssumeRolePolicyDocument)
			}
		}
		for _, in := range inputs[*iam.PutRolePolicyInput](w, "iam:PutRolePolicy") {
			if aws.ToString(in.RoleName) == "opstrace-prod-cert-manager" {
				policy = aws.ToString(in.PolicyDocument)
			}
		}
		wantTrust := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Federated":"arn:aws:iam::123456789012:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/PROD"},"Action":["sts:AssumeRoleWithWebIdentity"],"Condition":{"StringEquals":{"oidc.eks.eu-west-1.amazonaws.com/id/PROD:aud":"sts.amazonaws.com","oidc.eks.eu-west-1.amazonaws.com/id/PROD:sub":"system:serviceaccount:cert-manager:cert-manager"}}}]}`
		if trust != wantTrust {
			t.Errorf("trust policy\n got %s\nwant %s", trust, wantTrust)
		}
		wantPolicy := `{"Version":"2012-10-17","Statement":[` +
			`{"Effect":"Allow","Action":["route53:GetChange"],"Resource":["arn:aws:route53:::change/*"]},` +
			`{"Effect":"Allow","Action":["route53:ListResourceRecordSets"],"Resource":["arn:aws:route53:::hostedzone/Z0PUBLIC"]},` +
			`{"Effect":"Allow","Action":["route53:ChangeResourceRecordSets"],"Resource":["arn:aws:route53:::hostedzone/Z0PUBLIC"],` +
			`"Condition":{"ForAllValues:StringEquals":{"route53:ChangeResourceRecordSetsNormalizedRecordNames":"_acme-challenge.metrics.acme.example.com","route53:ChangeResourceRecordSetsRecordTypes":"TXT"}}}]}`
		if policy != wantPolicy {
			t.Errorf("route53 policy\n got %s\nwant %s", policy, wantPolicy)
		}
		if len(w.roles["opstrace-prod-cert-manager"].attached) != 0 {
			t.Errorf("managed policies on cert-manager's role: %v", w.roles["opstrace-prod-cert-manager"].attached)
		}

		// self-signed: no cert-manager, so no role; the zone is still checked for the record.
		selfSigned := dnsConfig(t, "")
		selfSigned.CertIssuer = config.CertIssuerSelfSigned
		var names []string
		for _, s := range Steps(w.clients(), testCluster, selfSigned) {
			names = append(names, s.Name())
		}
		if slices.Contains(names, "aws/cert-manager-role") || !slices.Contains(names, "aws/dns-zone") {
			t.Errorf("steps of a self-signed config with dns: %v", names)
		}
		// Without dns, neither.
		for _, s := range Steps(w.clients(), testCluster, testConfig(t)) {
			if strings.HasPrefix(s.Name(), "aws/dns") || s.Name() == "aws/cert-manager-role" {
				t.Errorf("step %s without dns", s.Name())
			}
		}
	})
}

// The sweep finds records by their ownership TXT in every public zone, over many pages, and deletes only
// this cluster's.
func TestSweepDeletesOnlyThisClustersRecords(t *testing.T) {
	w := dnsWorld()
	w.recordPage = 2
	for _, name := range []string{"a.example.com", "b.example.com", "c.example.com", "z.example.com"} {
		w.addRecord(publicZone, name, r53types.RRTypeA, "192.0.2.1")
	}
	w.addRecord(publicZone, gatewayName, r53types.RRTypeCname, "lb.elb.amazonaws.com")
	w.addRecord(publicZone, "cname-"+gatewayName, r53types.RRTypeTxt, `"opstrace.io/cluster=prod"`)
	w.addRecord(publicZone, "metrics.staging.example.com", r53types.RRTypeCname, "lb2.elb.amazonaws.com")
	w.addRecord(publicZone, "cname-metrics.staging.example.com", r53types.RRTypeTxt, `"opstrace.io/cluster=staging"`)

	rep, err := Sweep(context.Background(), w.clients(), testCluster, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Left) != 0 || len(rep.Removed) != 1 || rep.Removed[0].ID != publicZone+"/"+gatewayName {
		t.Fatalf("sweep: %s", rep)
	}
	want := []string{
		`cname-metrics.staging.example.com. TXT 300 "opstrace.io/cluster=staging"`,
		"a.example.com. A 300 192.0.2.1", "b.example.com. A 300 192.0.2.1", "c.example.com. A 300 192.0.2.1",
		"metrics.staging.example.com. CNAME 300 lb2.elb.amazonaws.com", "z.example.com. A 300 192.0.2.1",
	}
	slices.Sort(want)
	if got := w.records(publicZone); !slices.Equal(got, want) {
		t.Errorf("after the sweep\n got %q\nwant %q", got, want)
	}
	if pages := len(inputs[*route53.ListResourceRecordSetsInput](w, "route53:ListResourceRecordSets")); pages < 4 {
		t.Errorf("%d ListResourceRecordSets calls: the listing did not follow the pages", pages)
	}
}

// A record made by hand (as the README of earlier versions said to) is handed to the cluster by adding the
// ownership TXT the refusal names: create then points it at the load balancer, and destroy deletes it.
func TestHandedOverRecordIsAdopted(t *testing.T) {
	w := dnsWorld()
	w.addRecord(publicZone, gatewayName, r53types.RRTypeCname, "old-lb.elb.eu-west-1.amazonaws.com")
	w.addRecord(publicZone, "cname-"+gatewayName, r53types.RRTypeTxt, `"opstrace.io/cluster=prod"`)
	cfg := dnsConfig(t, "")
	l := &lb{name: "a1b2c3-123.elb.eu-west-1.amazonaws.com"}
	if _, err := run(t, w, recordSteps(w, cfg, l), 2); err != nil {
		t.Fatal(err)
	}
	if got := changeBatches(w); !slices.Equal(got, []string{publicZone + ": DELETE metrics.acme.example.com. CNAME old-lb.elb.eu-west-1.amazonaws.com ttl=300; " +
		"CREATE metrics.acme.example.com. CNAME a1b2c3-123.elb.eu-west-1.amazonaws.com ttl=60"}) {
		t.Errorf("change batches %q", got)
	}
}

// Credentials that may not read Route 53 do not stop destroy: the record step says what may remain.
func TestDestroyWithoutRoute53AccessSaysWhatMayRemain(t *testing.T) {
	w := dnsWorld()
	cfg := dnsConfig(t, "")
	denied := apiErr("AccessDenied")
	w.inject["route53:ListHostedZonesByName"] = []error{denied, denied, denied, denied}
	_, p := previewDestroy(t, recordSteps(w, cfg, &lb{}))
	for _, s := range p {
		if s.Change.Action != plan.NoOp {
			t.Errorf("%s: %s %q", s.Name, s.Change.Action, s.Change.Diff)
		}
		if s.Name == "aws/dns-record" && (len(s.Change.Diff) != 1 || !strings.HasPrefix(s.Change.Diff[0], "SKIPPED: the records of metrics.acme.example.com could not be looked up (") ||
			!strings.Contains(s.Change.Diff[0], "missing permission route53:ListHostedZonesByName") ||
			!strings.HasSuffix(s.Change.Diff[0], "delete them and the TXT record cname-metrics.acme.example.com in Route 53")) {
			t.Errorf("destroy plan of the record: %q", s.Change.Diff)
		}
	}
}
