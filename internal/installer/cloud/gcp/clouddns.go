package gcp

// The gateway's DNS name in Cloud DNS (config key dns): the managed zone of dns.domain in the cluster's
// project, an A record from metrics.DOMAIN to the gateway's load balancer IP, and the Google service account
// with which cert-manager answers Let's Encrypt's DNS01 challenges in that zone.
//
// DNS records carry no labels. Ownership is a TXT record beside the A record, as external-dns does it: at
// a-metrics.DOMAIN with the value "opstrace.io/cluster=NAME" (cloud.OwnerTag, the same mark as on AWS). A
// record at the gateway's name without that TXT is someone else's: never changed or deleted, and create
// says how to fix it.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	dns "google.golang.org/api/dns/v1"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

// RoleDNSAdmin is what cert-manager's service account holds on the managed zone, and nowhere else: the
// narrowest predefined role with dns.changes.create and dns.resourceRecordSets.create/delete, grantable on a
// single zone. (A custom role could drop the zone-administration permissions too, at the cost of a
// project-level resource that IAM keeps for weeks after deletion.)
const RoleDNSAdmin = "roles/dns.admin"

// RoleCertManager is the service account role name of cert-manager.
const RoleCertManager = "cert-manager"

// Record settings: clients follow a new load balancer within a minute; the ownership record never changes.
const (
	recordTTL = 60
	ownerTTL  = 300
)

// ManagedZone is the public Cloud DNS zone the gateway's name is made in.
type ManagedZone struct {
	Name    string // the zone's resource name, e.g. example-com
	DNSName string // without the trailing dot
}

// FindManagedZone is the public managed zone of the gateway's name in project: dns.hosted_zone when set
// (checked to be public and to contain the name), else the public zone of dns.domain or its nearest parent.
// Problems a user fixes are plan.Other errors that say how; the lookup is not retried.
func FindManagedZone(ctx context.Context, api DNSAPI, project string, d config.DNS) (ManagedZone, error) {
	hostname := cloud.GatewayHostname(d.Domain)
	if d.HostedZone != "" {
		z, err := api.GetManagedZone(ctx, project, d.HostedZone)
		if isNotFound(err) {
			return ManagedZone{}, plan.Errorf(plan.Other, "find Cloud DNS zone "+d.HostedZone,
				fmt.Errorf("dns.hosted_zone %s is not a managed zone of project %s: set it to the name of the public zone of %s, or remove it to look the zone up by name", d.HostedZone, project, d.Domain))
		}
		if err != nil {
			return ManagedZone{}, classify("read Cloud DNS zone "+d.HostedZone, "dns.managedZones.get", err)
		}
		zone := ManagedZone{Name: z.Name, DNSName: strings.TrimSuffix(z.DnsName, ".")}
		switch {
		case z.Visibility == "private":
			return ManagedZone{}, plan.Errorf(plan.Other, "use Cloud DNS zone "+d.HostedZone,
				fmt.Errorf("dns.hosted_zone %s (%s) is a private zone: clients and Let's Encrypt resolve %s on the internet; set it to a public zone", d.HostedZone, zone.DNSName, hostname))
		case !cloud.InZone(hostname, zone.DNSName):
			return ManagedZone{}, plan.Errorf(plan.Other, "use Cloud DNS zone "+d.HostedZone,
				fmt.Errorf("dns.hosted_zone %s is the zone of %s, which does not contain %s: set it to the zone of %s, or remove it to look the zone up by name", d.HostedZone, zone.DNSName, hostname, d.Domain))
		}
		return zone, nil
	}
	for name := strings.TrimSuffix(d.Domain, "."); strings.Count(name, ".") >= 1; name = name[strings.Index(name, ".")+1:] {
		zones, err := api.ListManagedZones(ctx, project, cloud.FQDN(name))
		if err != nil {
			return ManagedZone{}, classify("find the Cloud DNS zone of "+name, "dns.managedZones.list", err)
		}
		var public []ManagedZone
		for _, z := range zones {
			if z.Visibility != "private" && cloud.FQDN(z.DnsName) == cloud.FQDN(name) {
				public = append(public, ManagedZone{Name: z.Name, DNSName: name})
			}
		}
		switch len(public) {
		case 0:
			continue
		case 1:
			return public[0], nil
		}
		names := make([]string, len(public))
		for i, z := range public {
			names[i] = z.Name
		}
		return ManagedZone{}, plan.Errorf(plan.Other, "find the Cloud DNS zone of "+name,
			fmt.Errorf("%d public managed zones of project %s are for %s (%s): set dns.hosted_zone to the one its domain is delegated to", len(public), project, name, strings.Join(names, ", ")))
	}
	return ManagedZone{}, plan.Errorf(plan.Other, "find the Cloud DNS zone of "+d.Domain,
		fmt.Errorf("no public Cloud DNS zone of %s or a parent domain in project %s: create one and delegate the domain to its name servers, or set dns.hosted_zone", d.Domain, project))
}

// gatewayRecords are the records at the gateway's name and its ownership TXT, as Cloud DNS has them.
type gatewayRecords struct {
	Zone ManagedZone
	// AtName are the record sets at the gateway's name, of any type.
	AtName []*dns.ResourceRecordSet
	// Owner is the ownership TXT record set (nil when there is none), and OwnerCluster the cluster it names.
	Owner        *dns.ResourceRecordSet
	OwnerCluster string
}

func readGatewayRecords(ctx context.Context, api DNSAPI, project string, zone ManagedZone, hostname string) (gatewayRecords, error) {
	r := gatewayRecords{Zone: zone}
	var err error
	if r.AtName, err = api.ListRecordSets(ctx, project, zone.Name, cloud.FQDN(hostname), ""); err != nil {
		return r, classify("list Cloud DNS records "+hostname+" in zone "+zone.Name, "dns.resourceRecordSets.list", err)
	}
	owner, err := api.ListRecordSets(ctx, project, zone.Name, cloud.FQDN(cloud.OwnerRecordName("A", hostname)), "TXT")
	if err != nil {
		return r, classify("list Cloud DNS records "+cloud.OwnerRecordName("A", hostname)+" in zone "+zone.Name, "dns.resourceRecordSets.list", err)
	}
	if len(owner) > 0 {
		r.Owner, r.OwnerCluster = owner[0], cloud.OwnerOfRecord(owner[0].Rrdatas)
	}
	return r, nil
}

// neutral is what the ownership decision needs to know (cloud.GatewayRecords).
func (r gatewayRecords) neutral(hostname string) cloud.GatewayRecords {
	g := cloud.GatewayRecords{Service: "Cloud DNS", Zone: r.Zone.Name, Hostname: hostname, RecordType: "A", HasOwner: r.Owner != nil}
	for _, rr := range r.AtName {
		g.Types = append(g.Types, rr.Type)
	}
	if r.Owner != nil {
		g.OwnerValues = r.Owner.Rrdatas
	}
	return g
}

// foreign says why the records at the gateway's name are not cluster's to change ("" when they are, or
// when there are none).
func (r gatewayRecords) foreign(cluster, hostname string) string {
	return r.neutral(hostname).Foreign(cluster)
}

// zoneStep finds the managed zone of dns.domain and checks that the gateway's name is free or cluster's,
// in the first wave of create.
func zoneStep(c *Clients, cluster string, d config.DNS) plan.Step {
	return &cloud.ZoneCheckStep{Step: "gcp/dns-zone", Cluster: cluster, Find: func(ctx context.Context) (string, cloud.GatewayRecords, error) {
		zone, err := FindManagedZone(ctx, c.DNS, c.Project, d)
		if err != nil {
			return "", cloud.GatewayRecords{}, err
		}
		hostname := cloud.GatewayHostname(d.Domain)
		records, err := readGatewayRecords(ctx, c.DNS, c.Project, zone, hostname)
		return zone.Name, records.neutral(hostname), err
	}}
}

// RecordStep is the gateway's A record, metrics.DOMAIN → the load balancer's IP, with its ownership TXT.
// target returns the load balancer's IP; an error of kind plan.NotFound while it has none. deps are the
// steps after which the load balancer exists (the Kubernetes step).
func RecordStep(c *Clients, cluster string, d config.DNS, target func(context.Context) (string, error), deps ...string) plan.Step {
	return &recordStep{c: c, cluster: cluster, dns: d, target: target, deps: append([]string{"gcp/dns-zone"}, deps...)}
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
	// Target is the load balancer's IP, "" while unknown.
	Target string
	// ZoneProblem is why there is no zone to look in (nil when there is).
	ZoneProblem error
}

func (s *recordStep) Name() string        { return "gcp/dns-record" }
func (s *recordStep) DependsOn() []string { return s.deps }
func (s *recordStep) hostname() string    { return cloud.GatewayHostname(s.dns.Domain) }

func (s *recordStep) Observe(ctx context.Context) (plan.Observation, error) {
	zone, err := FindManagedZone(ctx, s.c.DNS, s.c.Project, s.dns)
	if err != nil {
		if plan.Retryable(err) {
			return plan.Observation{}, err
		}
		return plan.Observation{Detail: recordState{ZoneProblem: err}}, nil
	}
	var st recordState
	if st.Records, err = readGatewayRecords(ctx, s.c.DNS, s.c.Project, zone, s.hostname()); err != nil {
		return plan.Observation{}, err
	}
	// The load balancer's IP, when the cluster can tell: destroy and status also run without it.
	st.Target, _ = s.target(ctx)
	return plan.Observation{Exists: st.Records.OwnerCluster == s.cluster, ID: zone.Name + "/" + s.hostname(), Detail: st}, nil
}

func (s *recordStep) desiredA(ip string) *dns.ResourceRecordSet {
	return &dns.ResourceRecordSet{Name: cloud.FQDN(s.hostname()), Type: "A", Ttl: recordTTL, Rrdatas: []string{ip}}
}

func sameRecordSet(a, b *dns.ResourceRecordSet) bool {
	return cloud.FQDN(a.Name) == cloud.FQDN(b.Name) && a.Type == b.Type && a.Ttl == b.Ttl && a.RoutingPolicy == nil && b.RoutingPolicy == nil &&
		slices.Equal(a.Rrdatas, b.Rrdatas)
}

func (s *recordStep) Plan(obs plan.Observation) plan.Change {
	st := obs.Detail.(recordState)
	target := st.Target
	if target == "" {
		target = "the gateway's load balancer, once it has an IP"
	}
	records := fmt.Sprintf("A %s → %s (TTL %d), TXT %s %s", s.hostname(), target, recordTTL, cloud.OwnerRecordName("A", s.hostname()), cloud.OwnerRecordValue(s.cluster))
	switch {
	case st.ZoneProblem != nil:
		return plan.Change{Action: plan.Create, Diff: []string{"BLOCKED: " + st.ZoneProblem.Error()}, Desired: st}
	case st.Records.foreign(s.cluster, s.hostname()) != "":
		return plan.Change{Action: plan.Create, Diff: []string{"BLOCKED: " + st.Records.foreign(s.cluster, s.hostname())}, Desired: st}
	case !obs.Exists:
		return plan.Change{Action: plan.Create, Diff: []string{records + " in zone " + st.Records.Zone.Name + " (" + st.Records.Zone.DNSName + ")"}, Desired: st}
	case st.Target != "" && !(len(st.Records.AtName) == 1 && sameRecordSet(st.Records.AtName[0], s.desiredA(st.Target))):
		return plan.Change{Action: plan.Update, Diff: []string{records}, Desired: st}
	}
	return plan.NoChange()
}

func (s *recordStep) Apply(ctx context.Context, c plan.Change) error {
	st := c.Desired.(recordState)
	if c.Action == plan.Delete {
		return deleteGatewayRecords(ctx, s.c, st.Records, s.cluster, s.hostname())
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
	// One change, applied by Cloud DNS all or nothing: additions of existing records and deletions that no
	// longer match exactly fail (Conflict, retried from Observe) instead of overwriting a change made since.
	change := &dns.Change{Additions: []*dns.ResourceRecordSet{s.desiredA(target)}, Deletions: st.Records.AtName}
	if st.Records.Owner == nil {
		change.Additions = append([]*dns.ResourceRecordSet{{Name: cloud.FQDN(cloud.OwnerRecordName("A", s.hostname())), Type: "TXT", Ttl: ownerTTL,
			Rrdatas: []string{cloud.OwnerRecordValue(s.cluster)}}}, change.Additions...)
	}
	return classify("write Cloud DNS records of "+s.hostname(), "dns.changes.create", s.c.DNS.CreateChange(ctx, s.c.Project, st.Records.Zone.Name, change))
}

func (s *recordStep) PlanDestroy(obs plan.Observation) plan.Change {
	st := obs.Detail.(recordState)
	if st.ZoneProblem != nil {
		return plan.Change{Action: plan.NoOp, Diff: []string{"SKIPPED: the records of " + s.hostname() + " could not be looked up (" +
			st.ZoneProblem.Error() + "); if this cluster made them, they remain: delete them and the TXT record " +
			cloud.OwnerRecordName("A", s.hostname()) + " in Cloud DNS"}}
	}
	if !obs.Exists {
		return plan.NoChange()
	}
	diff := []string{"delete TXT " + cloud.OwnerRecordName("A", s.hostname())}
	for _, r := range st.Records.AtName {
		diff = append(diff, "delete "+r.Type+" "+s.hostname())
	}
	return plan.Change{Action: plan.Delete, Diff: diff, Desired: st}
}

// deleteGatewayRecords deletes the records at hostname and their ownership TXT, exactly as read, in one
// change; only when the TXT names cluster.
func deleteGatewayRecords(ctx context.Context, c *Clients, r gatewayRecords, cluster, hostname string) error {
	if r.OwnerCluster != cluster || r.Owner == nil {
		return nil
	}
	change := &dns.Change{Deletions: append([]*dns.ResourceRecordSet{r.Owner}, r.AtName...)}
	return classify("delete Cloud DNS records of "+hostname, "dns.changes.create", c.DNS.CreateChange(ctx, c.Project, r.Zone.Name, change))
}

// zoneGrant is RoleDNSAdmin on the managed zone of the gateway's name, and on no other zone or project.
type zoneGrant struct {
	c   *Clients
	dns config.DNS
}

func (g zoneGrant) describe() string {
	return RoleDNSAdmin + " on the Cloud DNS zone of " + g.dns.Domain + " only (DNS01 challenges of " + cloud.GatewayHostname(g.dns.Domain) + ")"
}
func (g zoneGrant) dependsOn() string { return "gcp/dns-zone" }

func zoneResource(project, zone string) string {
	return "projects/" + project + "/managedZones/" + zone
}

// policy reads the zone's IAM policy; ok is false when the zone cannot be found (create stops at
// gcp/dns-zone first; destroy has nothing to unbind there).
func (g zoneGrant) policy(ctx context.Context) (zone ManagedZone, p *dns.GoogleIamV1Policy, ok bool, err error) {
	zone, err = FindManagedZone(ctx, g.c.DNS, g.c.Project, g.dns)
	if err != nil {
		if plan.Retryable(err) {
			return zone, nil, false, err
		}
		return zone, nil, false, nil
	}
	p, err = g.c.DNS.ZonePolicy(ctx, g.c.Project, zone.Name)
	if err != nil {
		return zone, nil, false, classify("read IAM policy of Cloud DNS zone "+zone.Name, "dns.managedZones.getIamPolicy", err)
	}
	return zone, p, true, nil
}

func zoneMembers(p *dns.GoogleIamV1Policy, role string) []string {
	for _, b := range p.Bindings {
		if b.Role == role && b.Condition == nil {
			return b.Members
		}
	}
	return nil
}

func setZoneMembers(p *dns.GoogleIamV1Policy, role string, members []string) {
	for i, b := range p.Bindings {
		if b.Role == role && b.Condition == nil {
			if len(members) == 0 {
				p.Bindings = slices.Delete(p.Bindings, i, i+1)
			} else {
				b.Members = members
			}
			return
		}
	}
	if len(members) > 0 {
		p.Bindings = append(p.Bindings, &dns.GoogleIamV1Binding{Role: role, Members: members})
	}
}

func (g zoneGrant) bound(ctx context.Context, member string) (bool, error) {
	_, p, ok, err := g.policy(ctx)
	return ok && slices.Contains(zoneMembers(p, RoleDNSAdmin), member), err
}

// bind adds member to the zone's policy; the write carries the read policy's etag, so a concurrent change
// makes it fail (Conflict, retried from Observe) instead of being overwritten.
func (g zoneGrant) bind(ctx context.Context, member string) error {
	zone, p, ok, err := g.policy(ctx)
	if err != nil {
		return err
	}
	if !ok {
		return plan.Errorf(plan.Other, "grant "+RoleDNSAdmin+" on the Cloud DNS zone of "+g.dns.Domain, errors.New("the zone was not found: see gcp/dns-zone"))
	}
	if slices.Contains(zoneMembers(p, RoleDNSAdmin), member) {
		return nil
	}
	setZoneMembers(p, RoleDNSAdmin, append(slices.Clone(zoneMembers(p, RoleDNSAdmin)), member))
	return classify("grant "+RoleDNSAdmin+" on Cloud DNS zone "+zone.Name, "dns.managedZones.setIamPolicy", g.c.DNS.SetZonePolicy(ctx, g.c.Project, zone.Name, p))
}

// unbind removes member from the zone's policy, which outlives the cluster.
func (g zoneGrant) unbind(ctx context.Context, member string) error {
	zone, p, ok, err := g.policy(ctx)
	if err != nil || !ok || !slices.Contains(zoneMembers(p, RoleDNSAdmin), member) {
		return err
	}
	setZoneMembers(p, RoleDNSAdmin, slices.DeleteFunc(slices.Clone(zoneMembers(p, RoleDNSAdmin)), func(m string) bool { return m == member }))
	return classify("remove "+member+" from Cloud DNS zone "+zone.Name, "dns.managedZones.setIamPolicy", g.c.DNS.SetZonePolicy(ctx, g.c.Project, zone.Name, p))
}

// dnsSteps are the steps of the dns config key: the zone check, and with a Let's Encrypt cert_issuer the
// service account of cert-manager. The record itself needs the load balancer: RecordStep.
func dnsSteps(c *Clients, cluster string, cfg config.Config) []plan.Step {
	if cfg.DNS == nil {
		return nil
	}
	steps := []plan.Step{zoneStep(c, cluster, *cfg.DNS)}
	if cfg.CertIssuer == config.CertIssuerLetsEncryptProd || cfg.CertIssuer == config.CertIssuerLetsEncryptStaging {
		steps = append(steps, &identityStep{c: c, cluster: cluster, step: "gcp/cert-manager-identity", role: RoleCertManager,
			namespace: cloud.CertManagerNamespace, ksa: cloud.CertManagerServiceAccount, grant: zoneGrant{c: c, dns: *cfg.DNS}})
	}
	return steps
}

const kindRecord = "clouddns:record"

// findRecords lists the gateway records of every cluster by their ownership TXT, in every public managed
// zone of the project: what list and destroy's sweep see. A record's ID is "ZONE/HOSTNAME".
func findRecords(ctx context.Context, c *Clients, add func(owner, kind, id string)) error {
	zones, err := c.DNS.ListManagedZones(ctx, c.Project, "")
	if err != nil {
		return classify("list Cloud DNS zones", "dns.managedZones.list", err)
	}
	for _, z := range zones {
		if z.Visibility == "private" {
			continue
		}
		records, err := c.DNS.ListRecordSets(ctx, c.Project, z.Name, "", "")
		if err != nil {
			return classify("list Cloud DNS records of zone "+z.Name, "dns.resourceRecordSets.list", err)
		}
		for _, r := range records {
			name := strings.TrimSuffix(r.Name, ".")
			if r.Type == "TXT" && strings.HasPrefix(name, "a-") {
				add(cloud.OwnerOfRecord(r.Rrdatas), kindRecord, z.Name+"/"+strings.TrimPrefix(name, "a-"))
			}
		}
	}
	return nil
}

// deleteRecord is the sweep's delete of a "ZONE/HOSTNAME" found by findRecords.
func deleteRecord(ctx context.Context, c *Clients, cluster, id string) error {
	zone, hostname, _ := strings.Cut(id, "/")
	records, err := readGatewayRecords(ctx, c.DNS, c.Project, ManagedZone{Name: zone}, hostname)
	if err != nil {
		return err
	}
	return deleteGatewayRecords(ctx, c, records, cluster, hostname)
}
