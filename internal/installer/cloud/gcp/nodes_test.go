package gcp

// The nodes' service account and the control plane's authorized networks, against the in-memory fakes of
// fake_test.go (GKE, IAM and the Resource Manager project policy cannot run offline): the tests assert
// the exact requests.

import (
	"context"
	"slices"
	"strings"
	"testing"
	"testing/synctest"

	"cloud.google.com/go/container/apiv1/containerpb"
	"cloud.google.com/go/iam/admin/apiv1/adminpb"
	crm "google.golang.org/api/cloudresourcemanager/v3"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

const nodesEmail = "opstrace-prod-nodes@acme-prod.iam.gserviceaccount.com"

// apiConfig is the test config with gcp.api_authorized_ip_ranges set to ranges (YAML flow list items).
func apiConfig(t testing.TB, ranges string) config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte("node_count: 4\nmetric_retention_days: 90\ngcp: {project: acme-prod, region: europe-west1, api_authorized_ip_ranges: ["+ranges+"]}\n"), config.ProviderGCP)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func mutations(w *world, from int) []string {
	var out []string
	for _, op := range w.ops()[from:] {
		if isMutation(op) {
			out = append(out, op)
		}
	}
	return out
}

func cidrs(m *containerpb.MasterAuthorizedNetworksConfig) []string {
	var out []string
	for _, b := range m.GetCidrBlocks() {
		out = append(out, b.GetCidrBlock())
	}
	return out
}

// The ranges of the config are the cluster's authorized networks from its creation; a rerun writes
// nothing; a changed list is shown in the plan and set with one UpdateCluster, and nothing else changes;
// going back to [0.0.0.0/0] turns the restriction off.
func TestAuthorizedNetworksOnCreateAndUpdateOnChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		cfg := apiConfig(t, "203.0.113.0/24, 198.51.100.7/32")
		if _, err := run(w, Steps(w.clients(), testCluster, cfg), 8); err != nil {
			t.Fatal(err)
		}
		m := one[*containerpb.CreateClusterRequest](t, w, "gke:CreateCluster").GetCluster().GetMasterAuthorizedNetworksConfig()
		if !m.GetEnabled() || !slices.Equal(cidrs(m), []string{"203.0.113.0/24", "198.51.100.7/32"}) {
			t.Errorf("CreateCluster authorized networks %v", m)
		}

		// The same list in another order is the same setting: no change.
		before := len(w.ops())
		rep, err := run(w, Steps(w.clients(), testCluster, apiConfig(t, "198.51.100.7/32, 203.0.113.0/24")), 8)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range rep.Steps {
			if s.Action != plan.NoOp {
				t.Errorf("rerun: %s planned %s", s.Name, s.Action)
			}
		}
		if got := mutations(w, before); len(got) != 0 {
			t.Errorf("rerun made changes %v", got)
		}

		changed := Steps(w.clients(), testCluster, apiConfig(t, "203.0.113.0/24, 192.0.2.0/28"))
		preview, err := plan.Preview(context.Background(), changed)
		if err != nil {
			t.Fatal(err)
		}
		if d := plan.Describe(preview); !strings.Contains(d, "~ gcp/gke-cluster") ||
			!strings.Contains(d, "Kubernetes API reachable from: 198.51.100.7/32, 203.0.113.0/24 → 192.0.2.0/28, 203.0.113.0/24 (gcp.api_authorized_ip_ranges)") {
			t.Errorf("plan of a changed gcp.api_authorized_ip_ranges:\n%s", d)
		}
		before = len(w.ops())
		if _, err := run(w, changed, 8); err != nil {
			t.Fatal(err)
		}
		if got := mutations(w, before); !slices.Equal(got, []string{"gke:UpdateCluster"}) {
			t.Errorf("changes %v, want one UpdateCluster", got)
		}
		up := one[*containerpb.UpdateClusterRequest](t, w, "gke:UpdateCluster")
		if up.GetName() != "projects/acme-prod/locations/europe-west1/clusters/prod" {
			t.Errorf("UpdateCluster of %s", up.GetName())
		}
		if m := up.GetUpdate().GetDesiredMasterAuthorizedNetworksConfig(); !m.GetEnabled() || !slices.Equal(cidrs(m), []string{"203.0.113.0/24", "192.0.2.0/28"}) {
			t.Errorf("UpdateCluster authorized networks %v", m)
		}
		if u := up.GetUpdate(); u.GetDesiredNodePoolId() != "" || u.GetDesiredMasterVersion() != "" || u.GetDesiredNodeVersion() != "" {
			t.Errorf("UpdateCluster changes more than the authorized networks: %v", u)
		}

		// Back to the default: the restriction is turned off, not replaced by a list of every address.
		if _, err := run(w, Steps(w.clients(), testCluster, testConfig(t, 4)), 8); err != nil {
			t.Fatal(err)
		}
		ups := inputs[*containerpb.UpdateClusterRequest](w, "gke:UpdateCluster")
		if m := ups[len(ups)-1].GetUpdate().GetDesiredMasterAuthorizedNetworksConfig(); len(ups) != 2 || m.GetEnabled() || len(m.GetCidrBlocks()) != 0 {
			t.Errorf("UpdateCluster back to any address: %d updates, last %v", len(ups), m)
		}
	})
}

// A cluster still provisioning (an interrupted create) is waited for, then updated, in the same run.
func TestAuthorizedNetworksUpdateWaitsForABusyCluster(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		w.killAfter = 8 // in sequence: 2 buckets, network, subnet, router, nodes' account and its grant, then CreateCluster
		if _, err := install(t, w, 1); err == nil {
			t.Fatal("the kill did not stop the install")
		}
		if n := len(inputs[*containerpb.CreateClusterRequest](w, "gke:CreateCluster")); n != 1 {
			t.Fatalf("killed after %v: want it killed right after CreateCluster", w.ops())
		}
		w.dead, w.killAfter = false, 0
		steps := Steps(w.clients(), testCluster, apiConfig(t, "203.0.113.0/24"))
		preview, err := plan.Preview(context.Background(), steps)
		if err != nil {
			t.Fatal(err)
		}
		if d := plan.Describe(preview); !strings.Contains(d, "wait until RUNNING (now PROVISIONING)") || !strings.Contains(d, "any address (0.0.0.0/0) → 203.0.113.0/24") {
			t.Errorf("plan:\n%s", d)
		}
		if _, err := run(w, steps, 8); err != nil {
			t.Fatal(err)
		}
		if got := w.clusters[testCluster].c.GetMasterAuthorizedNetworksConfig(); !got.GetEnabled() || !slices.Equal(cidrs(got), []string{"203.0.113.0/24"}) {
			t.Errorf("authorized networks after the rerun %v", got)
		}
	})
}

// destroy deletes the GKE cluster first, then removes the nodes' account from the project's policy
// (keeping every other binding), then deletes the account.
func TestDestroyRemovesTheNodesAccountAfterTheCluster(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		if _, err := install(t, w, 8); err != nil {
			t.Fatal(err)
		}
		before := len(w.ops())
		if _, err := destroy(t, w); err != nil {
			t.Fatal(err)
		}
		var order []string
		w.mu.Lock()
		requests := slices.Clone(w.requests[before:])
		w.mu.Unlock()
		for _, r := range requests {
			switch in := r.Input.(type) {
			case *containerpb.DeleteClusterRequest:
				order = append(order, "delete cluster")
			case *crm.Policy:
				order = append(order, "set project policy")
			case *adminpb.DeleteServiceAccountRequest:
				if strings.HasSuffix(in.GetName(), "/"+nodesEmail) {
					order = append(order, "delete nodes' account")
				}
			}
		}
		if !slices.Equal(order, []string{"delete cluster", "set project policy", "delete nodes' account"}) {
			t.Errorf("destroy order %v", order)
		}
		sets := inputs[*crm.Policy](w, "projects:SetProjectPolicy")
		last := sets[len(sets)-1]
		for _, b := range last.Bindings {
			if slices.Contains(b.Members, "serviceAccount:"+nodesEmail) {
				t.Errorf("project policy still binds the nodes' account: %v", b)
			}
		}
		if got := w.inventory(); !slices.Equal(got, othersBindings) {
			t.Errorf("left after destroy: %q", got)
		}
	})
}

// An account with the nodes' account's name that opstrace did not mark is someone else's: create stops
// before the GKE cluster with the fix, and neither create, destroy nor the sweep changes the account or the
// project's policy.
func TestForeignNodesAccountIsRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		w.sas[nodesEmail] = &fsa{sa: &adminpb.ServiceAccount{Email: nodesEmail, Description: "the payments team's CI"}}
		w.policy.Bindings = append(w.policy.Bindings, &crm.Binding{Role: "roles/editor", Members: []string{"serviceAccount:" + nodesEmail}})
		_, err := install(t, w, 8)
		if plan.Classify(err) != plan.NotOwned {
			t.Fatalf("install over a foreign nodes' account: %v", err)
		}
		for _, want := range []string{"service account " + nodesEmail + " exists but its description is not \"opstrace-io-cluster=prod\"", "delete or rename"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error lacks %q:\n%v", want, err)
			}
		}
		if n := len(inputs[*containerpb.CreateClusterRequest](w, "gke:CreateCluster")); n != 0 {
			t.Errorf("the GKE cluster was created with someone else's account as its nodes'")
		}
		before := w.inventory()
		_, _ = destroy(t, w)
		if _, err := Sweep(context.Background(), w.clients(), testCluster, false); err != nil {
			t.Fatal(err)
		}
		if n := len(inputs[*crm.Policy](w, "projects:SetProjectPolicy")); n != 0 {
			t.Errorf("%d project policy writes with a foreign nodes' account", n)
		}
		for _, in := range inputs[*adminpb.DeleteServiceAccountRequest](w, "iam:DeleteServiceAccount") {
			if strings.HasSuffix(in.GetName(), nodesEmail) {
				t.Errorf("deleted the foreign account: %v", in)
			}
		}
		for _, r := range before {
			if strings.Contains(r, nodesEmail) && !slices.Contains(w.inventory(), r) {
				t.Errorf("foreign account or its binding changed: %s", r)
			}
		}
	})
}

// Without destroy's steps (the sweep alone, as after a destroy whose steps failed): the sweep finds the
// nodes' account by its mark, removes its project binding, then deletes it.
func TestSweepRemovesTheNodesAccountAndItsBindings(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		if _, err := install(t, w, 8); err != nil {
			t.Fatal(err)
		}
		found, err := Find(context.Background(), w.clients(), testCluster)
		if err != nil || !slices.Contains(found[testCluster], cloud.Resource{Kind: kindServiceAccount, ID: nodesEmail}) {
			t.Fatalf("Find: %v %v", found, err)
		}
		// The cluster goes by the sweep too; what matters here is the account's binding.
		rep, err := Sweep(context.Background(), w.clients(), testCluster, false)
		if err != nil || len(rep.Left) != 0 {
			t.Fatalf("sweep %s %v", rep, err)
		}
		if got := w.inventory(); !slices.Equal(got, othersBindings) {
			t.Errorf("left after the sweep: %q", got)
		}
		// The install's grant and the sweep's removal: the workloads' accounts hold no project role, and
		// nothing is written for them.
		if n := len(inputs[*crm.Policy](w, "projects:SetProjectPolicy")); n != 2 {
			t.Errorf("%d project policy writes", n)
		}
	})
}

// IAM makes a new account visible to policies a few seconds after creating it: the refusal is retried.
func TestNodesGrantRetriedUntilTheNewAccountIsVisible(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		w.inject["projects:SetProjectPolicy"] = []error{httpErr(400, "badRequest", "Service account "+nodesEmail+" does not exist.")}
		rep, err := install(t, w, 8)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range rep.Steps {
			if s.Name == "gcp/node-identity" && s.Attempts < 2 {
				t.Errorf("node-identity: %d attempts, want a retry", s.Attempts)
			}
		}
		if n := len(inputs[*crm.Policy](w, "projects:SetProjectPolicy")); n != 2 {
			t.Errorf("%d project policy writes, want the refused one and its retry", n)
		}
		if !slices.Contains(w.inventory(), "project binding roles/container.defaultNodeServiceAccount="+"serviceAccount:"+nodesEmail) {
			t.Errorf("no binding after the retry: %q", w.inventory())
		}
	})
}
