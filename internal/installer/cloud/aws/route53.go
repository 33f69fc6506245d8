package aws

// The gateway's DNS name in Route 53 (config key dns): the hosted zone of dns.domain, a CNAME from
// metrics.DOMAIN to the gateway's load balancer, and the IRSA role with which cert-manager answers Let's
// Encrypt's DNS01 challenges in that zone.
//
// DNS records carry no tags. Ownership is a TXT record beside the CNAME, as external-dns does it: at
// cname-metrics.DOMAIN (a CNAME may not share its name with any other record) with the value
// "opstrace.io/cluster=NAME". A record at the gateway's name without that TXT is someone else's: never
// changed or deleted, and create says how to fix it.

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	r53types "github.com/aws/aws-sdk-go-v2/service/route53/types"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

// Route53API is the part of *route53.Client the DNS steps use.
type Route53API interface {
	GetHostedZone(context.Context, *route53.GetHostedZoneInput, ...func(*route53.Options)) (*route53.GetHostedZoneOutput, error)
	ListHostedZones(context.Context, *route53.ListHostedZonesInput, ...func(*route53.Options)) (*route53.ListHostedZonesOutput, error)
	ListHostedZonesByName(context.Context, *route53.ListHostedZonesByNameInput, ...func(*route53.Options)) (*route53.ListHostedZonesByNameOutput, error)
	ListResourceRecordSets(context.Context, *route53.ListResourceRecordSetsInput, ...func(*route53.Options)) (*route53.ListResourceRecordSetsOutput, error)
	ChangeResourceRecordSets(context.Context, *route53.ChangeResourceRecordSetsInput, ...func(*route53.Options)) (*route53.ChangeResourceRecordSetsOutput, error)
}

// Record settings: clients follow a new load balancer within a minute; the ownership record never changes.
const (
	recordTTL = 60
	ownerTTL  = 300
)

// CertManagerRoleName is the IRSA role of cert-manager's controller, allowed only the DNS01 challenge
// record of the gateway's name.
func CertManagerRoleName(cluster string) string { return cloud.ResourceName(cluster, "cert-manager") }

// HostedZone is the public Route 53 zone the gateway's name is made in.
type HostedZone struct {
	ID   string // without the /hostedzone/ prefix
	Name string // without the trailing dot
}

func zoneID(id string) string { return strings.TrimPrefix(id, "/hostedzone/") }

// FindHostedZone is the public hosted zone of the gateway's name: dns.hosted_zone when set (checked to be
// public and to contain the name), else the public zone named dns.domain or its nearest parent. Problems a
// user fixes (no such zone, a zone of another domain, two zones of one name) are plan.Other errors that say
// how; the lookup is not retried.
func FindHostedZone(ctx context.Context, api Route53API, dns config.DNS) (HostedZone, error) {
	hostname := cloud.GatewayHostname(dns.Domain)
	if dns.HostedZone != "" {
		out, err := api.GetHostedZone(ctx, &route53.GetHostedZoneInput{Id: aws.String(dns.HostedZone)})
		if isNotFound(err) {
			return HostedZone{}, plan.Errorf(plan.Other, "find Route 53 hosted zone "+dns.HostedZone,
				fmt.Errorf("dns.hosted_zone %s does not exist in this AWS account: set it to the ID of the public zone of %s, or remove it to look the zone up by name", dns.HostedZone, dns.Domain))
		}
		if err != nil {
			return HostedZone{}, classify("read Route 53 hosted zone "+dns.HostedZone, "route53:GetHostedZone", err)
		}
		z := HostedZone{ID: zoneID(aws.ToString(out.HostedZone.Id)), Name: strings.TrimSuffix(aws.ToString(out.HostedZone.Name), ".")}
		switch {
		case out.HostedZone.Config != nil && out.HostedZone.Config.PrivateZone:
			return HostedZone{}, plan.Errorf(plan.Other, "use Route 53 hosted zone "+dns.HostedZone,
				fmt.Errorf("dns.hosted_zone %s (%s) is a private zone: clients and Let's Encrypt resolve %s on the internet; set it to a public zone", dns.HostedZone, z.Name, hostname))
		case !cloud.InZone(hostname, z.Name):
			return HostedZone{}, plan.Errorf(plan.Other, "use Route 53 hosted zone "+dns.HostedZone,
				fmt.Errorf("dns.hosted_zone %s is the zone of %s, which does not contain %s: set it to the zone of %s, or remove it to look the zone up by name", dns.HostedZone, z.Name, hostname, dns.Domain))
		}
		return z, nil
	}
	// The zone of the domain itself, else of its nearest parent that is still a domain (two labels).
	for name := strings.TrimSuffix(dns.Domain, "."); strings.Count(name, ".") >= 1; name = name[strings.Index(name, ".")+1:] {
		out, err := api.ListHostedZonesByName(ctx, &route53.ListHostedZonesByNameInput{DNSName: aws.String(name), MaxItems: aws.Int32(10)})
		if err != nil {
			return HostedZone{}, classify("find the Route 53 hosted zone of "+name, "route53:ListHostedZonesByName", err)
		}
		var public []HostedZone
		for _, z := range out.HostedZones {
			if aws.ToString(z.Name) == cloud.FQDN(name) && (z.Config == nil || !z.Config.PrivateZone) {
				public = append(public, HostedZone{ID: zoneID(aws.ToString(z.Id)), Name: name})
			}
		}
		switch len(public) {
		case 0:
			continue
		case 1:
			return public[0], nil
		}
		ids := make([]string, len(public))
		for i, z := range public {
			ids[i] = z.ID
		}
		return HostedZone{}, plan.Errorf(plan.Other, "find the Route 53 hosted zone of "+name,
			fmt.Errorf("%d public hosted zones are named %s (%s): set dns.hosted_zone to the one its domain is delegated to", len(public), name, strings.Join(ids, ", ")))
	}
	return HostedZone{}, plan.Errorf(plan.Other, "find the Route 53 hosted zone of "+dns.Domain,
		fmt.Errorf("no public Route 53 hosted zone of %s or a parent domain in this AWS account: create one and delegate the domain to its name servers, or set dns.hosted_zone", dns.Domain))
}

// gatewayRecords are the records at the gateway's name and its ownership TXT, as Route 53 has them.
type gatewayRecords struct {
	Zone HostedZone
	// AtName are the record sets at the gateway's name, of any type.
	AtName []r53types.ResourceRecordSet
	// Owner is the ownership TXT record set (nil when there is none), and OwnerCluster the cluster it names.
	Owner        *r53types.ResourceRecordSet
	OwnerCluster string
}

func recordValues(r r53types.ResourceRecordSet) []string {
	out := make([]string, len(r.ResourceRecords))
	for i, v := range r.ResourceRecords {
		out[i] = aws.ToString(v.Value)
	}
	return out
}

// readGatewayRecords reads the record sets at hostname and its ownership TXT in zone.
func readGatewayRecords(ctx context.Context, api Route53API, zone HostedZone, hostname string) (gatewayRecords, error) {
	st := gatewayRecords{Zone: zone}
	list := func(name string, rrType r53types.RRType) ([]r53types.ResourceRecordSet, error) {
		in := &route53.ListResourceRecordSetsInput{HostedZoneId: aws.String(zone.ID), StartRecordName: aws.String(name), MaxItems: aws.Int32(20)}
		if rrType != "" {
			in.StartRecordType = rrType
		}
		out, err := api.ListResourceRecordSets(ctx, in)
		if err != nil {
			return nil, classify("list Route 53 records "+name+" in zone "+zone.Name, "route53:ListResourceRecordSets", err)
		}
		// The listing starts at name and goes on in Route 53's order: keep only name's own records.
		var at []r53types.ResourceRecordSet
		for _, r := range out.ResourceRecordSets {
			if aws.ToString(r.Name) == cloud.FQDN(name) && (rrType == "" || r.Type == rrType) {
				at = append(at, r)
			}
		}
		return at, nil
	}
	var err error
	if st.AtName, err = list(hostname, ""); err != nil {
		return st, err
	}
	owner, err := list(cloud.OwnerRecordName(string(r53types.RRTypeCname), hostname), r53types.RRTypeTxt)
	if err != nil {
		return st, err
	}
	if len(owner) > 0 {
		st.Owner = &owner[0]
		st.OwnerCluster = cloud.OwnerOfRecord(recordValues(owner[0]))
	}
	return st, nil
}

// neutral is what the ownership decision needs to know (cloud.GatewayRecords).
func (r gatewayRecords) neutral(hostname string) cloud.GatewayRecords {
	g := cloud.GatewayRecords{Service: "Route 53", Zone: r.Zone.Name, Hostname: hostname, RecordType: string(r53types.RRTypeCname), HasOwner: r.Owner != nil}
	for _, rr := range r.AtName {
		g.Types = append(g.Types, string(rr.Type))
	}
	if r.Owner != nil {
		g.OwnerValues = recordValues(*r.Owner)
	}
	return g
}

// foreign says why the records at the gateway's name are not cluster's to change ("" when they are, or
// when there are none).
func (r gatewayRecords) foreign(cluster, hostname string) string {
	return r.neutral(hostname).Foreign(cluster)
}

// zoneStep finds the hosted zone of dns.domain and checks that the gateway's name is free or cluster's,
// in the first wave of create.
func zoneStep(c *Clients, cluster string, dns config.DNS) plan.Step {
	return &cloud.ZoneCheckStep{Step: "aws/dns-zone", Cluster: cluster, Find: func(ctx context.Context) (string, cloud.GatewayRecords, error) {
		zone, err := FindHostedZone(ctx, c.Route53, dns)
		if err != nil {
			return "", cloud.GatewayRecords{}, err
		}
		hostname := cloud.GatewayHostname(dns.Domain)
		records, err := readGatewayRecords(ctx, c.Route53, zone, hostname)
		return zone.ID, records.neutral(hostname), err
	}}
}

// RecordStep is the gateway's CNAME, metrics.DOMAIN → the load balancer's name, with its ownership TXT.
// target returns the load balancer's DNS name; an error of kind plan.NotFound while it has none. deps are
// the steps after which the load balancer exists (the Kubernetes step).
func RecordStep(c *Clients, cluster string, dns config.DNS, target func(context.Context) (string, error), deps ...string) plan.Step {
	return &recordStep{c: c, cluster: cluster, dns: dns, target: target, deps: append([]string{"aws/dns-zone"}, deps...)}
}

type recordStep struct {
	c       *Clients
	cluster string
	dns     config.DNS
	target  func(context.Context) (string, error)
	deps    []string
}

type recordState struct {
	Records gatewayRecords
	// Target is the load balancer's name, "" while unknown.
	Target string
	// ZoneProblem is why there is no zone to look in ("" when there is).
	ZoneProblem error
}

func (s *recordStep) Name() string        { return "aws/dns-record" }
func (s *recordStep) DependsOn() []string { return s.deps }

func (s *recordStep) hostname() string { return cloud.GatewayHostname(s.dns.Domain) }

func (s *recordStep) Observe(ctx context.Context) (plan.Observation, error) {
	var st recordState
	zone, err := FindHostedZone(ctx, s.c.Route53, s.dns)
	if err != nil {
		if plan.Retryable(err) {
			return plan.Observation{}, err
		}
		return plan.Observation{Detail: recordState{ZoneProblem: err}}, nil
	}
	if st.Records, err = readGatewayRecords(ctx, s.c.Route53, zone, s.hostname()); err != nil {
		return plan.Observation{}, err
	}
	// The load balancer's name, when the cluster can tell: destroy and status also run without it.
	st.Target, _ = s.target(ctx)
	ours := st.Records.OwnerCluster == s.cluster
	return plan.Observation{Exists: ours, ID: zone.ID + "/" + s.hostname(), Detail: st}, nil
}

// desiredCNAME is the gateway's record for target.
func (s *recordStep) desiredCNAME(target string) r53types.ResourceRecordSet {
	return r53types.ResourceRecordSet{Name: aws.String(cloud.FQDN(s.hostname())), Type: r53types.RRTypeCname, TTL: aws.Int64(recordTTL),
		ResourceRecords: []r53types.ResourceRecord{{Value: aws.String(target)}}}
}

// upToDate says whether the records at the gateway's name are exactly the CNAME to target.
func upToDate(at []r53types.ResourceRecordSet, want r53types.ResourceRecordSet) bool {
	return len(at) == 1 && at[0].Type == want.Type && aws.ToInt64(at[0].TTL) == aws.ToInt64(want.TTL) && at[0].AliasTarget == nil &&
		slices.Equal(recordValues(at[0]), recordValues(want))
}

func (s *recordStep) Plan(obs plan.Observation) plan.Change {
	st := obs.Detail.(recordState)
	target := st.Target
	if target == "" {
		target = "the gateway's load balancer, once it has a name"
	}
	records := fmt.Sprintf("CNAME %s → %s (TTL %d), TXT %s %s", s.hostname(), target, recordTTL,
		cloud.OwnerRecordName("CNAME", s.hostname()), cloud.OwnerRecordValue(s.cluster))
	switch {
	case st.ZoneProblem != nil:
		return plan.Change{Action: plan.Create, Diff: []string{"BLOCKED: " + st.ZoneProblem.Error()}, Desired: st}
	case st.Records.foreign(s.cluster, s.hostname()) != "":
		return plan.Change{Action: plan.Create, Diff: []string{"BLOCKED: " + st.Records.foreign(s.cluster, s.hostname())}, Desired: st}
	case !obs.Exists:
		return plan.Change{Action: plan.Create, Diff: []string{records + " in zone " + st.Records.Zone.Name + " (" + st.Records.Zone.ID + ")"}, Desired: st}
	case st.Target != "" && !upToDate(st.Records.AtName, s.desiredCNAME(st.Target)):
		return plan.Change{Action: plan.Update, Diff: []string{records}, Desired: st}
	}
	return plan.NoChange()
}

func (s *recordStep) Apply(ctx context.Context, c plan.Change) error {
	st := c.Desired.(recordState)
	if c.Action == plan.Delete {
		return deleteGatewayRecords(ctx, s.c.Route53, st.Records, s.cluster, s.hostname())
	}
	switch {
	case st.ZoneProblem != nil:
		return st.ZoneProblem
	case st.Records.foreign(s.cluster, s.hostname()) != "":
		return st.Records.neutral(s.hostname()).Refusal("write "+s.hostname(), s.cluster)
	}
	target := st.Target
	if target == "" {
		var err error
		if target, err = s.target(ctx); err != nil {
			return err
		}
	}
	// One change batch, applied by Route 53 all or nothing. CREATE and exact DELETEs fail when the records
	// changed since Observe (InvalidChangeBatch, retried from Observe) instead of overwriting them.
	var changes []r53types.Change
	if st.Records.Owner == nil {
		changes = append(changes, r53types.Change{Action: r53types.ChangeActionCreate, ResourceRecordSet: &r53types.ResourceRecordSet{
			Name: aws.String(cloud.FQDN(cloud.OwnerRecordName("CNAME", s.hostname()))), Type: r53types.RRTypeTxt, TTL: aws.Int64(ownerTTL),
			ResourceRecords: []r53types.ResourceRecord{{Value: aws.String(cloud.OwnerRecordValue(s.cluster))}}}})
	}
	for _, r := range st.Records.AtName {
		changes = append(changes, r53types.Change{Action: r53types.ChangeActionDelete, ResourceRecordSet: &r})
	}
	want := s.desiredCNAME(target)
	changes = append(changes, r53types.Change{Action: r53types.ChangeActionCreate, ResourceRecordSet: &want})
	_, err := s.c.Route53.ChangeResourceRecordSets(ctx, &route53.ChangeResourceRecordSetsInput{HostedZoneId: aws.String(st.Records.Zone.ID),
		ChangeBatch: &r53types.ChangeBatch{Comment: aws.String("opstrace cluster " + s.cluster + ": the gateway's name"), Changes: changes}})
	return classify("write Route 53 records of "+s.hostname(), "route53:ChangeResourceRecordSets", err)
}

func (s *recordStep) PlanDestroy(obs plan.Observation) plan.Change {
	st := obs.Detail.(recordState)
	if st.ZoneProblem != nil {
		return plan.Change{Action: plan.NoOp, Diff: []string{"SKIPPED: the records of " + s.hostname() + " could not be looked up (" +
			st.ZoneProblem.Error() + "); if this cluster made them, they remain: delete them and the TXT record " +
			cloud.OwnerRecordName(string(r53types.RRTypeCname), s.hostname()) + " in Route 53"}}
	}
	if !obs.Exists {
		return plan.NoChange()
	}
	diff := []string{"delete TXT " + cloud.OwnerRecordName("CNAME", s.hostname())}
	for _, r := range st.Records.AtName {
		diff = append(diff, "delete "+string(r.Type)+" "+s.hostname())
	}
	return plan.Change{Action: plan.Delete, Diff: diff, Desired: st}
}

// deleteGatewayRecords deletes the records at hostname and their ownership TXT, exactly as read, in one
// batch; only when the TXT names cluster.
func deleteGatewayRecords(ctx context.Context, api Route53API, r gatewayRecords, cluster, hostname string) error {
	if r.OwnerCluster != cluster || r.Owner == nil {
		return nil
	}
	changes := []r53types.Change{{Action: r53types.ChangeActionDelete, ResourceRecordSet: r.Owner}}
	for _, rr := range r.AtName {
		changes = append(changes, r53types.Change{Action: r53types.ChangeActionDelete, ResourceRecordSet: &rr})
	}
	_, err := api.ChangeResourceRecordSets(ctx, &route53.ChangeResourceRecordSetsInput{HostedZoneId: aws.String(r.Zone.ID),
		ChangeBatch: &r53types.ChangeBatch{Comment: aws.String("opstrace cluster " + cluster + " destroyed"), Changes: changes}})
	return classify("delete Route 53 records of "+hostname, "route53:ChangeResourceRecordSets", err)
}

// certManagerRole is the IRSA role of cert-manager's controller: trusted only by its service account, and
// allowed only to read the zone's records and to write the TXT record of the DNS01 challenge of the
// gateway's name (route53:ChangeResourceRecordSets limited by its record-name and record-type condition
// keys), and to follow its changes.
func certManagerRole(c *Clients, cluster string, dns config.DNS) *roleStep {
	return &roleStep{c: c, cluster: cluster, step: "aws/cert-manager-role", role: CertManagerRoleName(cluster), inline: "route53",
		deps: []string{"aws/oidc-provider", "aws/dns-zone"},
		desired: func(ctx context.Context) (string, string, bool, error) {
			zone, err := FindHostedZone(ctx, c.Route53, dns)
			if err != nil {
				// Not ready: create stops at aws/dns-zone first, and destroy needs no policy.
				return "", "", false, nil
			}
			return irsaTrust(c, cluster, cloud.CertManagerNamespace, cloud.CertManagerServiceAccount,
				route53Policy(zone.ID, cloud.GatewayHostname(dns.Domain)).String())(ctx)
		}}
}

// route53Policy is what cert-manager needs to answer DNS01 challenges for hostname in zone, and no more.
func route53Policy(zone, hostname string) policyDoc {
	zoneARN := "arn:aws:route53:::hostedzone/" + zone
	return policyDoc{Version: "2012-10-17", Statement: []statement{
		{Effect: "Allow", Action: []string{"route53:GetChange"}, Resource: []string{"arn:aws:route53:::change/*"}},
		{Effect: "Allow", Action: []string{"route53:ListResourceRecordSets"}, Resource: []string{zoneARN}},
		{Effect: "Allow", Action: []string{"route53:ChangeResourceRecordSets"}, Resource: []string{zoneARN},
			Condition: map[string]map[string]string{"ForAllValues:StringEquals": {
				"route53:ChangeResourceRecordSetsNormalizedRecordNames": "_acme-challenge." + hostname,
				"route53:ChangeResourceRecordSetsRecordTypes":           "TXT",
			}}},
	}}
}

// dnsSteps are the steps of the dns config key: the zone check, and with a Let's Encrypt cert_issuer the
// IRSA role of cert-manager. The record itself needs the load balancer: RecordStep.
func dnsSteps(c *Clients, cluster string, cfg config.Config) []plan.Step {
	if cfg.DNS == nil {
		return nil
	}
	steps := []plan.Step{zoneStep(c, cluster, *cfg.DNS)}
	if cfg.CertIssuer == config.CertIssuerLetsEncryptProd || cfg.CertIssuer == config.CertIssuerLetsEncryptStaging {
		steps = append(steps, certManagerRole(c, cluster, *cfg.DNS))
	}
	return steps
}

// findRecords lists the gateway records of every cluster (cluster "") or of one, by their ownership TXT,
// in every public hosted zone: what list and destroy's sweep see. A record's ID is "ZONE/HOSTNAME".
func findRecords(ctx context.Context, api Route53API, add func(owner, kind, id string)) error {
	in := &route53.ListHostedZonesInput{}
	for {
		zones, err := api.ListHostedZones(ctx, in)
		if err != nil {
			return classify("list Route 53 hosted zones", "route53:ListHostedZones", err)
		}
		for _, z := range zones.HostedZones {
			if z.Config != nil && z.Config.PrivateZone {
				continue
			}
			id := zoneID(aws.ToString(z.Id))
			list := &route53.ListResourceRecordSetsInput{HostedZoneId: aws.String(id)}
			for {
				out, err := api.ListResourceRecordSets(ctx, list)
				if err != nil {
					return classify("list Route 53 records of zone "+aws.ToString(z.Name), "route53:ListResourceRecordSets", err)
				}
				for _, r := range out.ResourceRecordSets {
					name := strings.TrimSuffix(aws.ToString(r.Name), ".")
					if r.Type == r53types.RRTypeTxt && strings.HasPrefix(name, "cname-") {
						add(cloud.OwnerOfRecord(recordValues(r)), kindRecord, id+"/"+strings.TrimPrefix(name, "cname-"))
					}
				}
				if !out.IsTruncated {
					break
				}
				list.StartRecordName, list.StartRecordType, list.StartRecordIdentifier = out.NextRecordName, out.NextRecordType, out.NextRecordIdentifier
			}
		}
		if !zones.IsTruncated {
			return nil
		}
		in.Marker = zones.NextMarker
	}
}

const kindRecord = "route53:record"

// deleteRecord is the sweep's delete of a "ZONE/HOSTNAME" found by findRecords.
func deleteRecord(ctx context.Context, api Route53API, cluster, id string) error {
	zone, hostname, _ := strings.Cut(id, "/")
	records, err := readGatewayRecords(ctx, api, HostedZone{ID: zone, Name: zone}, hostname)
	if err != nil {
		return err
	}
	return deleteGatewayRecords(ctx, api, records, cluster, hostname)
}
