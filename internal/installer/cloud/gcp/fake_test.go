package gcp

// An in-memory Google Cloud for the APIs that cannot run offline (Compute Engine, GKE, IAM), at the
// narrow interfaces of api.go: every call is recorded with its request so tests assert the exact
// requests, GKE clusters and node pools become ready after a simulated latency (in synctest's fake time),
// and faults are injected per call. GCS is tested against fake-gcs-server (gcs_test.go); fakeStorage
// exists only for the whole-install tests that run in fake time, which a server's real I/O would not
// follow.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/compute/apiv1/computepb"
	"cloud.google.com/go/container/apiv1/containerpb"
	"cloud.google.com/go/iam"
	admin "cloud.google.com/go/iam/admin/apiv1"
	"cloud.google.com/go/iam/admin/apiv1/adminpb"
	"cloud.google.com/go/iam/apiv1/iampb"
	"cloud.google.com/go/storage"
	gax "github.com/googleapis/gax-go/v2"
	crm "google.golang.org/api/cloudresourcemanager/v3"
	"google.golang.org/api/googleapi"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

var errKilled = errors.New("simulated kill -9 of the installer")

// Errors as the real APIs return them: googleapi.Error from the JSON APIs (compute, storage), gRPC
// status from GKE and IAM.
func httpErr(code int, reason, msg string) error {
	e := &googleapi.Error{Code: code, Message: msg}
	if reason != "" {
		e.Errors = []googleapi.ErrorItem{{Reason: reason, Message: msg}}
	}
	return e
}

func grpcErr(code codes.Code, msg string) error { return status.Error(code, msg) }

// grpcDenied is a PERMISSION_DENIED as GKE and IAM send it: the permission in an ErrorInfo.
func grpcDenied(permission string) error {
	st, _ := status.New(codes.PermissionDenied, "Permission '"+permission+"' denied on resource (or it may not exist).").
		WithDetails(&errdetails.ErrorInfo{Reason: "IAM_PERMISSION_DENIED", Domain: "iam.googleapis.com",
			Metadata: map[string]string{"permission": permission}})
	return st.Err()
}

type request struct {
	Op    string
	Input any
}

// world is the fake project.
type world struct {
	mu       sync.Mutex
	project  string
	region   string
	requests []request
	// Faults: inject[op] errors are returned (before the call has any effect) by the next calls of op.
	inject map[string][]error
	// killAfter > 0: the killAfter-th mutating call takes effect, then it and every later call fail with
	// errKilled, as when the process dies after Google accepted a request.
	killAfter, mutations int
	dead                 bool
	// latency by kind: "gke" (cluster ready), "nodepool" (pool made or resized), "op" (a compute
	// operation), and "call" (every call).
	latency map[string]time.Duration

	networks map[string]*computepb.Network
	subnets  map[string]*computepb.Subnetwork
	routers  map[string]*computepb.Router
	clusters map[string]*fcluster
	sas      map[string]*fsa // by email
	buckets  map[string]*fbucket
	dnsZones map[string]*fdnszone // Cloud DNS managed zones by name (fake_clouddns_test.go)
	policy   *crm.Policy          // the project's IAM policy (fakeProjects)
}

type fcluster struct {
	c        *containerpb.Cluster
	readyAt  time.Time
	deleteAt time.Time
	deleting bool
	pools    map[string]*fpool
}

type fpool struct {
	np      *containerpb.NodePool
	readyAt time.Time
	size    int32
}

type fsa struct {
	sa     *adminpb.ServiceAccount
	policy *iampb.Policy
}

type fbucket struct {
	attrs   storage.BucketAttrs
	policy  *iampb.Policy
	objects int
}

func newWorld() *world {
	return &world{project: "acme-prod", region: "europe-west1", inject: map[string][]error{}, latency: map[string]time.Duration{},
		networks: map[string]*computepb.Network{}, subnets: map[string]*computepb.Subnetwork{}, routers: map[string]*computepb.Router{},
		clusters: map[string]*fcluster{}, sas: map[string]*fsa{}, buckets: map[string]*fbucket{}, dnsZones: map[string]*fdnszone{},
		// Someone else's bindings, which every write must keep: an unconditional one and a conditional one
		// (read and written back only with policy version 3).
		policy: &crm.Policy{Version: 3, Etag: "BwY1", Bindings: []*crm.Binding{
			{Role: "roles/owner", Members: []string{"user:ops@acme.example"}},
			{Role: "roles/container.defaultNodeServiceAccount", Members: []string{"serviceAccount:other@acme-prod.iam.gserviceaccount.com"},
				Condition: &crm.Expr{Title: "weekdays", Expression: "request.time.getDayOfWeek() < 5"}},
		}}}
}

func (w *world) clients() *Clients {
	return &Clients{Project: w.project, Region: w.region, Storage: (*fakeStorage)(w), Compute: (*fakeCompute)(w),
		GKE: (*fakeGKE)(w), IAM: (*fakeIAM)(w), DNS: (*fakeDNS)(w), Projects: (*fakeProjects)(w), PollInterval: 10 * time.Second}
}

// call records a request and applies the faults; it returns with w.mu held (release with w.done).
func (w *world) call(op string, in any) error {
	w.mu.Lock()
	w.requests = append(w.requests, request{op, in})
	if w.dead {
		w.mu.Unlock()
		return errKilled
	}
	if errs := w.inject[op]; len(errs) > 0 {
		w.inject[op] = errs[1:]
		w.mu.Unlock()
		return errs[0]
	}
	w.mu.Unlock()
	if d := w.latency["call"]; d > 0 {
		time.Sleep(d)
	}
	w.mu.Lock()
	return nil
}

// done ends a call; a mutating call may be the one after which the installer is killed.
func (w *world) done(mutating bool) error {
	defer w.mu.Unlock()
	if mutating {
		w.mutations++
		if w.killAfter > 0 && w.mutations == w.killAfter {
			w.dead = true
			return errKilled
		}
	}
	return nil
}

// operation ends a mutating compute call, which waits for its operation.
func (w *world) operation() error {
	if err := w.done(true); err != nil {
		return err
	}
	if d := w.latency["op"]; d > 0 {
		time.Sleep(d)
	}
	return nil
}

func last(path string) string { return path[strings.LastIndex(path, "/")+1:] }

// inputs returns the requests of every call of op.
func inputs[T any](w *world, op string) []T {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []T
	for _, r := range w.requests {
		if r.Op == op {
			out = append(out, r.Input.(T))
		}
	}
	return out
}

func (w *world) ops() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, r := range w.requests {
		out = append(out, r.Op)
	}
	return out
}

func isMutation(op string) bool {
	verb := op[strings.Index(op, ":")+1:]
	return !strings.HasPrefix(verb, "Get") && !strings.HasPrefix(verb, "List") && verb != "Bucket" && verb != "BucketPolicy" && verb != "ProjectPolicy"
}

// inventory is every resource in the world, for comparing runs.
func (w *world) inventory() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, n := range w.networks {
		out = append(out, fmt.Sprintf("network %s %q auto=%v", n.GetName(), n.GetDescription(), n.GetAutoCreateSubnetworks()))
	}
	for _, s := range w.subnets {
		out = append(out, fmt.Sprintf("subnet %s %q %s ranges=%d pga=%v", s.GetName(), s.GetDescription(), s.GetIpCidrRange(), len(s.GetSecondaryIpRanges()), s.GetPrivateIpGoogleAccess()))
	}
	for _, r := range w.routers {
		out = append(out, fmt.Sprintf("router %s %q nats=%d", r.GetName(), r.GetDescription(), len(r.GetNats())))
	}
	for _, c := range w.clusters {
		out = append(out, fmt.Sprintf("gke %s labels=%v deleting=%v", c.c.GetName(), c.c.GetResourceLabels(), c.deleting))
		for _, p := range c.pools {
			out = append(out, fmt.Sprintf("gke %s pool %s size=%d autoscaling=%d..%d", c.c.GetName(), p.np.GetName(), p.size,
				p.np.GetAutoscaling().GetMinNodeCount(), p.np.GetAutoscaling().GetMaxNodeCount()))
		}
	}
	for email, sa := range w.sas {
		var b []string
		for _, x := range sa.policy.GetBindings() {
			b = append(b, x.GetRole()+"="+strings.Join(x.GetMembers(), ","))
		}
		out = append(out, fmt.Sprintf("sa %s %q %v", email, sa.sa.GetDescription(), b))
	}
	for name, b := range w.buckets {
		var pol []string
		for _, x := range b.policy.GetBindings() {
			pol = append(pol, x.GetRole()+"="+strings.Join(x.GetMembers(), ","))
		}
		out = append(out, fmt.Sprintf("bucket %s labels=%v rules=%d ubla=%v pap=%v policy=%v objects=%d", name, b.attrs.Labels,
			len(b.attrs.Lifecycle.Rules), b.attrs.UniformBucketLevelAccess.Enabled, b.attrs.PublicAccessPrevention, pol, b.objects))
	}
	for _, b := range w.policy.Bindings {
		cond := ""
		if b.Condition != nil {
			cond = " if " + b.Condition.Expression
		}
		out = append(out, fmt.Sprintf("project binding %s=%s%s", b.Role, strings.Join(b.Members, ","), cond))
	}
	for name, z := range w.dnsZones {
		for _, r := range z.records {
			out = append(out, fmt.Sprintf("record %s %s %s %s", name, r.Name, r.Type, strings.Join(r.Rrdatas, " ")))
		}
		for _, b := range z.policy.Bindings {
			out = append(out, fmt.Sprintf("zone %s binding %s=%s", name, b.Role, strings.Join(b.Members, ",")))
		}
	}
	sort.Strings(out)
	return out
}

// othersBindings are the inventory lines of the project bindings newWorld starts with: someone else's,
// which every run must leave as they are.
var othersBindings = []string{
	"project binding roles/container.defaultNodeServiceAccount=serviceAccount:other@acme-prod.iam.gserviceaccount.com if request.time.getDayOfWeek() < 5",
	"project binding roles/owner=user:ops@acme.example",
}

// withOthers is an inventory of lines and of othersBindings, sorted as inventory sorts.
func withOthers(lines ...string) []string {
	out := append(slices.Clone(othersBindings), lines...)
	sort.Strings(out)
	return out
}

func notFound(what string) error {
	return httpErr(404, "notFound", "The resource '"+what+"' was not found")
}

// fakeCompute: networks, subnetworks, routers.
type fakeCompute world

func (f *fakeCompute) w() *world { return (*world)(f) }

func (f *fakeCompute) GetNetwork(_ context.Context, req *computepb.GetNetworkRequest) (*computepb.Network, error) {
	w := f.w()
	if err := w.call("compute:GetNetwork", req); err != nil {
		return nil, err
	}
	defer w.done(false)
	n := w.networks[req.GetNetwork()]
	if n == nil {
		return nil, notFound("projects/" + req.GetProject() + "/global/networks/" + req.GetNetwork())
	}
	return proto.Clone(n).(*computepb.Network), nil
}

func (f *fakeCompute) InsertNetwork(_ context.Context, req *computepb.InsertNetworkRequest) error {
	w := f.w()
	if err := w.call("compute:InsertNetwork", req); err != nil {
		return err
	}
	n := req.GetNetworkResource()
	if w.networks[n.GetName()] != nil {
		w.done(false)
		return httpErr(409, "alreadyExists", "The resource '"+n.GetName()+"' already exists")
	}
	n = proto.Clone(n).(*computepb.Network)
	n.SelfLink = proto.String("https://www.googleapis.com/compute/v1/projects/" + req.GetProject() + "/global/networks/" + n.GetName())
	w.networks[n.GetName()] = n
	return w.operation()
}

func (f *fakeCompute) DeleteNetwork(_ context.Context, req *computepb.DeleteNetworkRequest) error {
	w := f.w()
	if err := w.call("compute:DeleteNetwork", req); err != nil {
		return err
	}
	if w.networks[req.GetNetwork()] == nil {
		w.done(false)
		return notFound(req.GetNetwork())
	}
	link := w.networks[req.GetNetwork()].GetSelfLink()
	for _, s := range w.subnets {
		if s.GetNetwork() != "" && strings.HasSuffix(link, s.GetNetwork()) {
			w.done(false)
			return httpErr(400, "resourceInUseByAnotherResource", "The network resource '"+req.GetNetwork()+"' is already being used by '"+s.GetName()+"'")
		}
	}
	for _, r := range w.routers {
		if r.GetNetwork() != "" && strings.HasSuffix(link, r.GetNetwork()) {
			w.done(false)
			return httpErr(400, "resourceInUseByAnotherResource", "The network resource '"+req.GetNetwork()+"' is already being used by '"+r.GetName()+"'")
		}
	}
	delete(w.networks, req.GetNetwork())
	return w.operation()
}

func (f *fakeCompute) ListNetworks(_ context.Context, req *computepb.ListNetworksRequest) ([]*computepb.Network, error) {
	w := f.w()
	if err := w.call("compute:ListNetworks", req); err != nil {
		return nil, err
	}
	defer w.done(false)
	var out []*computepb.Network
	for _, n := range w.networks {
		out = append(out, proto.Clone(n).(*computepb.Network))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out, nil
}

func (f *fakeCompute) GetSubnetwork(_ context.Context, req *computepb.GetSubnetworkRequest) (*computepb.Subnetwork, error) {
	w := f.w()
	if err := w.call("compute:GetSubnetwork", req); err != nil {
		return nil, err
	}
	defer w.done(false)
	s := w.subnets[req.GetSubnetwork()]
	if s == nil {
		return nil, notFound(req.GetSubnetwork())
	}
	return proto.Clone(s).(*computepb.Subnetwork), nil
}

func (f *fakeCompute) InsertSubnetwork(_ context.Context, req *computepb.InsertSubnetworkRequest) error {
	w := f.w()
	if err := w.call("compute:InsertSubnetwork", req); err != nil {
		return err
	}
	s := req.GetSubnetworkResource()
	if w.networks[last(s.GetNetwork())] == nil {
		w.done(false)
		return notFound(s.GetNetwork())
	}
	if w.subnets[s.GetName()] != nil {
		w.done(false)
		return httpErr(409, "alreadyExists", "The resource '"+s.GetName()+"' already exists")
	}
	s = proto.Clone(s).(*computepb.Subnetwork)
	s.SelfLink = proto.String("https://www.googleapis.com/compute/v1/projects/" + req.GetProject() + "/regions/" + req.GetRegion() + "/subnetworks/" + s.GetName())
	w.subnets[s.GetName()] = s
	return w.operation()
}

func (f *fakeCompute) DeleteSubnetwork(_ context.Context, req *computepb.DeleteSubnetworkRequest) error {
	w := f.w()
	if err := w.call("compute:DeleteSubnetwork", req); err != nil {
		return err
	}
	if w.subnets[req.GetSubnetwork()] == nil {
		w.done(false)
		return notFound(req.GetSubnetwork())
	}
	for _, c := range w.clusters {
		if c.c.GetSubnetwork() == req.GetSubnetwork() {
			w.done(false)
			return httpErr(400, "resourceInUseByAnotherResource", "The subnetwork resource '"+req.GetSubnetwork()+"' is already being used by GKE cluster "+c.c.GetName())
		}
	}
	delete(w.subnets, req.GetSubnetwork())
	return w.operation()
}

func (f *fakeCompute) ListSubnetworks(_ context.Context, req *computepb.ListSubnetworksRequest) ([]*computepb.Subnetwork, error) {
	w := f.w()
	if err := w.call("compute:ListSubnetworks", req); err != nil {
		return nil, err
	}
	defer w.done(false)
	var out []*computepb.Subnetwork
	for _, s := range w.subnets {
		out = append(out, proto.Clone(s).(*computepb.Subnetwork))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out, nil
}

func (f *fakeCompute) GetRouter(_ context.Context, req *computepb.GetRouterRequest) (*computepb.Router, error) {
	w := f.w()
	if err := w.call("compute:GetRouter", req); err != nil {
		return nil, err
	}
	defer w.done(false)
	r := w.routers[req.GetRouter()]
	if r == nil {
		return nil, notFound(req.GetRouter())
	}
	return proto.Clone(r).(*computepb.Router), nil
}

func (f *fakeCompute) InsertRouter(_ context.Context, req *computepb.InsertRouterRequest) error {
	w := f.w()
	if err := w.call("compute:InsertRouter", req); err != nil {
		return err
	}
	r := req.GetRouterResource()
	if w.networks[last(r.GetNetwork())] == nil {
		w.done(false)
		return notFound(r.GetNetwork())
	}
	if w.routers[r.GetName()] != nil {
		w.done(false)
		return httpErr(409, "alreadyExists", "The resource '"+r.GetName()+"' already exists")
	}
	r = proto.Clone(r).(*computepb.Router)
	w.routers[r.GetName()] = r
	return w.operation()
}

func (f *fakeCompute) PatchRouter(_ context.Context, req *computepb.PatchRouterRequest) error {
	w := f.w()
	if err := w.call("compute:PatchRouter", req); err != nil {
		return err
	}
	r := w.routers[req.GetRouter()]
	if r == nil {
		w.done(false)
		return notFound(req.GetRouter())
	}
	r.Nats = req.GetRouterResource().GetNats()
	return w.operation()
}

func (f *fakeCompute) DeleteRouter(_ context.Context, req *computepb.DeleteRouterRequest) error {
	w := f.w()
	if err := w.call("compute:DeleteRouter", req); err != nil {
		return err
	}
	if w.routers[req.GetRouter()] == nil {
		w.done(false)
		return notFound(req.GetRouter())
	}
	delete(w.routers, req.GetRouter())
	return w.operation()
}

func (f *fakeCompute) ListRouters(_ context.Context, req *computepb.ListRoutersRequest) ([]*computepb.Router, error) {
	w := f.w()
	if err := w.call("compute:ListRouters", req); err != nil {
		return nil, err
	}
	defer w.done(false)
	var out []*computepb.Router
	for _, r := range w.routers {
		out = append(out, proto.Clone(r).(*computepb.Router))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out, nil
}

// fakeGKE: clusters and node pools, ready after their latency.
type fakeGKE world

func (f *fakeGKE) w() *world { return (*world)(f) }

// cluster returns the cluster of a path, removing it once its deletion is over. Call with w.mu held.
func (w *world) cluster(path string) *fcluster {
	parts := strings.Split(path, "/") // projects/P/locations/L/clusters/C[/nodePools/N]
	if len(parts) < 6 {
		return nil
	}
	c := w.clusters[parts[5]]
	if c != nil && c.deleting && !time.Now().Before(c.deleteAt) {
		delete(w.clusters, parts[5])
		return nil
	}
	return c
}

func (c *fcluster) view() *containerpb.Cluster {
	out := proto.Clone(c.c).(*containerpb.Cluster)
	switch {
	case c.deleting:
		out.Status = containerpb.Cluster_STOPPING
	case time.Now().Before(c.readyAt):
		out.Status = containerpb.Cluster_PROVISIONING
	default:
		out.Status = containerpb.Cluster_RUNNING
		out.Endpoint = "34.0.0.1"
		out.MasterAuth = &containerpb.MasterAuth{ClusterCaCertificate: base64.StdEncoding.EncodeToString([]byte("CLUSTER CA"))}
	}
	out.NodePools = nil
	for _, p := range c.pools {
		out.NodePools = append(out.NodePools, p.view())
	}
	return out
}

func (p *fpool) view() *containerpb.NodePool {
	out := proto.Clone(p.np).(*containerpb.NodePool)
	out.Status = containerpb.NodePool_RUNNING
	if time.Now().Before(p.readyAt) {
		out.Status = containerpb.NodePool_PROVISIONING
		if p.np.Status == containerpb.NodePool_RECONCILING {
			out.Status = containerpb.NodePool_RECONCILING
		}
	}
	return out
}

func (f *fakeGKE) GetCluster(_ context.Context, req *containerpb.GetClusterRequest, _ ...gax.CallOption) (*containerpb.Cluster, error) {
	w := f.w()
	if err := w.call("gke:GetCluster", req); err != nil {
		return nil, err
	}
	defer w.done(false)
	c := w.cluster(req.GetName())
	if c == nil {
		return nil, grpcErr(codes.NotFound, "Not found: "+req.GetName())
	}
	return c.view(), nil
}

func (f *fakeGKE) CreateCluster(_ context.Context, req *containerpb.CreateClusterRequest, _ ...gax.CallOption) (*containerpb.Operation, error) {
	w := f.w()
	if err := w.call("gke:CreateCluster", req); err != nil {
		return nil, err
	}
	in := req.GetCluster()
	if w.cluster(req.GetParent()+"/clusters/"+in.GetName()) != nil {
		w.done(false)
		return nil, grpcErr(codes.AlreadyExists, "Already exists: "+in.GetName())
	}
	sn := w.subnets[in.GetSubnetwork()]
	if w.networks[in.GetNetwork()] == nil || sn == nil || len(sn.GetSecondaryIpRanges()) != 2 {
		w.done(false)
		return nil, grpcErr(codes.InvalidArgument, "network or subnetwork with its secondary ranges not found")
	}
	for _, p := range in.GetNodePools() {
		if err := w.nodeAccount(p); err != nil {
			w.done(false)
			return nil, err
		}
	}
	c := &fcluster{c: proto.Clone(in).(*containerpb.Cluster), readyAt: time.Now().Add(w.latency["gke"]), pools: map[string]*fpool{}}
	c.c.Location = last(req.GetParent())
	c.c.SelfLink = "https://container.googleapis.com/v1/" + req.GetParent() + "/clusters/" + in.GetName()
	for _, p := range in.GetNodePools() {
		c.pools[p.GetName()] = &fpool{np: proto.Clone(p).(*containerpb.NodePool), readyAt: c.readyAt, size: p.GetInitialNodeCount()}
	}
	c.c.NodePools = nil
	w.clusters[in.GetName()] = c
	return &containerpb.Operation{Name: "operation-create-" + in.GetName()}, w.done(true)
}

func (f *fakeGKE) DeleteCluster(_ context.Context, req *containerpb.DeleteClusterRequest, _ ...gax.CallOption) (*containerpb.Operation, error) {
	w := f.w()
	if err := w.call("gke:DeleteCluster", req); err != nil {
		return nil, err
	}
	c, err := w.idleCluster(req.GetName())
	if err != nil {
		w.done(false)
		return nil, err
	}
	c.deleting, c.deleteAt = true, time.Now().Add(w.latency["gke"]/2)
	return &containerpb.Operation{Name: "operation-delete"}, w.done(true)
}

func (f *fakeGKE) ListClusters(_ context.Context, req *containerpb.ListClustersRequest, _ ...gax.CallOption) (*containerpb.ListClustersResponse, error) {
	w := f.w()
	if err := w.call("gke:ListClusters", req); err != nil {
		return nil, err
	}
	defer w.done(false)
	out := &containerpb.ListClustersResponse{}
	var names []string
	for name := range w.clusters {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if c := w.cluster("projects/p/locations/l/clusters/" + name); c != nil {
			out.Clusters = append(out.Clusters, c.view())
		}
	}
	return out, nil
}

func (w *world) pool(path string) (*fcluster, *fpool, error) {
	c := w.cluster(path)
	if c == nil {
		return nil, nil, grpcErr(codes.NotFound, "Not found: "+path)
	}
	p := c.pools[last(path)]
	if p == nil {
		return c, nil, grpcErr(codes.NotFound, "Not found: "+path)
	}
	return c, p, nil
}

func (f *fakeGKE) GetNodePool(_ context.Context, req *containerpb.GetNodePoolRequest, _ ...gax.CallOption) (*containerpb.NodePool, error) {
	w := f.w()
	if err := w.call("gke:GetNodePool", req); err != nil {
		return nil, err
	}
	defer w.done(false)
	_, p, err := w.pool(req.GetName())
	if err != nil {
		return nil, err
	}
	return p.view(), nil
}

func (f *fakeGKE) CreateNodePool(_ context.Context, req *containerpb.CreateNodePoolRequest, _ ...gax.CallOption) (*containerpb.Operation, error) {
	w := f.w()
	if err := w.call("gke:CreateNodePool", req); err != nil {
		return nil, err
	}
	c := w.cluster(req.GetParent())
	if c == nil || c.deleting || time.Now().Before(c.readyAt) {
		w.done(false)
		return nil, grpcErr(codes.FailedPrecondition, "cluster is not running")
	}
	np := req.GetNodePool()
	if err := w.nodeAccount(np); err != nil {
		w.done(false)
		return nil, err
	}
	if c.pools[np.GetName()] != nil {
		w.done(false)
		return nil, grpcErr(codes.AlreadyExists, "Already exists: "+np.GetName())
	}
	c.pools[np.GetName()] = &fpool{np: proto.Clone(np).(*containerpb.NodePool), readyAt: time.Now().Add(w.latency["nodepool"]), size: np.GetInitialNodeCount()}
	return &containerpb.Operation{Name: "operation-create-pool"}, w.done(true)
}

// idleCluster is the cluster of a path if no operation runs on it: GKE refuses another one meanwhile.
// Call with w.mu held.
func (w *world) idleCluster(path string) (*fcluster, error) {
	c := w.cluster(path)
	if c == nil {
		return nil, grpcErr(codes.NotFound, "Not found: "+path)
	}
	if c.deleting || time.Now().Before(c.readyAt) {
		return nil, grpcErr(codes.FailedPrecondition, "Cluster is running incompatible operation")
	}
	return c, nil
}

// nodeAccount refuses a node pool whose service account does not exist, as GKE does. Call with w.mu held.
func (w *world) nodeAccount(np *containerpb.NodePool) error {
	if sa := np.GetConfig().GetServiceAccount(); sa != "" && w.sas[sa] == nil {
		return grpcErr(codes.InvalidArgument, "Service account \""+sa+"\" does not exist.")
	}
	return nil
}

func (f *fakeGKE) UpdateCluster(_ context.Context, req *containerpb.UpdateClusterRequest, _ ...gax.CallOption) (*containerpb.Operation, error) {
	w := f.w()
	if err := w.call("gke:UpdateCluster", req); err != nil {
		return nil, err
	}
	c, err := w.idleCluster(req.GetName())
	if err != nil {
		w.done(false)
		return nil, err
	}
	if m := req.GetUpdate().GetDesiredMasterAuthorizedNetworksConfig(); m != nil {
		c.c.MasterAuthorizedNetworksConfig = proto.Clone(m).(*containerpb.MasterAuthorizedNetworksConfig)
	}
	c.readyAt = time.Now().Add(w.latency["op"]) // busy while GKE reconfigures the control plane
	return &containerpb.Operation{Name: "operation-update"}, w.done(true)
}

func (f *fakeGKE) busy(p *fpool) error {
	if time.Now().Before(p.readyAt) {
		return grpcErr(codes.FailedPrecondition, "Operation is already in progress on the node pool")
	}
	return nil
}

func (f *fakeGKE) SetNodePoolSize(_ context.Context, req *containerpb.SetNodePoolSizeRequest, _ ...gax.CallOption) (*containerpb.Operation, error) {
	w := f.w()
	if err := w.call("gke:SetNodePoolSize", req); err != nil {
		return nil, err
	}
	_, p, err := w.pool(req.GetName())
	if err == nil {
		err = f.busy(p)
	}
	if err != nil {
		w.done(false)
		return nil, err
	}
	p.size = req.GetNodeCount()
	p.np.Status = containerpb.NodePool_RECONCILING
	p.readyAt = time.Now().Add(w.latency["nodepool"])
	return &containerpb.Operation{Name: "operation-resize"}, w.done(true)
}

func (f *fakeGKE) SetNodePoolAutoscaling(_ context.Context, req *containerpb.SetNodePoolAutoscalingRequest, _ ...gax.CallOption) (*containerpb.Operation, error) {
	w := f.w()
	if err := w.call("gke:SetNodePoolAutoscaling", req); err != nil {
		return nil, err
	}
	_, p, err := w.pool(req.GetName())
	if err == nil {
		err = f.busy(p)
	}
	if err != nil {
		w.done(false)
		return nil, err
	}
	p.np.Autoscaling = proto.Clone(req.GetAutoscaling()).(*containerpb.NodePoolAutoscaling)
	return &containerpb.Operation{Name: "operation-autoscaling"}, w.done(true)
}

// fakeIAM: service accounts and their policies.
type fakeIAM world

func (f *fakeIAM) w() *world { return (*world)(f) }

func (f *fakeIAM) GetServiceAccount(_ context.Context, req *adminpb.GetServiceAccountRequest, _ ...gax.CallOption) (*adminpb.ServiceAccount, error) {
	w := f.w()
	if err := w.call("iam:GetServiceAccount", req); err != nil {
		return nil, err
	}
	defer w.done(false)
	sa := w.sas[last(req.GetName())]
	if sa == nil {
		return nil, grpcErr(codes.NotFound, "Service account "+req.GetName()+" does not exist.")
	}
	return proto.Clone(sa.sa).(*adminpb.ServiceAccount), nil
}

func (f *fakeIAM) CreateServiceAccount(_ context.Context, req *adminpb.CreateServiceAccountRequest, _ ...gax.CallOption) (*adminpb.ServiceAccount, error) {
	w := f.w()
	if err := w.call("iam:CreateServiceAccount", req); err != nil {
		return nil, err
	}
	email := req.GetAccountId() + "@" + last(req.GetName()) + ".iam.gserviceaccount.com"
	if w.sas[email] != nil {
		w.done(false)
		return nil, grpcErr(codes.AlreadyExists, "Service account "+req.GetAccountId()+" already exists within project "+req.GetName()+".")
	}
	sa := proto.Clone(req.GetServiceAccount()).(*adminpb.ServiceAccount)
	sa.Email, sa.Name = email, req.GetName()+"/serviceAccounts/"+email
	w.sas[email] = &fsa{sa: sa, policy: &iampb.Policy{Etag: []byte("1")}}
	return proto.Clone(sa).(*adminpb.ServiceAccount), w.done(true)
}

func (f *fakeIAM) DeleteServiceAccount(_ context.Context, req *adminpb.DeleteServiceAccountRequest, _ ...gax.CallOption) error {
	w := f.w()
	if err := w.call("iam:DeleteServiceAccount", req); err != nil {
		return err
	}
	if w.sas[last(req.GetName())] == nil {
		w.done(false)
		return grpcErr(codes.NotFound, "Service account "+req.GetName()+" does not exist.")
	}
	delete(w.sas, last(req.GetName()))
	return w.done(true)
}

func (f *fakeIAM) GetIamPolicy(_ context.Context, req *iampb.GetIamPolicyRequest) (*iam.Policy, error) {
	w := f.w()
	if err := w.call("iam:GetIamPolicy", req); err != nil {
		return nil, err
	}
	defer w.done(false)
	sa := w.sas[last(req.GetResource())]
	if sa == nil {
		return nil, grpcErr(codes.NotFound, "Service account "+req.GetResource()+" does not exist.")
	}
	return &iam.Policy{InternalProto: proto.Clone(sa.policy).(*iampb.Policy)}, nil
}

func (f *fakeIAM) SetIamPolicy(_ context.Context, req *admin.SetIamPolicyRequest) (*iam.Policy, error) {
	w := f.w()
	if err := w.call("iam:SetIamPolicy", req); err != nil {
		return nil, err
	}
	sa := w.sas[last(req.Resource)]
	if sa == nil {
		w.done(false)
		return nil, grpcErr(codes.NotFound, "Service account "+req.Resource+" does not exist.")
	}
	p := req.Policy.InternalProto
	if string(p.GetEtag()) != string(sa.policy.GetEtag()) {
		w.done(false)
		return nil, grpcErr(codes.Aborted, "There were concurrent policy changes.")
	}
	// IAM refuses members of a workload identity pool that does not exist yet: the pool comes with the
	// first GKE cluster of the project that enables workload identity, once it runs.
	for _, b := range p.GetBindings() {
		for _, m := range b.GetMembers() {
			if pool, ok := strings.CutPrefix(m, "serviceAccount:"); ok && strings.Contains(pool, ".svc.id.goog[") && !w.poolExists(pool[:strings.Index(pool, "[")]) {
				w.done(false)
				return nil, grpcErr(codes.InvalidArgument, "Identity Pool does not exist ("+pool[:strings.Index(pool, "[")]+").")
			}
		}
	}
	sa.policy = proto.Clone(p).(*iampb.Policy)
	sa.policy.Etag = []byte(fmt.Sprint(len(w.requests)))
	return &iam.Policy{InternalProto: proto.Clone(sa.policy).(*iampb.Policy)}, w.done(true)
}

func (w *world) poolExists(pool string) bool {
	for _, c := range w.clusters {
		if c.c.GetWorkloadIdentityConfig().GetWorkloadPool() == pool && !time.Now().Before(c.readyAt) {
			return true
		}
	}
	return false
}

func (f *fakeIAM) ListServiceAccounts(_ context.Context, req *adminpb.ListServiceAccountsRequest) ([]*adminpb.ServiceAccount, error) {
	w := f.w()
	if err := w.call("iam:ListServiceAccounts", req); err != nil {
		return nil, err
	}
	defer w.done(false)
	var out []*adminpb.ServiceAccount
	for _, sa := range w.sas {
		out = append(out, proto.Clone(sa.sa).(*adminpb.ServiceAccount))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetEmail() < out[j].GetEmail() })
	return out, nil
}

// fakeProjects: the project's IAM policy, as Resource Manager v3 serves it over REST (googleapi errors).
type fakeProjects world

func (f *fakeProjects) w() *world { return (*world)(f) }

func cloneProjectPolicy(p *crm.Policy) *crm.Policy {
	b, err := json.Marshal(p)
	if err != nil {
		panic(err)
	}
	out := &crm.Policy{}
	if err := json.Unmarshal(b, out); err != nil {
		panic(err)
	}
	return out
}

func (f *fakeProjects) ProjectPolicy(_ context.Context, project string) (*crm.Policy, error) {
	w := f.w()
	if err := w.call("projects:ProjectPolicy", project); err != nil {
		return nil, err
	}
	defer w.done(false)
	if project != w.project {
		return nil, httpErr(403, "forbidden", "The caller does not have permission")
	}
	return cloneProjectPolicy(w.policy), nil
}

func (f *fakeProjects) SetProjectPolicy(_ context.Context, project string, p *crm.Policy) error {
	w := f.w()
	if err := w.call("projects:SetProjectPolicy", cloneProjectPolicy(p)); err != nil {
		return err
	}
	if p.Etag != w.policy.Etag {
		w.done(false)
		return httpErr(409, "aborted", "There were concurrent policy changes. Please retry the whole read-modify-write with exponential backoff.")
	}
	// IAM refuses a binding of a service account of the project that does not exist (yet).
	for _, b := range p.Bindings {
		for _, m := range b.Members {
			if email, ok := strings.CutPrefix(m, "serviceAccount:"); ok && strings.HasSuffix(email, "@"+w.project+".iam.gserviceaccount.com") &&
				w.sas[email] == nil && !strings.HasPrefix(email, "other@") {
				w.done(false)
				return httpErr(400, "badRequest", "Service account "+email+" does not exist.")
			}
		}
	}
	w.policy = cloneProjectPolicy(p)
	w.policy.Etag = fmt.Sprintf("BwY%d", len(w.requests))
	return w.done(true)
}

// fakeStorage: buckets, for the fake-time tests only (gcs_test.go runs the bucket steps on fake-gcs-server).
type fakeStorage world

func (f *fakeStorage) w() *world { return (*world)(f) }

func cloneAttrs(a storage.BucketAttrs) *storage.BucketAttrs {
	a.Labels = maps(a.Labels)
	a.Lifecycle.Rules = slices.Clone(a.Lifecycle.Rules)
	return &a
}

func maps(m map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (f *fakeStorage) Bucket(_ context.Context, name string) (*storage.BucketAttrs, error) {
	w := f.w()
	if err := w.call("storage:Bucket", name); err != nil {
		return nil, err
	}
	defer w.done(false)
	b := w.buckets[name]
	if b == nil {
		return nil, storage.ErrBucketNotExist
	}
	return cloneAttrs(b.attrs), nil
}

func (f *fakeStorage) CreateBucket(_ context.Context, project string, attrs *storage.BucketAttrs) error {
	w := f.w()
	if err := w.call("storage:CreateBucket", attrs); err != nil {
		return err
	}
	if w.buckets[attrs.Name] != nil {
		w.done(false)
		return httpErr(409, "conflict", "Your previous request to create the named bucket succeeded and you already own it.")
	}
	w.buckets[attrs.Name] = &fbucket{attrs: *cloneAttrs(*attrs), policy: &iampb.Policy{Etag: []byte("1"), Bindings: []*iampb.Binding{
		{Role: "roles/storage.legacyBucketOwner", Members: []string{"projectOwner:" + project}}}}}
	return w.done(true)
}

func (f *fakeStorage) UpdateBucket(_ context.Context, name string, u storage.BucketAttrsToUpdate) error {
	w := f.w()
	if err := w.call("storage:UpdateBucket", u); err != nil {
		return err
	}
	b := w.buckets[name]
	if b == nil {
		w.done(false)
		return storage.ErrBucketNotExist
	}
	if u.Lifecycle != nil {
		b.attrs.Lifecycle = *u.Lifecycle
	}
	if u.UniformBucketLevelAccess != nil {
		b.attrs.UniformBucketLevelAccess = *u.UniformBucketLevelAccess
	}
	if u.PublicAccessPrevention != storage.PublicAccessPreventionUnknown {
		b.attrs.PublicAccessPrevention = u.PublicAccessPrevention
	}
	return w.done(true)
}

func (f *fakeStorage) DeleteBucket(_ context.Context, name string) error {
	w := f.w()
	if err := w.call("storage:DeleteBucket", name); err != nil {
		return err
	}
	b := w.buckets[name]
	switch {
	case b == nil:
		w.done(false)
		return storage.ErrBucketNotExist
	case b.objects > 0:
		w.done(false)
		return httpErr(409, "conflict", "The bucket you tried to delete is not empty.")
	}
	delete(w.buckets, name)
	return w.done(true)
}

func (f *fakeStorage) ListBuckets(_ context.Context, project, prefix string) ([]*storage.BucketAttrs, error) {
	w := f.w()
	if err := w.call("storage:ListBuckets", prefix); err != nil {
		return nil, err
	}
	defer w.done(false)
	var out []*storage.BucketAttrs
	for name, b := range w.buckets {
		if strings.HasPrefix(name, prefix) {
			a := cloneAttrs(b.attrs)
			a.Name = name
			out = append(out, a)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (f *fakeStorage) ListObjects(_ context.Context, bucket string, max int) ([]string, error) {
	w := f.w()
	if err := w.call("storage:ListObjects", bucket); err != nil {
		return nil, err
	}
	defer w.done(false)
	b := w.buckets[bucket]
	if b == nil {
		return nil, storage.ErrBucketNotExist
	}
	var out []string
	for i := 0; i < b.objects && i < max; i++ {
		out = append(out, fmt.Sprintf("object-%d", i))
	}
	return out, nil
}

func (f *fakeStorage) DeleteObject(_ context.Context, bucket, object string) error {
	w := f.w()
	if err := w.call("storage:DeleteObject", bucket+"/"+object); err != nil {
		return err
	}
	b := w.buckets[bucket]
	if b == nil || b.objects == 0 {
		w.done(false)
		return storage.ErrObjectNotExist
	}
	b.objects--
	return w.done(true)
}

func (f *fakeStorage) BucketPolicy(_ context.Context, bucket string) (*iampb.Policy, error) {
	w := f.w()
	if err := w.call("storage:BucketPolicy", bucket); err != nil {
		return nil, err
	}
	defer w.done(false)
	b := w.buckets[bucket]
	if b == nil {
		return nil, storage.ErrBucketNotExist
	}
	return proto.Clone(b.policy).(*iampb.Policy), nil
}

type setBucketPolicy struct {
	Bucket string
	Policy *iampb.Policy
}

func (f *fakeStorage) SetBucketPolicy(_ context.Context, bucket string, p *iampb.Policy) error {
	w := f.w()
	if err := w.call("storage:SetBucketPolicy", setBucketPolicy{bucket, p}); err != nil {
		return err
	}
	b := w.buckets[bucket]
	if b == nil {
		w.done(false)
		return storage.ErrBucketNotExist
	}
	if string(p.GetEtag()) != string(b.policy.GetEtag()) {
		w.done(false)
		return httpErr(412, "conditionNotMet", "Precondition Failed")
	}
	b.policy = proto.Clone(p).(*iampb.Policy)
	b.policy.Etag = []byte(fmt.Sprint(len(w.requests)))
	return w.done(true)
}
