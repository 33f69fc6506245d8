package aws

// An in-memory Route 53 at the narrow Route53API: hosted zones and record sets, listed in Route 53's order
// (names by reversed labels, then type) with pagination, and change batches applied all or nothing with
// Route 53's rules: CREATE of an existing record set, DELETE of one that does not match exactly, and a CNAME
// sharing its name with another record are InvalidChangeBatch. Every call is recorded like the other fakes'.

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	r53types "github.com/aws/aws-sdk-go-v2/service/route53/types"

	"github.com/opstrace/opstrace/internal/installer/cloud"
)

type fzone struct {
	name    string // with the trailing dot
	private bool
	records []r53types.ResourceRecordSet
}

type fakeRoute53 world

func (f *fakeRoute53) w() *world { return (*world)(f) }

// addZone adds a hosted zone to the fake account.
func (w *world) addZone(id, name string, private bool) {
	w.zones[id] = &fzone{name: cloud.FQDN(name), private: private}
}

// addRecord puts a record set straight into a zone, as someone else would.
func (w *world) addRecord(zone, name string, rrType r53types.RRType, values ...string) {
	r := r53types.ResourceRecordSet{Name: aws.String(cloud.FQDN(name)), Type: rrType, TTL: aws.Int64(300)}
	for _, v := range values {
		r.ResourceRecords = append(r.ResourceRecords, r53types.ResourceRecord{Value: aws.String(v)})
	}
	w.zones[zone].records = append(w.zones[zone].records, r)
}

// records lists a zone's record sets as "NAME TYPE TTL VALUE...", sorted.
func (w *world) records(zone string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, r := range w.zones[zone].records {
		out = append(out, fmt.Sprintf("%s %s %d %s", aws.ToString(r.Name), r.Type, aws.ToInt64(r.TTL), strings.Join(recordValues(r), " ")))
	}
	slices.Sort(out)
	return out
}

// orderKey sorts names as Route 53 does: by labels from the right.
func orderKey(name string, rrType r53types.RRType) string {
	labels := strings.Split(strings.TrimSuffix(name, "."), ".")
	slices.Reverse(labels)
	return strings.Join(labels, "\x00") + "\x01" + string(rrType)
}

func invalidBatch(msg string) error {
	return &r53types.InvalidChangeBatch{Message: aws.String(msg + " (simulated)")}
}

func (f *fakeRoute53) zone(id *string) (*fzone, error) {
	z := f.zones[zoneID(aws.ToString(id))]
	if z == nil {
		f.w().done(false)
		return nil, &r53types.NoSuchHostedZone{Message: aws.String("no hosted zone " + aws.ToString(id) + " (simulated)")}
	}
	return z, nil
}

func (z *fzone) view(id string) r53types.HostedZone {
	return r53types.HostedZone{Id: aws.String("/hostedzone/" + id), Name: aws.String(z.name),
		Config: &r53types.HostedZoneConfig{PrivateZone: z.private}}
}

func (f *fakeRoute53) GetHostedZone(_ context.Context, in *route53.GetHostedZoneInput, _ ...func(*route53.Options)) (*route53.GetHostedZoneOutput, error) {
	if err := f.w().call("route53:GetHostedZone", in); err != nil {
		return nil, err
	}
	z, err := f.zone(in.Id)
	if err != nil {
		return nil, err
	}
	view := z.view(zoneID(aws.ToString(in.Id)))
	return &route53.GetHostedZoneOutput{HostedZone: &view}, f.w().done(false)
}

func (f *fakeRoute53) sortedZones() []string {
	ids := make([]string, 0, len(f.zones))
	for id := range f.zones {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b string) int {
		return strings.Compare(orderKey(f.zones[a].name, "")+a, orderKey(f.zones[b].name, "")+b)
	})
	return ids
}

func (f *fakeRoute53) ListHostedZones(_ context.Context, in *route53.ListHostedZonesInput, _ ...func(*route53.Options)) (*route53.ListHostedZonesOutput, error) {
	if err := f.w().call("route53:ListHostedZones", in); err != nil {
		return nil, err
	}
	out := &route53.ListHostedZonesOutput{}
	for _, id := range f.sortedZones() {
		out.HostedZones = append(out.HostedZones, f.zones[id].view(id))
	}
	return out, f.w().done(false)
}

func (f *fakeRoute53) ListHostedZonesByName(_ context.Context, in *route53.ListHostedZonesByNameInput, _ ...func(*route53.Options)) (*route53.ListHostedZonesByNameOutput, error) {
	if err := f.w().call("route53:ListHostedZonesByName", in); err != nil {
		return nil, err
	}
	out := &route53.ListHostedZonesByNameOutput{}
	start := orderKey(cloud.FQDN(aws.ToString(in.DNSName)), "")
	for _, id := range f.sortedZones() {
		if orderKey(f.zones[id].name, "") >= start && len(out.HostedZones) < int(aws.ToInt32(in.MaxItems)) {
			out.HostedZones = append(out.HostedZones, f.zones[id].view(id))
		}
	}
	return out, f.w().done(false)
}

func (f *fakeRoute53) ListResourceRecordSets(_ context.Context, in *route53.ListResourceRecordSetsInput, _ ...func(*route53.Options)) (*route53.ListResourceRecordSetsOutput, error) {
	if err := f.w().call("route53:ListResourceRecordSets", in); err != nil {
		return nil, err
	}
	z, err := f.zone(in.HostedZoneId)
	if err != nil {
		return nil, err
	}
	records := slices.Clone(z.records)
	slices.SortFunc(records, func(a, b r53types.ResourceRecordSet) int {
		return strings.Compare(orderKey(aws.ToString(a.Name), a.Type), orderKey(aws.ToString(b.Name), b.Type))
	})
	page := int(aws.ToInt32(in.MaxItems))
	if page == 0 {
		page = f.recordPage
	}
	var start string
	if in.StartRecordName != nil {
		start = orderKey(cloud.FQDN(aws.ToString(in.StartRecordName)), in.StartRecordType)
	}
	out := &route53.ListResourceRecordSetsOutput{}
	for _, r := range records {
		if orderKey(aws.ToString(r.Name), r.Type) < start {
			continue
		}
		if len(out.ResourceRecordSets) == page {
			out.IsTruncated, out.NextRecordName, out.NextRecordType = true, r.Name, r.Type
			break
		}
		out.ResourceRecordSets = append(out.ResourceRecordSets, r)
	}
	return out, f.w().done(false)
}

func sameRecordSet(a, b r53types.ResourceRecordSet) bool {
	return cloud.FQDN(aws.ToString(a.Name)) == cloud.FQDN(aws.ToString(b.Name)) && a.Type == b.Type && aws.ToInt64(a.TTL) == aws.ToInt64(b.TTL) &&
		slices.Equal(recordValues(a), recordValues(b))
}

func (f *fakeRoute53) ChangeResourceRecordSets(_ context.Context, in *route53.ChangeResourceRecordSetsInput, _ ...func(*route53.Options)) (*route53.ChangeResourceRecordSetsOutput, error) {
	if err := f.w().call("route53:ChangeResourceRecordSets", in); err != nil {
		return nil, err
	}
	z, err := f.zone(in.HostedZoneId)
	if err != nil {
		return nil, err
	}
	records := slices.Clone(z.records) // all or nothing: work on a copy
	find := func(name string, rrType r53types.RRType) int {
		return slices.IndexFunc(records, func(r r53types.ResourceRecordSet) bool {
			return cloud.FQDN(aws.ToString(r.Name)) == cloud.FQDN(name) && r.Type == rrType
		})
	}
	for _, c := range in.ChangeBatch.Changes {
		r := *c.ResourceRecordSet
		name := aws.ToString(r.Name)
		if !cloud.InZone(name, z.name) {
			f.w().done(false)
			return nil, invalidBatch(name + " is not in zone " + z.name)
		}
		i := find(name, r.Type)
		switch c.Action {
		case r53types.ChangeActionCreate, r53types.ChangeActionUpsert:
			if c.Action == r53types.ChangeActionCreate && i >= 0 {
				f.w().done(false)
				return nil, invalidBatch("Tried to create resource record set " + name + " type " + string(r.Type) + " but it already exists")
			}
			for _, other := range records {
				if cloud.FQDN(aws.ToString(other.Name)) == cloud.FQDN(name) && other.Type != r.Type && (r.Type == r53types.RRTypeCname || other.Type == r53types.RRTypeCname) {
					f.w().done(false)
					return nil, invalidBatch("RRSet of type CNAME with DNS name " + name + " is not permitted as it conflicts with other records with the same DNS name")
				}
			}
			if i >= 0 {
				records[i] = r
			} else {
				records = append(records, r)
			}
		case r53types.ChangeActionDelete:
			if i < 0 || !sameRecordSet(records[i], r) {
				f.w().done(false)
				return nil, invalidBatch("Tried to delete resource record set " + name + " type " + string(r.Type) + " but the values provided do not match the current values")
			}
			records = slices.Delete(records, i, i+1)
		}
	}
	z.records = records
	return &route53.ChangeResourceRecordSetsOutput{ChangeInfo: &r53types.ChangeInfo{Id: aws.String(f.w().id("change")), Status: r53types.ChangeStatusPending}}, f.w().done(true)
}
