// Package cloud holds what the AWS and GCP installers share: the cluster name rules, the names of the
// resources, the owned tag, and the inventory that `destroy`'s sweep and `list` report.
//
// Every resource an install creates carries the owned tag (AWS) or label (GCP) naming the cluster. Steps
// find their resource by that tag; a resource with the expected name but without the tag belongs to someone
// else and is never changed or deleted.
package cloud

import (
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/opstrace/opstrace/internal/installer/config"
)

// OwnerTag is the AWS tag key on every resource of a cluster; its value is the cluster name.
const OwnerTag = "opstrace.io/cluster"

// OwnerLabel is the GCP label key on every resource of a cluster; its value is the cluster name. GCP label
// keys allow only lowercase letters, digits, '_' and '-', so OwnerTag is spelled with dashes.
const OwnerLabel = "opstrace-io-cluster"

// Namespace is the Kubernetes namespace of a cloud install's MetricsCluster: the cloud identities of its
// workloads (IRSA roles, GCP service accounts) trust the service accounts of this namespace only.
const Namespace = "opstrace"

// MaxNameLen is the longest cluster name: the name prefixes bucket, role and Kubernetes object names, and a
// MetricsCluster name has at most 30 characters.
const MaxNameLen = 30

var nameRE = regexp.MustCompile(`^[a-z]([a-z0-9-]*[a-z0-9])?$`)

// ValidateName checks a cluster name given on the command line.
func ValidateName(name string) error {
	if len(name) > MaxNameLen || !nameRE.MatchString(name) {
		return fmt.Errorf("cluster name %q is invalid: use 1 to %d lowercase letters, digits and '-', starting with a letter and ending with a letter or digit", name, MaxNameLen)
	}
	return nil
}

// ResourceName is the name of a cluster's resource of the given role, e.g. "opstrace-prod-vpc".
func ResourceName(cluster, role string) string { return "opstrace-" + cluster + "-" + role }

// GatewayHostname is the gateway's DNS name under the domain of the config key dns.
func GatewayHostname(domain string) string {
	return config.GatewayPrefix + strings.TrimSuffix(domain, ".")
}

// cert-manager, which a cloud install runs for a Let's Encrypt cert_issuer: its release's namespace and the
// service account of its controller, which the cloud identity for DNS01 challenges trusts.
const (
	CertManagerNamespace      = "cert-manager"
	CertManagerServiceAccount = "cert-manager"
)

// Bucket kinds.
const (
	BucketMetrics = "metrics"
	BucketLogs    = "logs"
)

// BucketName is the name of a cluster's bucket for metrics or logs. Bucket names are global in both
// clouds: a name taken by another account is reported by the bucket step with the fix.
func BucketName(cluster, kind string) string { return ResourceName(cluster, kind) }

// Resource is one cloud resource found by its owned tag.
type Resource struct {
	Kind string // e.g. "ec2:vpc", "s3:bucket"
	ID   string
}

func (r Resource) String() string { return r.Kind + " " + r.ID }

// SweepReport is what destroy's sweep did with the resources still tagged for the cluster.
type SweepReport struct {
	Removed []Resource
	// Left are the resources that could not be deleted, each with why.
	Left []Left
}

// Left is a resource the sweep could not delete.
type Left struct {
	Resource
	Err error
}

// String prints the report, one resource a line.
func (r SweepReport) String() string {
	var b strings.Builder
	if len(r.Removed) == 0 && len(r.Left) == 0 {
		return "sweep: nothing else was tagged for this cluster\n"
	}
	for _, res := range r.Removed {
		fmt.Fprintf(&b, "sweep: removed %s\n", res)
	}
	for _, l := range r.Left {
		fmt.Fprintf(&b, "sweep: LEFT %s: %v\n", l.Resource, l.Err)
	}
	return b.String()
}

// ClusterSummary is one cluster found by `list`: its name and the kinds of resources tagged for it.
type ClusterSummary struct {
	Name      string
	Resources []Resource
}

// Summarize groups resources by cluster name, sorted by name.
func Summarize(byCluster map[string][]Resource) []ClusterSummary {
	out := make([]ClusterSummary, 0, len(byCluster))
	for name, rs := range byCluster {
		sort.Slice(rs, func(i, j int) bool { return rs[i].String() < rs[j].String() })
		out = append(out, ClusterSummary{Name: name, Resources: rs})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
