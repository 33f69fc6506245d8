package gcp

// The whole GCP install against the in-memory fakes of fake_test.go (Compute Engine, GKE and IAM cannot
// run offline; GCS is faked here only because these tests run in synctest's fake time — the bucket steps
// run against fake-gcs-server in gcs_test.go). The fakes record every request; the tests assert the exact
// ones that matter.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"cloud.google.com/go/compute/apiv1/computepb"
	"cloud.google.com/go/container/apiv1/containerpb"
	admin "cloud.google.com/go/iam/admin/apiv1"
	"cloud.google.com/go/iam/admin/apiv1/adminpb"
	"cloud.google.com/go/iam/apiv1/iampb"
	"cloud.google.com/go/storage"
	crm "google.golang.org/api/cloudresourcemanager/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

const testCluster = "prod"

func testConfig(t testing.TB, nodeCount int) config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(fmt.Sprintf("node_count: %d\nmetric_retention_days: 90\ngcp: {project: acme-prod, region: europe-west1}\n", nodeCount)), config.ProviderGCP)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// realistic latencies: what a real install waits for.
func slowWorld() *world {
	w := newWorld()
	w.latency["gke"] = 8 * time.Minute
	w.latency["nodepool"] = 3 * time.Minute
	w.latency["op"] = 20 * time.Second
	w.latency["call"] = 200 * time.Millisecond
	return w
}

func run(w *world, steps []plan.Step, concurrency int) (plan.Report, error) {
	return plan.Run(context.Background(), steps, plan.Options{Concurrency: concurrency, Rand: func() float64 { return 0.5 }})
}

func install(t testing.TB, w *world, concurrency int) (plan.Report, error) {
	return run(w, Steps(w.clients(), testCluster, testConfig(t, 4)), concurrency)
}

func destroy(t testing.TB, w *world) (plan.Report, error) {
	rev, err := plan.Reverse(Steps(w.clients(), testCluster, testConfig(t, 4)))
	if err != nil {
		t.Fatal(err)
	}
	return run(w, rev, 8)
}

func stepNamed(t testing.TB, steps []plan.Step, name string) plan.Step {
	t.Helper()
	for _, s := range steps {
		if s.Name() == name {
			return s
		}
	}
	t.Fatalf("no step %s", name)
	return nil
}

func one[T any](t *testing.T, w *world, op string) T {
	t.Helper()
	in := inputs[T](w, op)
	if len(in) != 1 {
		t.Fatalf("%d %s requests, want 1", len(in), op)
	}
	return in[0]
}

func TestInstallMakesTheExactRequestsAndRerunChangesNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		rep, err := install(t, w, 8)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range rep.Steps {
			want := plan.Create
			if s.Name == "gcp/node-pool" {
				want = plan.NoOp // made with the cluster
			}
			if s.State != plan.Done || s.Action != want {
				t.Errorf("%s: %s %s, want done %s", s.Name, s.State, s.Action, want)
			}
		}
		const mark = "opstrace-io-cluster=prod"

		n := one[*computepb.InsertNetworkRequest](t, w, "compute:InsertNetwork")
		if n.GetProject() != "acme-prod" || n.GetNetworkResource().GetName() != "opstrace-prod-network" || n.GetNetworkResource().GetAutoCreateSubnetworks() ||
			n.GetNetworkResource().GetDescription() != mark || n.GetNetworkResource().GetRoutingConfig().GetRoutingMode() != "REGIONAL" {
			t.Errorf("InsertNetwork %v", n)
		}
		sn := one[*computepb.InsertSubnetworkRequest](t, w, "compute:InsertSubnetwork").GetSubnetworkResource()
		var ranges []string
		for _, r := range sn.GetSecondaryIpRanges() {
			ranges = append(ranges, r.GetRangeName()+"="+r.GetIpCidrRange())
		}
		if sn.GetName() != "opstrace-prod-nodes" || sn.GetIpCidrRange() != "10.0.0.0/20" || !sn.GetPrivateIpGoogleAccess() || sn.GetDescription() != mark ||
			sn.GetNetwork() != "projects/acme-prod/global/networks/opstrace-prod-network" ||
			!slices.Equal(ranges, []string{"pods=10.4.0.0/14", "services=10.8.0.0/20"}) {
			t.Errorf("InsertSubnetwork %v", sn)
		}
		r := one[*computepb.InsertRouterRequest](t, w, "compute:InsertRouter")
		if r.GetRegion() != "europe-west1" || r.GetRouterResource().GetDescription() != mark || len(r.GetRouterResource().GetNats()) != 1 ||
			r.GetRouterResource().GetNats()[0].GetSourceSubnetworkIpRangesToNat() != "ALL_SUBNETWORKS_ALL_IP_RANGES" ||
			r.GetRouterResource().GetNats()[0].GetNatIpAllocateOption() != "AUTO_ONLY" {
			t.Errorf("InsertRouter %v", r)
		}

		cr := one[*containerpb.CreateClusterRequest](t, w, "gke:CreateCluster")
		c := cr.GetCluster()
		if cr.GetParent() != "projects/acme-prod/locations/europe-west1" || c.GetName() != testCluster || c.GetInitialClusterVersion() != config.DefaultKubernetesVersion ||
			c.GetResourceLabels()[cloud.OwnerLabel] != testCluster || c.GetNetwork() != "opstrace-prod-network" || c.GetSubnetwork() != "opstrace-prod-nodes" {
			t.Errorf("CreateCluster %v", cr)
		}
		if !c.GetPrivateClusterConfig().GetEnablePrivateNodes() || c.GetPrivateClusterConfig().GetMasterIpv4CidrBlock() != "172.16.0.0/28" {
			t.Errorf("nodes are not private: %v", c.GetPrivateClusterConfig())
		}
		if c.GetWorkloadIdentityConfig().GetWorkloadPool() != "acme-prod.svc.id.goog" {
			t.Errorf("workload identity %v", c.GetWorkloadIdentityConfig())
		}
		if ip := c.GetIpAllocationPolicy(); !ip.GetUseIpAliases() || ip.GetClusterSecondaryRangeName() != "pods" || ip.GetServicesSecondaryRangeName() != "services" {
			t.Errorf("IP allocation %v", ip)
		}
		// node_count 4 in 3 zones: 2 per zone.
		if len(c.GetNodePools()) != 1 {
			t.Fatalf("node pools %v", c.GetNodePools())
		}
		np := c.GetNodePools()[0]
		if np.GetName() != NodePoolName || np.GetInitialNodeCount() != 2 || np.GetConfig().GetMachineType() != "n2-standard-4" ||
			np.GetAutoscaling().GetMinNodeCount() != 2 || np.GetAutoscaling().GetMaxNodeCount() != 2 ||
			np.GetConfig().GetWorkloadMetadataConfig().GetMode() != containerpb.WorkloadMetadataConfig_GKE_METADATA ||
			np.GetConfig().GetResourceLabels()[cloud.OwnerLabel] != testCluster {
			t.Errorf("node pool %v", np)
		}
		// The nodes run as their own service account, not the Compute Engine default one; its roles bound
		// what the cloud-platform scope allows.
		if np.GetConfig().GetServiceAccount() != "opstrace-prod-nodes@acme-prod.iam.gserviceaccount.com" ||
			!slices.Equal(np.GetConfig().GetOauthScopes(), []string{"https://www.googleapis.com/auth/cloud-platform"}) {
			t.Errorf("node pool identity: service account %q, scopes %v", np.GetConfig().GetServiceAccount(), np.GetConfig().GetOauthScopes())
		}
		// gcp.api_authorized_ip_ranges by default: [0.0.0.0/0], GKE's restriction off.
		if m := c.GetMasterAuthorizedNetworksConfig(); m == nil || m.GetEnabled() || len(m.GetCidrBlocks()) != 0 {
			t.Errorf("authorized networks %v, want disabled", m)
		}
		ops := w.ops()
		if slices.Index(ops, "projects:SetProjectPolicy") < 0 || slices.Index(ops, "projects:SetProjectPolicy") > slices.Index(ops, "gke:CreateCluster") {
			t.Errorf("the nodes' roles are not granted before the cluster is created: %v", ops)
		}
		nodesSA := inputs[*adminpb.CreateServiceAccountRequest](w, "iam:CreateServiceAccount")
		for _, in := range nodesSA {
			if in.GetAccountId() == "opstrace-prod-nodes" && (in.GetServiceAccount().GetDisplayName() != "Opstrace prod nodes" || in.GetServiceAccount().GetDescription() != mark) {
				t.Errorf("nodes' service account %v", in)
			}
		}
		// One project policy write: the role added for the nodes' account, the other bindings (the
		// conditional one included, same role) kept as they were, with the read policy's etag and version.
		pp := one[*crm.Policy](t, w, "projects:SetProjectPolicy")
		var pb []string
		for _, b := range pp.Bindings {
			cond := ""
			if b.Condition != nil {
				cond = " if " + b.Condition.Expression
			}
			pb = append(pb, b.Role+"="+strings.Join(b.Members, ",")+cond)
		}
		if pp.Etag != "BwY1" || pp.Version != 3 || !slices.Equal(pb, []string{
			"roles/owner=user:ops@acme.example",
			"roles/container.defaultNodeServiceAccount=serviceAccount:other@acme-prod.iam.gserviceaccount.com if request.time.getDayOfWeek() < 5",
			"roles/container.defaultNodeServiceAccount=serviceAccount:opstrace-prod-nodes@acme-prod.iam.gserviceaccount.com",
		}) {
			t.Errorf("project policy written: etag %q version %d bindings %q", pp.Etag, pp.Version, pb)
		}

		// Workload identity: each service account is usable only by its Kubernetes service account, and
		// may only use its own bucket.
		var accounts []string
		for _, in := range inputs[*adminpb.CreateServiceAccountRequest](w, "iam:CreateServiceAccount") {
			accounts = append(accounts, in.GetAccountId())
			if in.GetName() != "projects/acme-prod" || in.GetServiceAccount().GetDescription() != mark {
				t.Errorf("CreateServiceAccount %v", in)
			}
		}
		slices.Sort(accounts)
		if !slices.Equal(accounts, []string{"opstrace-prod-cortex", "opstrace-prod-loki", "opstrace-prod-nodes"}) {
			t.Errorf("service accounts %v", accounts)
		}
		bindings := map[string]string{}
		for _, in := range inputs[*admin.SetIamPolicyRequest](w, "iam:SetIamPolicy") {
			for _, b := range in.Policy.InternalProto.GetBindings() {
				bindings[last(in.Resource)] += b.GetRole() + " " + strings.Join(b.GetMembers(), ",")
			}
		}
		want := map[string]string{
			"opstrace-prod-cortex@acme-prod.iam.gserviceaccount.com": "roles/iam.workloadIdentityUser serviceAccount:acme-prod.svc.id.goog[opstrace/prod-cortex]",
			"opstrace-prod-loki@acme-prod.iam.gserviceaccount.com":   "roles/iam.workloadIdentityUser serviceAccount:acme-prod.svc.id.goog[opstrace/prod-loki]",
		}
		if fmt.Sprint(bindings) != fmt.Sprint(want) {
			t.Errorf("service account policies\n got %v\nwant %v", bindings, want)
		}
		bucketGrants := map[string]string{}
		for _, in := range inputs[setBucketPolicy](w, "storage:SetBucketPolicy") {
			for _, b := range in.Policy.GetBindings() {
				if b.GetRole() == RoleObjectAdmin {
					bucketGrants[in.Bucket] = strings.Join(b.GetMembers(), ",")
				}
			}
			if len(in.Policy.GetBindings()) != 2 || in.Policy.GetBindings()[0].GetRole() != "roles/storage.legacyBucketOwner" {
				t.Errorf("bucket %s policy lost or gained bindings: %v", in.Bucket, in.Policy.GetBindings())
			}
		}
		wantGrants := map[string]string{
			"opstrace-prod-metrics": "serviceAccount:opstrace-prod-cortex@acme-prod.iam.gserviceaccount.com",
			"opstrace-prod-logs":    "serviceAccount:opstrace-prod-loki@acme-prod.iam.gserviceaccount.com",
		}
		if fmt.Sprint(bucketGrants) != fmt.Sprint(wantGrants) {
			t.Errorf("bucket grants\n got %v\nwant %v", bucketGrants, wantGrants)
		}
		for _, in := range inputs[*storage.BucketAttrs](w, "storage:CreateBucket") {
			if in.Location != "europe-west1" || in.Labels[cloud.OwnerLabel] != testCluster || !in.UniformBucketLevelAccess.Enabled ||
				in.PublicAccessPrevention != storage.PublicAccessPreventionEnforced || len(in.Lifecycle.Rules) != 1 {
				t.Errorf("CreateBucket %+v", in)
			}
		}
		if rules := w.buckets["opstrace-prod-metrics"].attrs.Lifecycle.Rules; rules[0].Condition.AgeInDays != 90 || rules[0].Action.Type != storage.DeleteAction {
			t.Errorf("metrics bucket lifecycle %+v", rules)
		}

		access, err := Access(context.Background(), w.clients(), testCluster)
		if err != nil || access.Endpoint != "https://34.0.0.1" || string(access.CA) != "CLUSTER CA" ||
			access.ServiceAccounts[RoleCortex] != "opstrace-prod-cortex@acme-prod.iam.gserviceaccount.com" {
			t.Errorf("access %+v, %v", access, err)
		}

		before := len(w.ops())
		rep, err = install(t, w, 8)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range rep.Steps {
			if s.Action != plan.NoOp {
				t.Errorf("rerun: %s planned %s", s.Name, s.Action)
			}
		}
		for _, op := range w.ops()[before:] {
			if isMutation(op) {
				t.Errorf("rerun made a change: %s", op)
			}
		}
	})
}

// node_count changes resize the pool (size, then the pinned autoscaler bounds) and nothing else.
func TestNodeCountChangeResizesThePool(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		if _, err := install(t, w, 8); err != nil {
			t.Fatal(err)
		}
		steps := Steps(w.clients(), testCluster, testConfig(t, 9))
		preview, err := plan.Preview(context.Background(), steps)
		if err != nil {
			t.Fatal(err)
		}
		if d := plan.Describe(preview); !strings.Contains(d, "~ gcp/node-pool") || !strings.Contains(d, "nodes per zone: 2 → 3 (9 nodes for node_count 9)") {
			t.Errorf("plan of a node_count change:\n%s", d)
		}
		before := len(w.ops())
		rep, err := run(w, steps, 8)
		if err != nil {
			t.Fatal(err)
		}
		var changed []string
		for _, op := range w.ops()[before:] {
			if isMutation(op) {
				changed = append(changed, op)
			}
		}
		if !slices.Equal(changed, []string{"gke:SetNodePoolSize", "gke:SetNodePoolAutoscaling"}) {
			t.Errorf("changes %v", changed)
		}
		if size := inputs[*containerpb.SetNodePoolSizeRequest](w, "gke:SetNodePoolSize")[0]; size.GetNodeCount() != 3 ||
			size.GetName() != "projects/acme-prod/locations/europe-west1/clusters/prod/nodePools/opstrace-nodes" {
			t.Errorf("SetNodePoolSize %v", size)
		}
		for _, s := range rep.Steps {
			if (s.Action != plan.NoOp) != (s.Name == "gcp/node-pool") {
				t.Errorf("%s planned %s", s.Name, s.Action)
			}
		}
		if got := w.clusters[testCluster].pools[NodePoolName]; got.size != 3 || got.np.GetAutoscaling().GetMaxNodeCount() != 3 {
			t.Errorf("pool after resize: size %d, autoscaling %v", got.size, got.np.GetAutoscaling())
		}
	})
}

// The parallel plan waits only for its critical path (the GKE cluster); a sequential run waits for every
// step. Fake time makes the figures exact; this logs them and asserts only the ordering facts.
func TestParallelPlanFollowsTheCriticalPath(t *testing.T) {
	elapsed := func(concurrency int) plan.Report {
		var rep plan.Report
		synctest.Test(t, func(t *testing.T) {
			var err error
			if rep, err = install(t, slowWorld(), concurrency); err != nil {
				t.Fatal(err)
			}
		})
		return rep
	}
	seq := elapsed(1)
	par := elapsed(16)
	durations := map[string]time.Duration{}
	for _, s := range seq.Steps {
		durations[s.Name] = s.Elapsed
	}
	path, critical, err := plan.CriticalPath(Steps(newWorld().clients(), testCluster, testConfig(t, 4)), durations)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(path, "gcp/gke-cluster") {
		t.Errorf("critical path %v does not go through the GKE cluster", path)
	}
	if par.Elapsed >= seq.Elapsed {
		t.Errorf("parallel %s is not faster than sequential %s", par.Elapsed, seq.Elapsed)
	}
	t.Logf("critical path %s = %s (step durations of the sequential run)", strings.Join(path, " → "), critical)
	t.Logf("parallel install %s vs sequential %s: %.2fx faster; parallel / critical path = %.2f",
		par.Elapsed, seq.Elapsed, float64(seq.Elapsed)/float64(par.Elapsed), float64(par.Elapsed)/float64(critical))
}

// Kill the installer right after each mutating request in turn (Google has done it; the installer never
// saw the answer), then run create again: every rerun converges to the same resources as an
// uninterrupted install, with nothing duplicated, and a third run changes nothing.
func TestInterruptedAtEveryRequestTheRerunConverges(t *testing.T) {
	var clean []string
	var total int
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		if _, err := install(t, w, 8); err != nil {
			t.Fatal(err)
		}
		clean, total = w.inventory(), w.mutations
	})
	if total < 10 {
		t.Fatalf("an install makes only %d changes?", total)
	}
	for k := 1; k <= total; k++ {
		synctest.Test(t, func(t *testing.T) {
			w := slowWorld()
			w.killAfter = k
			if _, err := install(t, w, 8); !errors.Is(err, errKilled) {
				t.Fatalf("kill after change %d: run ended with %v", k, err)
			}
			w.mu.Lock()
			w.dead, w.killAfter = false, 0
			w.mu.Unlock()
			if _, err := install(t, w, 8); err != nil {
				t.Fatalf("kill after change %d: rerun: %v", k, err)
			}
			if got := w.inventory(); !slices.Equal(got, clean) {
				t.Fatalf("kill after change %d: rerun left\n%s\nwant\n%s", k, strings.Join(got, "\n"), strings.Join(clean, "\n"))
			}
			rep, err := install(t, w, 8)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range rep.Steps {
				if s.Action != plan.NoOp {
					t.Errorf("kill after change %d: third run: %s planned %s", k, s.Name, s.Action)
				}
			}
		})
	}
	t.Logf("interrupted after each of the %d changes of an install; every rerun converged and a third run changed nothing", total)
}

func TestThrottledRequestsAreRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		w.inject["compute:InsertNetwork"] = []error{httpErr(403, "rateLimitExceeded", "Rate Limit Exceeded")}
		w.inject["gke:CreateCluster"] = []error{grpcErr(codes.ResourceExhausted, "too many requests"), grpcErr(codes.Unavailable, "try again")}
		w.inject["storage:CreateBucket"] = []error{httpErr(429, "rateLimitExceeded", "The project exceeded the rate limit for creating and deleting buckets.")}
		rep, err := install(t, w, 8)
		if err != nil {
			t.Fatal(err)
		}
		attempts := map[string]int{}
		for _, s := range rep.Steps {
			attempts[s.Name] = s.Attempts
		}
		if attempts["gcp/network"] != 2 || attempts["gcp/gke-cluster"] != 3 || attempts["gcp/bucket-metrics"]+attempts["gcp/bucket-logs"] != 3 {
			t.Errorf("attempts %v", attempts)
		}
		if n := len(inputs[*containerpb.CreateClusterRequest](w, "gke:CreateCluster")); n != 3 {
			t.Errorf("%d CreateCluster requests, want 3 (two throttled)", n)
		}
		if n := len(w.clusters); n != 1 {
			t.Errorf("%d GKE clusters", n)
		}
	})
}

func TestPermissionDeniedIsNotRetriedAndNamesThePermission(t *testing.T) {
	for _, tc := range []struct {
		op         string
		err        error
		permission string
	}{
		// compute names the permission only in the message
		{"compute:InsertNetwork", httpErr(403, "forbidden", "Required 'compute.networks.create' permission for 'projects/acme-prod/global/networks/opstrace-prod-network'"), "compute.networks.create"},
		// GKE and IAM in an ErrorInfo
		{"gke:CreateCluster", grpcDenied("container.clusters.create"), "container.clusters.create"},
		{"iam:SetIamPolicy", grpcDenied("iam.serviceAccounts.setIamPolicy"), "iam.serviceAccounts.setIamPolicy"},
		// storage in the message
		{"storage:CreateBucket", httpErr(403, "forbidden", "ci@acme-prod.iam.gserviceaccount.com does not have storage.buckets.create access to the Google Cloud project."), "storage.buckets.create"},
		// nothing named: the permission the call needs
		{"compute:InsertRouter", httpErr(403, "forbidden", "Forbidden"), "compute.routers.create"},
	} {
		synctest.Test(t, func(t *testing.T) {
			w := slowWorld()
			w.inject[tc.op] = []error{tc.err, tc.err}
			rep, err := install(t, w, 8)
			if plan.Classify(err) != plan.PermissionDenied || !strings.Contains(err.Error(), "missing permission "+tc.permission) ||
				!strings.Contains(err.Error(), "grant "+tc.permission) {
				t.Fatalf("%s denied: %v", tc.op, err)
			}
			for _, s := range rep.Steps {
				if s.State == plan.Failed && s.Attempts != 1 {
					t.Errorf("%s failed after %d attempts, want 1 (permission errors are not retried)", s.Name, s.Attempts)
				}
			}
		})
	}
}

// A network, a service account, a GKE cluster and a bucket with the expected names but without the
// cluster's label or mark are someone else's: create refuses with the fix, and neither create nor destroy
// nor the sweep changes them.
func TestUntaggedLookAlikesAreNeverTouched(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		w.networks["opstrace-prod-network"] = &computepb.Network{Name: proto.String("opstrace-prod-network"), Description: proto.String("the payments team's network")}
		w.sas["opstrace-prod-loki@acme-prod.iam.gserviceaccount.com"] = &fsa{sa: &adminpb.ServiceAccount{Email: "opstrace-prod-loki@acme-prod.iam.gserviceaccount.com"},
			policy: &iampb.Policy{Bindings: []*iampb.Binding{{Role: RoleWorkloadIdentityUser, Members: []string{"user:them@example.com"}}}}}
		w.buckets["opstrace-prod-logs"] = &fbucket{attrs: storage.BucketAttrs{Name: "opstrace-prod-logs", Labels: map[string]string{"team": "payments"}}, objects: 3}
		_, err := install(t, w, 8)
		if plan.Classify(err) != plan.NotOwned {
			t.Fatalf("install over look-alikes: %v", err)
		}
		for _, want := range []string{"VPC network opstrace-prod-network exists but its description is not \"opstrace-io-cluster=prod\"",
			"GCS bucket opstrace-prod-logs exists but is not tagged opstrace-io-cluster=prod", "delete or rename"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error lacks %q:\n%v", want, err)
			}
		}
		before := w.inventory()
		_, _ = destroy(t, w)
		if _, err := Sweep(context.Background(), w.clients(), testCluster, false); err != nil {
			t.Fatal(err)
		}
		// Only the buckets this install made went; the look-alikes are as they were.
		var after []string
		for _, r := range w.inventory() {
			after = append(after, r)
		}
		for _, r := range before {
			if strings.Contains(r, "opstrace-prod-network") || strings.Contains(r, "opstrace-prod-loki@") || strings.Contains(r, "bucket opstrace-prod-logs") {
				if !slices.Contains(after, r) {
					t.Errorf("look-alike changed or deleted: %s", r)
				}
			}
		}
		for _, op := range w.ops() {
			if isMutation(op) && strings.Contains(op, "Network") {
				t.Errorf("%s called with look-alikes present", op)
			}
		}
		// The nodes' account (no look-alike here) may come and go; the Loki look-alike is never touched.
		for _, in := range inputs[*adminpb.CreateServiceAccountRequest](w, "iam:CreateServiceAccount") {
			if in.GetAccountId() == "opstrace-prod-loki" {
				t.Errorf("CreateServiceAccount of the look-alike: %v", in)
			}
		}
		for _, in := range inputs[*adminpb.DeleteServiceAccountRequest](w, "iam:DeleteServiceAccount") {
			if strings.Contains(in.GetName(), "opstrace-prod-loki@") {
				t.Errorf("DeleteServiceAccount of the look-alike: %v", in)
			}
		}
	})
}

// destroy of a partial install (killed halfway) removes everything, and the sweep finds a stray resource
// marked for the cluster that no step knows (a second router).
func TestDestroyAPartialInstallThenSweep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		w.killAfter = 5
		if _, err := install(t, w, 8); !errors.Is(err, errKilled) {
			t.Fatalf("partial install: %v", err)
		}
		w.dead, w.killAfter = false, 0
		if b := w.buckets["opstrace-prod-metrics"]; b != nil {
			b.objects = 5 // data written meanwhile
		}
		w.routers["opstrace-prod-stray"] = &computepb.Router{Name: proto.String("opstrace-prod-stray"), Description: proto.String("opstrace-io-cluster=prod"),
			Network: proto.String("projects/acme-prod/global/networks/elsewhere")}
		w.routers["other-router"] = &computepb.Router{Name: proto.String("other-router"), Description: proto.String("opstrace-io-cluster=staging")}
		before := len(w.inventory())

		rep, err := destroy(t, w)
		if err != nil {
			t.Fatal(err)
		}
		var deleted []string
		for _, s := range rep.Steps {
			if s.Action == plan.Delete {
				deleted = append(deleted, s.Name)
			}
		}
		sweep, err := Sweep(context.Background(), w.clients(), testCluster, false)
		if err != nil {
			t.Fatal(err)
		}
		if len(sweep.Left) != 0 || len(sweep.Removed) != 1 || sweep.Removed[0] != (cloud.Resource{Kind: kindRouter, ID: "opstrace-prod-stray"}) {
			t.Errorf("sweep: %s", sweep)
		}
		if got := w.inventory(); !slices.Equal(got, withOthers(`router other-router "opstrace-io-cluster=staging" nats=0`)) {
			t.Errorf("after destroy and sweep: %q, want only the other cluster's router", got)
		}
		t.Logf("partial install of %d resources: steps deleted %v; %s", before, deleted, sweep)
	})
}

// destroy of a complete install deletes the GKE cluster (its node pool with it), the network after the
// GKE cluster has gone, and every bucket with its objects.
func TestDestroyRemovesEverything(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		if _, err := install(t, w, 8); err != nil {
			t.Fatal(err)
		}
		w.buckets["opstrace-prod-logs"].objects = 2500
		if _, err := destroy(t, w); err != nil {
			t.Fatal(err)
		}
		if got := w.inventory(); !slices.Equal(got, othersBindings) {
			t.Errorf("left after destroy: %q, want only the project's other bindings", got)
		}
		if n := len(inputs[*containerpb.DeleteClusterRequest](w, "gke:DeleteCluster")); n != 1 {
			t.Errorf("%d DeleteCluster requests", n)
		}
		sweep, err := Sweep(context.Background(), w.clients(), testCluster, false)
		if err != nil || len(sweep.Removed)+len(sweep.Left) != 0 {
			t.Errorf("sweep after a full destroy: %s %v", sweep, err)
		}
	})
}

func TestListFindsClustersByLabel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		if _, err := install(t, w, 8); err != nil {
			t.Fatal(err)
		}
		w.networks["opstrace-staging-network"] = &computepb.Network{Name: proto.String("opstrace-staging-network"), Description: proto.String("opstrace-io-cluster=staging")}
		w.networks["default"] = &computepb.Network{Name: proto.String("default"), Description: proto.String("Default network for the project")}
		found, err := Find(context.Background(), w.clients(), "")
		if err != nil {
			t.Fatal(err)
		}
		summary := cloud.Summarize(found)
		if len(summary) != 2 || summary[0].Name != "prod" || summary[1].Name != "staging" {
			t.Fatalf("clusters %+v", summary)
		}
		kinds := map[string]int{}
		for _, r := range summary[0].Resources {
			kinds[r.Kind]++
		}
		want := map[string]int{kindCluster: 1, kindRouter: 1, kindSubnet: 1, kindNetwork: 1, kindServiceAccount: 3, kindBucket: 2}
		if fmt.Sprint(kinds) != fmt.Sprint(want) {
			t.Errorf("prod's resources %v, want %v", kinds, want)
		}
		if !slices.Contains(summary[0].Resources, cloud.Resource{Kind: kindCluster, ID: "europe-west1/prod"}) {
			t.Errorf("prod's GKE cluster not listed with its location: %v", summary[0].Resources)
		}
	})
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want plan.Kind
	}{
		{storage.ErrBucketNotExist, plan.NotFound},
		{httpErr(404, "notFound", "not found"), plan.NotFound},
		{grpcErr(codes.NotFound, "x"), plan.NotFound},
		{httpErr(409, "conflict", "exists"), plan.Conflict},
		{grpcErr(codes.AlreadyExists, "x"), plan.Conflict},
		{grpcErr(codes.FailedPrecondition, "operation in progress"), plan.Conflict},
		{httpErr(400, "resourceInUseByAnotherResource", "in use"), plan.Conflict},
		{httpErr(429, "", "slow down"), plan.Throttled},
		{httpErr(403, "rateLimitExceeded", "rate"), plan.Throttled},
		{httpErr(403, "userRateLimitExceeded", "rate"), plan.Throttled},
		{grpcErr(codes.ResourceExhausted, "too many requests"), plan.Throttled},
		{grpcErr(codes.Unavailable, "x"), plan.Throttled},
		{httpErr(403, "quotaExceeded", "Quota 'NETWORKS' exceeded. Limit: 5.0 globally."), plan.Quota},
		{grpcErr(codes.ResourceExhausted, "Insufficient regional quota to satisfy request: resource \"CPUS\""), plan.Quota},
		{httpErr(403, "forbidden", "denied"), plan.PermissionDenied},
		{grpcDenied("container.clusters.get"), plan.PermissionDenied},
		{grpcErr(codes.InvalidArgument, "bad"), plan.Other},
		{grpcErr(codes.Unauthenticated, "expired"), plan.Other},
	} {
		if got := kindOf(tc.err); got != tc.want {
			t.Errorf("%v: %s, want %s", tc.err, got, tc.want)
		}
	}
	err := classify("create GKE cluster prod", "container.clusters.create", grpcErr(codes.Unauthenticated, "Request had invalid authentication credentials."))
	if !strings.Contains(err.Error(), "gcloud auth application-default login") {
		t.Errorf("expired credentials: %v", err)
	}
	err = classify("create network", "compute.networks.create", httpErr(403, "quotaExceeded", "Quota 'NETWORKS' exceeded."))
	if plan.Classify(err) != plan.Quota || !strings.Contains(err.Error(), "raise the quota") {
		t.Errorf("quota: %v", err)
	}
}

func TestServiceAccountIDsFitIAM(t *testing.T) {
	long := "a-thirty-character-cluster-nam"
	for _, tc := range []struct{ cluster, role string }{{"prod", "cortex"}, {long, "cortex"}, {long, "loki"}, {long[:29] + "x", "loki"}} {
		id := ServiceAccountID(tc.cluster, tc.role)
		if len(id) < 6 || len(id) > 30 || !strings.HasSuffix(id, "-"+tc.role) || strings.Contains(id, "--") {
			t.Errorf("%s/%s: %q", tc.cluster, tc.role, id)
		}
	}
	if ServiceAccountID(long, "loki") == ServiceAccountID(long[:29]+"x", "loki") {
		t.Error("two clusters share a service account ID")
	}
	if got := ServiceAccountID("prod", "cortex"); got != "opstrace-prod-cortex" {
		t.Errorf("short name shortened: %q", got)
	}
}
