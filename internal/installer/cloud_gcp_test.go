package installer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"cloud.google.com/go/compute/apiv1/computepb"
	"cloud.google.com/go/container/apiv1/containerpb"
	"cloud.google.com/go/iam/admin/apiv1/adminpb"
	"cloud.google.com/go/storage"
	gax "github.com/googleapis/gax-go/v2"
	dns "google.golang.org/api/dns/v1"
	"google.golang.org/api/googleapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	gcpcloud "github.com/opstrace/opstrace/internal/installer/cloud/gcp"
	"github.com/opstrace/opstrace/internal/installer/config"
)

// emptyProject is a Google Cloud project with nothing in it but what a test puts in its lists, for the
// CLI tests: it answers the reads (Get: not found; List: the test's resources) and records them. Its
// mutating methods are the nil embedded interfaces: a dry run that called one would panic the test.
// The steps themselves are tested against fuller fakes and fake-gcs-server in cloud/gcp.
type emptyProject struct {
	gcpcloud.StorageAPI
	gcpcloud.ComputeAPI
	gcpcloud.GKEAPI
	gcpcloud.IAMAPI
	gcpcloud.DNSAPI
	mu       sync.Mutex
	calls    []string
	clusters []*containerpb.Cluster
	networks []*computepb.Network
}

func (p *emptyProject) record(op string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, op)
}

func (p *emptyProject) clients() *gcpcloud.Clients {
	return &gcpcloud.Clients{Project: "acme-prod", Region: "europe-west1",
		Storage: storageReads{p}, Compute: computeReads{p}, GKE: gkeReads{p}, IAM: iamReads{p}, DNS: dnsReads{p},
		Token: func(context.Context) (string, error) { return "", errors.New("no token in this test") }}
}

var (
	gcpNotFound  = &googleapi.Error{Code: 404, Message: "not found"}
	grpcNotFound = status.Error(codes.NotFound, "not found")
)

type storageReads struct{ *emptyProject }

func (s storageReads) Bucket(context.Context, string) (*storage.BucketAttrs, error) {
	s.record("storage:Bucket")
	return nil, storage.ErrBucketNotExist
}
func (s storageReads) ListBuckets(context.Context, string, string) ([]*storage.BucketAttrs, error) {
	s.record("storage:ListBuckets")
	return nil, nil
}

type computeReads struct{ *emptyProject }

func (c computeReads) GetNetwork(context.Context, *computepb.GetNetworkRequest) (*computepb.Network, error) {
	c.record("compute:GetNetwork")
	return nil, gcpNotFound
}
func (c computeReads) GetSubnetwork(context.Context, *computepb.GetSubnetworkRequest) (*computepb.Subnetwork, error) {
	c.record("compute:GetSubnetwork")
	return nil, gcpNotFound
}
func (c computeReads) GetRouter(context.Context, *computepb.GetRouterRequest) (*computepb.Router, error) {
	c.record("compute:GetRouter")
	return nil, gcpNotFound
}
func (c computeReads) ListNetworks(context.Context, *computepb.ListNetworksRequest) ([]*computepb.Network, error) {
	c.record("compute:ListNetworks")
	return c.networks, nil
}
func (c computeReads) ListSubnetworks(context.Context, *computepb.ListSubnetworksRequest) ([]*computepb.Subnetwork, error) {
	c.record("compute:ListSubnetworks")
	return nil, nil
}
func (c computeReads) ListRouters(context.Context, *computepb.ListRoutersRequest) ([]*computepb.Router, error) {
	c.record("compute:ListRouters")
	return nil, nil
}

type gkeReads struct{ *emptyProject }

func (g gkeReads) GetCluster(context.Context, *containerpb.GetClusterRequest, ...gax.CallOption) (*containerpb.Cluster, error) {
	g.record("gke:GetCluster")
	return nil, grpcNotFound
}
func (g gkeReads) GetNodePool(context.Context, *containerpb.GetNodePoolRequest, ...gax.CallOption) (*containerpb.NodePool, error) {
	g.record("gke:GetNodePool")
	return nil, grpcNotFound
}
func (g gkeReads) ListClusters(context.Context, *containerpb.ListClustersRequest, ...gax.CallOption) (*containerpb.ListClustersResponse, error) {
	g.record("gke:ListClusters")
	return &containerpb.ListClustersResponse{Clusters: g.clusters}, nil
}

type iamReads struct{ *emptyProject }

func (i iamReads) GetServiceAccount(context.Context, *adminpb.GetServiceAccountRequest, ...gax.CallOption) (*adminpb.ServiceAccount, error) {
	i.record("iam:GetServiceAccount")
	return nil, grpcNotFound
}
func (i iamReads) ListServiceAccounts(context.Context, *adminpb.ListServiceAccountsRequest) ([]*adminpb.ServiceAccount, error) {
	i.record("iam:ListServiceAccounts")
	return nil, nil
}

type dnsReads struct{ *emptyProject }

func (d dnsReads) ListManagedZones(context.Context, string, string) ([]*dns.ManagedZone, error) {
	d.record("dns:ListManagedZones")
	return nil, nil
}

func useGCP(t *testing.T, p *emptyProject) *[]string {
	t.Helper()
	saved := gcpClientsFunc
	t.Cleanup(func() { gcpClientsFunc = saved })
	var asked []string
	gcpClientsFunc = func(_ context.Context, project, region string) (*gcpcloud.Clients, error) {
		asked = append(asked, project+"/"+region)
		if p == nil {
			t.Error("GCP clients built for bad input")
			return nil, errors.New("no GCP in this test")
		}
		return p.clients(), nil
	}
	return &asked
}

// Bad input is refused before any Google Cloud call: the client constructor fails the test if reached.
func TestGCPCommandsRefuseBadInputBeforeCallingGCP(t *testing.T) {
	useGCP(t, nil)
	for _, tc := range []struct {
		stdin string
		args  []string
		want  string
	}{
		{"", []string{"create", "gcp", "Prod_1", "-c", "-"}, `cluster name "Prod_1" is invalid`},
		{"", []string{"create", "gcp", "prod"}, "no config file: pass -c FILE"},
		{"node_count: 3\n", []string{"create", "gcp", "prod", "-c", "-"}, "gcp.project"},
		{"gcp: {project: acme-prod, machine_type: 7}\nbogus: 1\n", []string{"create", "gcp", "prod", "-c", "-"}, "bogus"},
		{"aws: {region: us-west-2}\n", []string{"create", "gcp", "prod", "-c", "-"}, "aws"},
		{"", []string{"destroy", "gcp", "prod", "--yes"}, "--project is required"},
		{"", []string{"list", "gcp"}, "--project is required"},
		{"", []string{"status", "gcp", "prod"}, "--project is required"},
		{"", []string{"destroy", "gcp", "prod-", "--project", "acme-prod"}, `cluster name "prod-" is invalid`},
	} {
		_, err := runCLI(t, tc.stdin, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}

// create gcp --dry-run prints the plan, in order with what depends on what, and changes nothing; without
// --yes an answer other than yes creates nothing.
func TestCreateGCPDryRunAndConfirmation(t *testing.T) {
	p := &emptyProject{}
	asked := useGCP(t, p)
	file := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(file, []byte("node_count: 6\ngcp: {project: acme-prod, region: europe-west1}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runCLI(t, "", "create", "gcp", "prod", "-c", file, "--dry-run")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{
		"GCP cluster prod in project acme-prod, europe-west1",
		"+ gcp/bucket-metrics", "lifecycle: objects deleted after 30 days", "public access prevention enforced",
		"+ gcp/network", "+ gcp/subnet", "secondary ranges: pods 10.4.0.0/14, services 10.8.0.0/20",
		"Cloud NAT opstrace-prod-nat",
		"+ gcp/gke-cluster", "workload identity pool acme-prod.svc.id.goog", "2 × n2-standard-4 per zone in 3 zones (6 nodes for node_count 6)",
		"+ gcp/cortex-identity", "roles/iam.workloadIdentityUser for serviceAccount:acme-prod.svc.id.goog[opstrace/prod-cortex]",
		"roles/storage.objectAdmin on bucket opstrace-prod-metrics only",
		"+ kubernetes/opstrace",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan lacks %q:\n%s", want, out)
		}
	}
	if strings.Index(out, "gcp/network") > strings.Index(out, "gcp/gke-cluster") {
		t.Errorf("plan not in dependency order:\n%s", out)
	}
	if len(*asked) != 1 || (*asked)[0] != "acme-prod/europe-west1" {
		t.Errorf("clients for %v", *asked)
	}

	out, err = runCLI(t, "n\n", "create", "gcp", "prod", "-c", file)
	if err == nil || !strings.Contains(err.Error(), "not confirmed; nothing was created") || !strings.Contains(out, "Create these resources? [y/N]") {
		t.Errorf("refused confirmation: %v\n%s", err, out)
	}
	for _, c := range p.calls {
		if !strings.Contains(c, ":Get") && !strings.Contains(c, ":List") && c != "storage:Bucket" {
			t.Errorf("dry run or refused create called %s", c)
		}
	}
}

func TestListGCPFindsClustersByLabel(t *testing.T) {
	p := &emptyProject{
		clusters: []*containerpb.Cluster{{Name: "prod", Location: "europe-west1", ResourceLabels: map[string]string{"opstrace-io-cluster": "prod"}},
			{Name: "theirs", Location: "us-central1"}},
		networks: []*computepb.Network{{Name: proto.String("opstrace-prod-network"), Description: proto.String("opstrace-io-cluster=prod")},
			{Name: proto.String("opstrace-dev-network"), Description: proto.String("opstrace-io-cluster=dev")}},
	}
	useGCP(t, p)
	out, err := runCLI(t, "", "list", "gcp", "--project", "acme-prod")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[1], "dev ") || !strings.Contains(lines[2], "prod") ||
		!strings.Contains(lines[2], "europe-west1/prod") || strings.Contains(out, "theirs") {
		t.Errorf("list:\n%s", out)
	}
}

// destroy gcp --dry-run of a cluster that is not there: nothing to delete, the sweep would remove the
// labelled leftovers, and nothing is deleted.
func TestDestroyGCPDryRun(t *testing.T) {
	p := &emptyProject{networks: []*computepb.Network{{Name: proto.String("opstrace-prod-network"), Description: proto.String("opstrace-io-cluster=prod")}}}
	useGCP(t, p)
	out, err := runCLI(t, "", "destroy", "gcp", "prod", "--project", "acme-prod", "--dry-run")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(out, "Destroy GCP cluster prod in project acme-prod, "+config.DefaultGCPRegion) ||
		!strings.Contains(out, "sweep: would remove compute:network opstrace-prod-network") {
		t.Errorf("destroy --dry-run:\n%s", out)
	}
}

// The MetricsCluster of a GCP install stores metrics in the GCS bucket the steps made, logs in the logs
// bucket, and gives Cortex and Loki their own Google service account through workload identity.
func TestGCPWorkloadUsesTheBucketsAndServiceAccounts(t *testing.T) {
	cfg, err := config.Parse([]byte("gcp: {project: acme-prod}\n"), config.ProviderGCP)
	if err != nil {
		t.Fatal(err)
	}
	w := gcpWorkload(&gcpcloud.Clients{Project: "acme-prod", Region: "us-west2"}, "prod", cfg)
	var mc *v1alpha1.MetricsCluster
	for _, o := range BuildCloudObjects(w, "opstrace") {
		if m, ok := o.(*v1alpha1.MetricsCluster); ok {
			mc = m
		}
	}
	if mc == nil {
		t.Fatal("no MetricsCluster")
	}
	if mc.Spec.Storage.Type != v1alpha1.StorageGCS || mc.Spec.Storage.GCS.Bucket != "opstrace-prod-metrics" || mc.Spec.Storage.GCS.CredentialsSecret != nil {
		t.Errorf("storage %+v", mc.Spec.Storage)
	}
	if mc.Spec.Logs.Storage.Bucket != "opstrace-prod-logs" {
		t.Errorf("logs storage %+v", mc.Spec.Logs.Storage)
	}
	if got := mc.Spec.ServiceAccounts.Cortex.Annotations["iam.gke.io/gcp-service-account"]; got != "opstrace-prod-cortex@acme-prod.iam.gserviceaccount.com" {
		t.Errorf("cortex identity %q", got)
	}
	if got := mc.Spec.ServiceAccounts.Loki.Annotations["iam.gke.io/gcp-service-account"]; got != "opstrace-prod-loki@acme-prod.iam.gserviceaccount.com" {
		t.Errorf("loki identity %q", got)
	}
}
