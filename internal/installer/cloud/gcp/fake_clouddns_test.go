package gcp

// An in-memory Cloud DNS at the narrow DNSAPI: managed zones, record sets and each zone's IAM policy. A
// change is applied all or nothing with Cloud DNS's rules: an addition of an existing record set is 409
// alreadyExists, a deletion that does not match exactly is 412 conditionNotMet, a CNAME may not share its
// name; a policy write with a stale etag is 409. Every call is recorded like the other fakes'.

import (
	"context"
	"fmt"
	"slices"
	"strings"

	dns "google.golang.org/api/dns/v1"

	"github.com/opstrace/opstrace/internal/installer/cloud"
)

type fdnszone struct {
	zone    *dns.ManagedZone
	records []*dns.ResourceRecordSet
	policy  *dns.GoogleIamV1Policy
}

type fakeDNS world

func (f *fakeDNS) w() *world { return (*world)(f) }

// addZone adds a managed zone to the fake project.
func (w *world) addZone(name, dnsName, visibility string) {
	w.dnsZones[name] = &fdnszone{zone: &dns.ManagedZone{Name: name, DnsName: cloud.FQDN(dnsName), Visibility: visibility},
		policy: &dns.GoogleIamV1Policy{Etag: "etag-0", Bindings: []*dns.GoogleIamV1Binding{{Role: "roles/dns.reader", Members: []string{"group:dns-team@example.com"}}}}}
}

// addRecord puts a record set straight into a zone, as someone else would.
func (w *world) addRecord(zone, name, rrType string, values ...string) {
	w.dnsZones[zone].records = append(w.dnsZones[zone].records, &dns.ResourceRecordSet{Name: cloud.FQDN(name), Type: rrType, Ttl: 300, Rrdatas: values})
}

// records lists a zone's record sets as "NAME TYPE TTL VALUE...", sorted.
func (w *world) records(zone string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, r := range w.dnsZones[zone].records {
		out = append(out, fmt.Sprintf("%s %s %d %s", r.Name, r.Type, r.Ttl, strings.Join(r.Rrdatas, " ")))
	}
	slices.Sort(out)
	return out
}

// zoneBindings lists a zone's IAM bindings as "ROLE=MEMBER,...".
func (w *world) zoneBindings(zone string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, b := range w.dnsZones[zone].policy.Bindings {
		out = append(out, b.Role+"="+strings.Join(b.Members, ","))
	}
	return out
}

func cloneRecord(r *dns.ResourceRecordSet) *dns.ResourceRecordSet {
	c := *r
	c.Rrdatas = slices.Clone(r.Rrdatas)
	return &c
}

func clonePolicy(p *dns.GoogleIamV1Policy) *dns.GoogleIamV1Policy {
	c := *p
	c.Bindings = nil
	for _, b := range p.Bindings {
		c.Bindings = append(c.Bindings, &dns.GoogleIamV1Binding{Role: b.Role, Members: slices.Clone(b.Members), Condition: b.Condition})
	}
	return &c
}

func (f *fakeDNS) zone(name string) (*fdnszone, error) {
	z := f.dnsZones[name]
	if z == nil {
		f.w().done(false)
		return nil, httpErr(404, "notFound", "The 'parameters.managedZone' resource named '"+name+"' does not exist.")
	}
	return z, nil
}

func (f *fakeDNS) GetManagedZone(_ context.Context, project, zone string) (*dns.ManagedZone, error) {
	if err := f.w().call("dns:GetManagedZone", zone); err != nil {
		return nil, err
	}
	z, err := f.zone(zone)
	if err != nil {
		return nil, err
	}
	c := *z.zone
	return &c, f.w().done(false)
}

func (f *fakeDNS) ListManagedZones(_ context.Context, project, dnsName string) ([]*dns.ManagedZone, error) {
	if err := f.w().call("dns:ListManagedZones", dnsName); err != nil {
		return nil, err
	}
	var out []*dns.ManagedZone
	for _, z := range f.dnsZones {
		if dnsName == "" || z.zone.DnsName == dnsName {
			c := *z.zone
			out = append(out, &c)
		}
	}
	slices.SortFunc(out, func(a, b *dns.ManagedZone) int { return strings.Compare(a.Name, b.Name) })
	return out, f.w().done(false)
}

func (f *fakeDNS) ListRecordSets(_ context.Context, project, zone, name, rrType string) ([]*dns.ResourceRecordSet, error) {
	if err := f.w().call("dns:ListRecordSets", zone+" "+name+" "+rrType); err != nil {
		return nil, err
	}
	z, err := f.zone(zone)
	if err != nil {
		return nil, err
	}
	var out []*dns.ResourceRecordSet
	for _, r := range z.records {
		if (name == "" || r.Name == name) && (rrType == "" || r.Type == rrType) {
			out = append(out, cloneRecord(r))
		}
	}
	return out, f.w().done(false)
}

func (f *fakeDNS) CreateChange(_ context.Context, project, zone string, change *dns.Change) error {
	if err := f.w().call("dns:CreateChange", change); err != nil {
		return err
	}
	z, err := f.zone(zone)
	if err != nil {
		return err
	}
	records := slices.Clone(z.records) // all or nothing: work on a copy
	find := func(name, rrType string) int {
		return slices.IndexFunc(records, func(r *dns.ResourceRecordSet) bool { return r.Name == name && r.Type == rrType })
	}
	for _, d := range change.Deletions {
		i := find(d.Name, d.Type)
		if i < 0 || !sameRecordSet(records[i], d) {
			f.w().done(false)
			return httpErr(412, "conditionNotMet", "Precondition not met for 'entity.change.deletions["+d.Name+"]'")
		}
		records = slices.Delete(records, i, i+1)
	}
	for _, a := range change.Additions {
		if !cloud.InZone(a.Name, z.zone.DnsName) {
			f.w().done(false)
			return httpErr(400, "invalid", a.Name+" is not in zone "+z.zone.DnsName)
		}
		if find(a.Name, a.Type) >= 0 {
			f.w().done(false)
			return httpErr(409, "alreadyExists", "The resource 'entity.change.additions["+a.Name+"]' named '"+a.Name+" ("+a.Type+")' already exists")
		}
		for _, r := range records {
			if r.Name == a.Name && (r.Type == "CNAME" || a.Type == "CNAME") {
				f.w().done(false)
				return httpErr(400, "cnameResourceRecordSetConflict", "The resource record set 'entity.change.additions["+a.Name+"]' is invalid because a CNAME resource record set cannot share a name with another record set")
			}
		}
		records = append(records, cloneRecord(a))
	}
	z.records = records
	return f.w().done(true)
}

func (f *fakeDNS) ZonePolicy(_ context.Context, project, zone string) (*dns.GoogleIamV1Policy, error) {
	if err := f.w().call("dns:GetZonePolicy", zone); err != nil {
		return nil, err
	}
	z, err := f.zone(zone)
	if err != nil {
		return nil, err
	}
	return clonePolicy(z.policy), f.w().done(false)
}

func (f *fakeDNS) SetZonePolicy(_ context.Context, project, zone string, p *dns.GoogleIamV1Policy) error {
	if err := f.w().call("dns:SetZonePolicy", clonePolicy(p)); err != nil {
		return err
	}
	z, err := f.zone(zone)
	if err != nil {
		return err
	}
	if p.Etag != z.policy.Etag {
		f.w().done(false)
		return httpErr(409, "conflict", "There were concurrent policy changes.")
	}
	z.policy = clonePolicy(p)
	z.policy.Etag = fmt.Sprint("etag-", len(f.requests))
	return f.w().done(true)
}
