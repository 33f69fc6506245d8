package aws

// aws.api_authorized_ip_ranges as the EKS public endpoint's publicAccessCidrs, against the in-memory fake
// EKS of fake_test.go (EKS cannot run offline): the tests assert the exact requests.

import (
	"context"
	"slices"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/eks"

	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

// apiConfig is testConfig with aws.api_authorized_ip_ranges set to ranges (YAML flow list items).
func apiConfig(t testing.TB, ranges string) config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte("node_count: 4\nmetric_retention_days: 90\naws: {region: eu-west-1, zone_suffixes: [a, b], eks_admin_roles: [\""+
		opsRole+"\"], api_authorized_ip_ranges: ["+ranges+"]}\n"), config.ProviderAWS)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// changesSince are the mutating calls (aws_test.go's mutations) made after the first from requests.
func changesSince(w *world, from int) []string {
	w.mu.Lock()
	later := slices.Clone(w.requests[from:])
	w.mu.Unlock()
	return mutations(&world{requests: later})
}

func requestCount(w *world) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.requests)
}

// The default leaves the public endpoint open (0.0.0.0/0, EKS's own default, sent explicitly); a list is
// sent on create; a rerun with the same list in another order writes nothing; a changed list is shown in
// the plan and set with one UpdateClusterConfig that changes only the endpoint access.
func TestPublicAccessCIDRsOnCreateAndUpdateOnChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		if _, err := install(t, w, 8); err != nil {
			t.Fatal(err)
		}
		vpc := inputs[*eks.CreateClusterInput](w, "eks:CreateCluster")[0].ResourcesVpcConfig
		if !slices.Equal(vpc.PublicAccessCidrs, []string{"0.0.0.0/0"}) || !aws.ToBool(vpc.EndpointPublicAccess) || !aws.ToBool(vpc.EndpointPrivateAccess) {
			t.Errorf("CreateCluster endpoint access: public %v private %v cidrs %v", aws.ToBool(vpc.EndpointPublicAccess), aws.ToBool(vpc.EndpointPrivateAccess), vpc.PublicAccessCidrs)
		}

		changed := Steps(w.clients(), testCluster, apiConfig(t, "203.0.113.0/24, 198.51.100.7/32"))
		preview, err := plan.Preview(context.Background(), changed)
		if err != nil {
			t.Fatal(err)
		}
		if d := plan.Describe(preview); !strings.Contains(d, "~ aws/eks-cluster") ||
			!strings.Contains(d, "Kubernetes API public endpoint reachable from: 0.0.0.0/0 → 198.51.100.7/32, 203.0.113.0/24 (aws.api_authorized_ip_ranges)") {
			t.Errorf("plan of a changed aws.api_authorized_ip_ranges:\n%s", d)
		}
		before := requestCount(w)
		rep, err := run(t, w, changed, 8)
		if err != nil {
			t.Fatal(err)
		}
		if got := changesSince(w, before); !slices.Equal(got, []string{"eks:UpdateClusterConfig"}) {
			t.Errorf("changes %v, want one UpdateClusterConfig", got)
		}
		for _, s := range rep.Steps {
			if (s.Action != plan.NoOp) != (s.Name == "aws/eks-cluster") {
				t.Errorf("%s planned %s", s.Name, s.Action)
			}
		}
		up := inputs[*eks.UpdateClusterConfigInput](w, "eks:UpdateClusterConfig")[0]
		if aws.ToString(up.Name) != testCluster || up.Logging != nil || up.AccessConfig != nil || up.ResourcesVpcConfig == nil ||
			len(up.ResourcesVpcConfig.SubnetIds) != 0 || len(up.ResourcesVpcConfig.SecurityGroupIds) != 0 ||
			!aws.ToBool(up.ResourcesVpcConfig.EndpointPublicAccess) || !aws.ToBool(up.ResourcesVpcConfig.EndpointPrivateAccess) ||
			!slices.Equal(up.ResourcesVpcConfig.PublicAccessCidrs, []string{"203.0.113.0/24", "198.51.100.7/32"}) {
			t.Errorf("UpdateClusterConfig %+v %+v", up, up.ResourcesVpcConfig)
		}

		before = requestCount(w)
		rep, err = run(t, w, Steps(w.clients(), testCluster, apiConfig(t, "198.51.100.7/32, 203.0.113.0/24")), 8)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range rep.Steps {
			if s.Action != plan.NoOp {
				t.Errorf("rerun: %s planned %s", s.Name, s.Action)
			}
		}
		if got := changesSince(w, before); len(got) != 0 {
			t.Errorf("rerun made changes %v", got)
		}
	})
}

// A list set at creation is what CreateCluster sends.
func TestPublicAccessCIDRsSetOnCreate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		if _, err := run(t, w, Steps(w.clients(), testCluster, apiConfig(t, "203.0.113.0/24")), 8); err != nil {
			t.Fatal(err)
		}
		vpc := inputs[*eks.CreateClusterInput](w, "eks:CreateCluster")[0].ResourcesVpcConfig
		if !slices.Equal(vpc.PublicAccessCidrs, []string{"203.0.113.0/24"}) {
			t.Errorf("CreateCluster publicAccessCidrs %v", vpc.PublicAccessCidrs)
		}
		if n := len(inputs[*eks.UpdateClusterConfigInput](w, "eks:UpdateClusterConfig")); n != 0 {
			t.Errorf("%d UpdateClusterConfig after a create that set the CIDRs", n)
		}
	})
}
