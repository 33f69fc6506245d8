package cloud

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/opstrace/opstrace/internal/installer/plan"
)

// DNS records carry no tags or labels. A cluster's record at a name is marked as external-dns does it: by
// a TXT record beside it, at "<type>-<name>" (a CNAME may not share its name with another record), whose
// value is "opstrace.io/cluster=NAME". A record without that TXT is someone else's: never changed or
// deleted.

// OwnerRecordName is the name of the ownership TXT of a record of type rrType (e.g. "CNAME") at name.
func OwnerRecordName(rrType, name string) string { return strings.ToLower(rrType) + "-" + name }

// OwnerRecordValue is the ownership TXT's value for cluster, quoted as DNS TXT strings are.
func OwnerRecordValue(cluster string) string { return `"` + OwnerTag + "=" + cluster + `"` }

// OwnerOfRecord returns the cluster an ownership TXT's values name, "" for none.
func OwnerOfRecord(values []string) string {
	const prefix = `"` + OwnerTag + "="
	for _, v := range values {
		if strings.HasPrefix(v, prefix) && strings.HasSuffix(v, `"`) && len(v) > len(prefix)+1 {
			return v[len(prefix) : len(v)-1]
		}
	}
	return ""
}

// FQDN is name in lowercase with the trailing dot, as DNS APIs spell record names.
func FQDN(name string) string { return strings.TrimSuffix(strings.ToLower(name), ".") + "." }

// InZone says whether name is the DNS zone's apex or below it.
func InZone(name, zone string) bool {
	name, zone = strings.TrimSuffix(name, "."), strings.TrimSuffix(zone, ".")
	return name == zone || strings.HasSuffix(name, "."+zone)
}

// GatewayRecords is what a DNS service has at the gateway's name, for the ownership decision.
type GatewayRecords struct {
	Service  string // "Route 53" or "Cloud DNS"
	Zone     string // the zone's name, for messages
	Hostname string
	// RecordType is the type of the gateway's record: its ownership TXT is at OwnerRecordName(RecordType, Hostname).
	RecordType string
	// Types are the types of the record sets at Hostname.
	Types []string
	// OwnerValues are the values of the ownership TXT; HasOwner says whether there is one.
	OwnerValues []string
	HasOwner    bool
}

// Foreign says why the records at the gateway's name are not cluster's to change: "" when they are, or
// when there are none.
func (r GatewayRecords) Foreign(cluster string) string {
	ownerName := OwnerRecordName(r.RecordType, r.Hostname)
	switch owner := OwnerOfRecord(r.OwnerValues); {
	case owner == cluster:
		return ""
	case owner != "":
		return fmt.Sprintf("the %s records of %s belong to the Opstrace cluster %s (TXT %s %s)", r.Service, r.Hostname, owner, ownerName, OwnerRecordValue(owner))
	case r.HasOwner:
		return fmt.Sprintf("%s has a TXT record %s (%s) that is not %s", r.Service, ownerName, strings.Join(r.OwnerValues, " "), OwnerRecordValue(cluster))
	case len(r.Types) > 0:
		return fmt.Sprintf("%s has a %s record %s in zone %s without the TXT record %s %s that would make it this cluster's",
			r.Service, strings.Join(r.Types, "+"), r.Hostname, r.Zone, ownerName, OwnerRecordValue(cluster))
	}
	return ""
}

// Refusal is the error for records at the gateway's name that are not cluster's (nil when they are), with
// how to fix it: the records a user made by hand for an earlier version of opstrace can be handed over.
func (r GatewayRecords) Refusal(op, cluster string) error {
	why := r.Foreign(cluster)
	if why == "" {
		return nil
	}
	return &plan.Error{Kind: plan.NotOwned, Op: op, Err: errors.New(why),
		Hint: "opstrace never changes DNS records it did not create: delete that record if it is unused, or choose another dns.domain; " +
			"to hand it to this cluster instead, add the TXT record " + OwnerRecordName(r.RecordType, r.Hostname) + " " + OwnerRecordValue(cluster)}
}

// ZoneCheckStep finds the DNS zone of dns.domain and checks that the gateway's name is free or Cluster's.
// It makes nothing: it has no dependencies, so that a missing zone or a foreign record stops create in its
// first wave instead of after the Kubernetes cluster. Destroy ignores it: nothing it found keeps a cluster
// from being deleted.
type ZoneCheckStep struct {
	Step    string
	Cluster string
	// Find returns the zone's ID and what is at the gateway's name there. A retryable error
	// (plan.Retryable) is retried; any other is the problem the plan shows and Apply returns.
	Find func(ctx context.Context) (zone string, records GatewayRecords, err error)
}

type zoneCheck struct{ Problem error }

func (s *ZoneCheckStep) Name() string        { return s.Step }
func (s *ZoneCheckStep) DependsOn() []string { return nil }

func (s *ZoneCheckStep) Observe(ctx context.Context) (plan.Observation, error) {
	zone, records, err := s.Find(ctx)
	switch {
	case err != nil && plan.Retryable(err):
		return plan.Observation{}, err
	case err == nil:
		err = records.Refusal("use "+records.Hostname, s.Cluster)
	}
	return plan.Observation{Exists: zone != "", ID: zone, Detail: zoneCheck{Problem: err}}, nil
}

func (s *ZoneCheckStep) Plan(obs plan.Observation) plan.Change {
	if st := obs.Detail.(zoneCheck); st.Problem != nil {
		return plan.Change{Action: plan.Update, Diff: []string{"BLOCKED: " + st.Problem.Error()}, Desired: st}
	}
	return plan.NoChange()
}

// Apply fails with the problem Observe found: there is nothing else to do.
func (s *ZoneCheckStep) Apply(_ context.Context, c plan.Change) error {
	if st, ok := c.Desired.(zoneCheck); ok {
		return st.Problem
	}
	return nil
}

// PlanDestroy leaves the zone alone: it is the user's.
func (s *ZoneCheckStep) PlanDestroy(plan.Observation) plan.Change { return plan.NoChange() }
