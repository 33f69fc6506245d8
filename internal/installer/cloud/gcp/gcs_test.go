package gcp

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/container/apiv1/containerpb"
	"cloud.google.com/go/iam/apiv1/iampb"
	"cloud.google.com/go/storage"
	"github.com/fsouza/fake-gcs-server/fakestorage"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/plan"
	"github.com/opstrace/opstrace/internal/testenv"
)

// fakeGCSGaps passes every call to a real fake-gcs-server (in-process, on 127.0.0.1) through the same
// adapter the CLI uses (NewStorage), and records it. fake-gcs-server v1.54.0 keeps buckets and objects
// but drops bucket labels, lifecycle rules, uniform bucket-level access and public access prevention,
// and has no bucket IAM API: those settings are kept here from the requests that set them, so the steps
// see them as GCS would return them, and the tests assert the requests' shape. Which settings were
// emulated is logged.
type fakeGCSGaps struct {
	real StorageAPI
	mu   sync.Mutex
	// requests: op → inputs, in order.
	requests map[string][]any
	attrs    map[string]*storage.BucketAttrs // the emulated settings, by bucket
	policies map[string]*iampb.Policy
	faults   map[string][]error
}

func newFakeGCSGaps(t *testing.T) (*fakeGCSGaps, *testenv.FakeGCS) {
	gcs := testenv.StartFakeGCS(t)
	return &fakeGCSGaps{real: NewStorage(gcs.Client), requests: map[string][]any{}, attrs: map[string]*storage.BucketAttrs{},
		policies: map[string]*iampb.Policy{}, faults: map[string][]error{}}, gcs
}

func (g *fakeGCSGaps) record(op string, in any) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.requests[op] = append(g.requests[op], in)
	if f := g.faults[op]; len(f) > 0 {
		g.faults[op] = f[1:]
		return f[0]
	}
	return nil
}

func (g *fakeGCSGaps) overlay(a *storage.BucketAttrs) *storage.BucketAttrs {
	g.mu.Lock()
	defer g.mu.Unlock()
	if e := g.attrs[a.Name]; e != nil {
		a.Labels, a.Lifecycle, a.UniformBucketLevelAccess, a.PublicAccessPrevention = e.Labels, e.Lifecycle, e.UniformBucketLevelAccess, e.PublicAccessPrevention
	}
	return a
}

func (g *fakeGCSGaps) Bucket(ctx context.Context, name string) (*storage.BucketAttrs, error) {
	if err := g.record("Bucket", name); err != nil {
		return nil, err
	}
	a, err := g.real.Bucket(ctx, name)
	if err != nil {
		return nil, err
	}
	return g.overlay(a), nil
}

func (g *fakeGCSGaps) CreateBucket(ctx context.Context, project string, attrs *storage.BucketAttrs) error {
	if err := g.record("CreateBucket", attrs); err != nil {
		return err
	}
	if err := g.real.CreateBucket(ctx, project, attrs); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.attrs[attrs.Name] = &storage.BucketAttrs{Labels: attrs.Labels, Lifecycle: attrs.Lifecycle,
		UniformBucketLevelAccess: attrs.UniformBucketLevelAccess, PublicAccessPrevention: attrs.PublicAccessPrevention}
	g.policies[attrs.Name] = &iampb.Policy{Etag: []byte("1"), Bindings: []*iampb.Binding{{Role: "roles/storage.legacyBucketOwner", Members: []string{"projectOwner:" + project}}}}
	return nil
}

func (g *fakeGCSGaps) UpdateBucket(ctx context.Context, name string, u storage.BucketAttrsToUpdate) error {
	if err := g.record("UpdateBucket", u); err != nil {
		return err
	}
	if err := g.real.UpdateBucket(ctx, name, u); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	e := g.attrs[name]
	if e == nil {
		e = &storage.BucketAttrs{}
		g.attrs[name] = e
	}
	if u.Lifecycle != nil {
		e.Lifecycle = *u.Lifecycle
	}
	if u.UniformBucketLevelAccess != nil {
		e.UniformBucketLevelAccess = *u.UniformBucketLevelAccess
	}
	if u.PublicAccessPrevention != storage.PublicAccessPreventionUnknown {
		e.PublicAccessPrevention = u.PublicAccessPrevention
	}
	return nil
}

func (g *fakeGCSGaps) DeleteBucket(ctx context.Context, name string) error {
	if err := g.record("DeleteBucket", name); err != nil {
		return err
	}
	if err := g.real.DeleteBucket(ctx, name); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.attrs, name)
	delete(g.policies, name)
	return nil
}

func (g *fakeGCSGaps) ListBuckets(ctx context.Context, project, prefix string) ([]*storage.BucketAttrs, error) {
	if err := g.record("ListBuckets", prefix); err != nil {
		return nil, err
	}
	bs, err := g.real.ListBuckets(ctx, project, prefix)
	for _, b := range bs {
		g.overlay(b)
	}
	return bs, err
}

func (g *fakeGCSGaps) ListObjects(ctx context.Context, bucket string, max int) ([]string, error) {
	if err := g.record("ListObjects", bucket); err != nil {
		return nil, err
	}
	return g.real.ListObjects(ctx, bucket, max)
}

func (g *fakeGCSGaps) DeleteObject(ctx context.Context, bucket, object string) error {
	if err := g.record("DeleteObject", bucket+"/"+object); err != nil {
		return err
	}
	return g.real.DeleteObject(ctx, bucket, object)
}

func (g *fakeGCSGaps) BucketPolicy(ctx context.Context, bucket string) (*iampb.Policy, error) {
	if err := g.record("BucketPolicy", bucket); err != nil {
		return nil, err
	}
	if _, err := g.real.Bucket(ctx, bucket); err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if p := g.policies[bucket]; p != nil {
		return p, nil
	}
	return &iampb.Policy{}, nil
}

func (g *fakeGCSGaps) SetBucketPolicy(ctx context.Context, bucket string, p *iampb.Policy) error {
	if err := g.record("SetBucketPolicy", p); err != nil {
		return err
	}
	if _, err := g.real.Bucket(ctx, bucket); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.policies[bucket] = p
	return nil
}

func (g *fakeGCSGaps) mutations() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for op, ins := range g.requests {
		if isMutation("storage:" + op) {
			for range ins {
				out = append(out, op)
			}
		}
	}
	return out
}

func gcsSteps(c *Clients, metricsDays, logsDays int) []plan.Step {
	return []plan.Step{
		&bucketStep{c: c, cluster: testCluster, kind: cloud.BucketMetrics, days: metricsDays},
		&bucketStep{c: c, cluster: testCluster, kind: cloud.BucketLogs, days: logsDays},
	}
}

func actions(rep plan.Report) string {
	var out []string
	for _, s := range rep.Steps {
		out = append(out, s.Name+"="+s.Action.String())
	}
	return strings.Join(out, " ")
}

var fastRetries = plan.Options{InitialBackoff: 10 * time.Millisecond}

// The bucket steps against fake-gcs-server: create, labels, lifecycle, an idempotent rerun, a retention
// change, and destroy of a bucket holding objects.
func TestBucketsOnFakeGCS(t *testing.T) {
	gaps, gcs := newFakeGCSGaps(t)
	c := &Clients{Project: "acme-prod", Region: "europe-west1", Storage: gaps}
	ctx := context.Background()

	rep, err := plan.Run(ctx, gcsSteps(c, 30, 7), fastRetries)
	if err != nil {
		t.Fatal(err)
	}
	if got := actions(rep); got != "gcp/bucket-metrics=create gcp/bucket-logs=create" {
		t.Errorf("first run: %s", got)
	}
	// The server has the buckets; the create requests carry every setting.
	t.Log("fake-gcs-server v1.54.0 drops labels, lifecycle rules, uniform bucket-level access and public access prevention, " +
		"and has no bucket IAM API: the CreateBucket requests are asserted instead, and the settings kept from them")
	for _, in := range gaps.requests["CreateBucket"] {
		a := in.(*storage.BucketAttrs)
		if _, err := gcs.Client.Bucket(a.Name).Attrs(ctx); err != nil {
			t.Errorf("bucket %s is not on the server: %v", a.Name, err)
		}
		days := map[string]int64{"opstrace-prod-metrics": 30, "opstrace-prod-logs": 7}[a.Name]
		if a.Location != "europe-west1" || a.Labels[cloud.OwnerLabel] != testCluster || len(a.Labels) != 1 ||
			!a.UniformBucketLevelAccess.Enabled || a.PublicAccessPrevention != storage.PublicAccessPreventionEnforced ||
			len(a.Lifecycle.Rules) != 1 || a.Lifecycle.Rules[0].Action.Type != storage.DeleteAction || a.Lifecycle.Rules[0].Condition.AgeInDays != days ||
			a.Encryption != nil {
			t.Errorf("CreateBucket %s: %+v", a.Name, a)
		}
	}
	if n := len(gaps.requests["CreateBucket"]); n != 2 {
		t.Errorf("%d CreateBucket requests", n)
	}

	rep, err = plan.Run(ctx, gcsSteps(c, 30, 7), fastRetries)
	if err != nil || actions(rep) != "gcp/bucket-metrics=no change gcp/bucket-logs=no change" {
		t.Fatalf("rerun: %s, %v", actions(rep), err)
	}

	preview, err := plan.Preview(ctx, gcsSteps(c, 90, 7))
	if err != nil {
		t.Fatal(err)
	}
	if d := plan.Describe(preview); !strings.Contains(d, "~ gcp/bucket-metrics") ||
		!strings.Contains(d, "lifecycle: objects deleted after 30 days → objects deleted after 90 days") {
		t.Errorf("plan of a retention change:\n%s", d)
	}
	if _, err := plan.Run(ctx, gcsSteps(c, 90, 7), fastRetries); err != nil {
		t.Fatal(err)
	}
	if ups := gaps.requests["UpdateBucket"]; len(ups) != 1 {
		t.Errorf("%d UpdateBucket requests, want 1 (the metrics bucket)", len(ups))
	} else if u := ups[0].(storage.BucketAttrsToUpdate); u.Lifecycle == nil || u.Lifecycle.Rules[0].Condition.AgeInDays != 90 ||
		!u.UniformBucketLevelAccess.Enabled || u.PublicAccessPrevention != storage.PublicAccessPreventionEnforced {
		t.Errorf("UpdateBucket %+v", u)
	}
	if a, err := gaps.Bucket(ctx, "opstrace-prod-metrics"); err != nil || a.Lifecycle.Rules[0].Condition.AgeInDays != 90 {
		t.Errorf("after the retention change: %+v %v", a, err)
	}

	for _, key := range []string{"tenant/01/index", "tenant/01/chunks/000001", "tenant/02/meta.json"} {
		gcs.Server.CreateObject(fakestorage.Object{ObjectAttrs: fakestorage.ObjectAttrs{BucketName: "opstrace-prod-metrics", Name: key}, Content: []byte("block")})
	}
	rev, err := plan.Reverse(gcsSteps(c, 90, 7))
	if err != nil {
		t.Fatal(err)
	}
	if rep, err = plan.Run(ctx, rev, fastRetries); err != nil || actions(rep) != "gcp/bucket-logs=delete gcp/bucket-metrics=delete" {
		t.Fatalf("destroy: %s, %v", actions(rep), err)
	}
	for _, b := range []string{"opstrace-prod-metrics", "opstrace-prod-logs"} {
		if _, err := gcs.Client.Bucket(b).Attrs(ctx); !errors.Is(err, storage.ErrBucketNotExist) {
			t.Errorf("%s after destroy: %v", b, err)
		}
	}
	if n := len(gaps.requests["DeleteObject"]); n != 3 {
		t.Errorf("%d objects deleted, want 3", n)
	}
	if rep, err = plan.Run(ctx, rev, fastRetries); err != nil || actions(rep) != "gcp/bucket-logs=no change gcp/bucket-metrics=no change" {
		t.Fatalf("second destroy: %s, %v", actions(rep), err)
	}
}

// A bucket with our name but without our label, on fake-gcs-server: create refuses with the fix and
// leaves it be; destroy and the sweep leave it and its objects be.
func TestUnlabelledBucketOnFakeGCSIsLeftAlone(t *testing.T) {
	gaps, gcs := newFakeGCSGaps(t)
	c := &Clients{Project: "acme-prod", Region: "europe-west1", Storage: gaps}
	ctx := context.Background()
	gcs.Server.CreateObject(fakestorage.Object{ObjectAttrs: fakestorage.ObjectAttrs{BucketName: "opstrace-prod-metrics", Name: "theirs"}, Content: []byte("x")})

	steps := gcsSteps(c, 30, 7)[:1]
	_, err := plan.Run(ctx, steps, fastRetries)
	if plan.Classify(err) != plan.NotOwned || !strings.Contains(err.Error(), "GCS bucket opstrace-prod-metrics exists but is not tagged opstrace-io-cluster=prod") ||
		!strings.Contains(err.Error(), "choose another cluster name") {
		t.Fatalf("create over an unlabelled bucket: %v", err)
	}
	rev, _ := plan.Reverse(steps)
	if _, err := plan.Run(ctx, rev, fastRetries); plan.Classify(err) != plan.NotOwned {
		t.Fatalf("destroy over an unlabelled bucket: %v", err)
	}
	if rep, err := sweepBuckets(ctx, c); err != nil || len(rep.Removed)+len(rep.Left) != 0 {
		t.Errorf("sweep touched the unlabelled bucket: %s %v", rep, err)
	}
	if m := gaps.mutations(); len(m) != 0 {
		t.Errorf("changes made to someone else's bucket: %v", m)
	}
	if _, err := gcs.Client.Bucket("opstrace-prod-metrics").Object("theirs").Attrs(ctx); err != nil {
		t.Errorf("the unlabelled bucket's object: %v", err)
	}
}

// sweepBuckets runs the bucket part of the sweep: Find lists every kind, so the other APIs are empty fakes.
func sweepBuckets(ctx context.Context, c *Clients) (cloud.SweepReport, error) {
	w := newWorld()
	cc := *c
	cc.Compute, cc.GKE, cc.IAM, cc.DNS = (*fakeCompute)(w), (*fakeGKE)(w), (*fakeIAM)(w), (*fakeDNS)(w)
	return Sweep(ctx, &cc, testCluster, false)
}

// Throttling and a denied call on top of fake-gcs-server: retried, and not retried with the permission
// named (as storage names it, in the message).
func TestBucketThrottledAndDeniedOnFakeGCS(t *testing.T) {
	gaps, _ := newFakeGCSGaps(t)
	c := &Clients{Project: "acme-prod", Region: "europe-west1", Storage: gaps}
	ctx := context.Background()
	gaps.faults["CreateBucket"] = []error{httpErr(429, "rateLimitExceeded", "The project exceeded the rate limit for creating and deleting buckets."),
		httpErr(503, "backendError", "Backend Error")}
	rep, err := plan.Run(ctx, gcsSteps(c, 30, 7)[:1], fastRetries)
	if err != nil || rep.Steps[0].Attempts != 3 {
		t.Fatalf("throttled create: %d attempts, %v", rep.Steps[0].Attempts, err)
	}
	gaps.faults["UpdateBucket"] = []error{httpErr(403, "forbidden", "ci@acme-prod.iam.gserviceaccount.com does not have storage.buckets.update access to the Google Cloud Storage bucket. Permission 'storage.buckets.update' denied on resource (or it may not exist).")}
	rep, err = plan.Run(ctx, gcsSteps(c, 60, 7)[:1], fastRetries)
	if plan.Classify(err) != plan.PermissionDenied || !strings.Contains(err.Error(), "missing permission storage.buckets.update") || rep.Steps[0].Attempts != 1 {
		t.Fatalf("denied update: %d attempts, %v", rep.Steps[0].Attempts, err)
	}
}

// The workload identity step's bucket grant on fake-gcs-server's bucket: objectAdmin for the service
// account added next to the bindings already there, nothing removed.
func TestBucketGrantKeepsExistingBindings(t *testing.T) {
	gaps, _ := newFakeGCSGaps(t)
	w := newWorld()
	c := w.clients()
	c.Storage = gaps
	ctx := context.Background()
	if _, err := plan.Run(ctx, gcsSteps(c, 30, 7)[:1], fastRetries); err != nil {
		t.Fatal(err)
	}
	w.clusters[testCluster] = &fcluster{c: clusterForPool("acme-prod"), pools: map[string]*fpool{}} // the pool exists
	step := stepNamed(t, Steps(c, testCluster, testConfig(t, 3)), "gcp/cortex-identity").(*identityStep)
	rep, err := plan.Run(ctx, []plan.Step{stepOnly{step}}, fastRetries)
	if err != nil || rep.Steps[0].Action != plan.Create {
		t.Fatalf("identity: %s %v", actions(rep), err)
	}
	sets := gaps.requests["SetBucketPolicy"]
	if len(sets) != 1 {
		t.Fatalf("%d SetBucketPolicy requests", len(sets))
	}
	got := sets[0].(*iampb.Policy).GetBindings()
	if len(got) != 2 || got[0].GetRole() != "roles/storage.legacyBucketOwner" || got[1].GetRole() != RoleObjectAdmin ||
		strings.Join(got[1].GetMembers(), ",") != "serviceAccount:opstrace-prod-cortex@acme-prod.iam.gserviceaccount.com" {
		t.Errorf("bucket policy %v", got)
	}
	if rep, err := plan.Run(ctx, []plan.Step{stepOnly{step}}, fastRetries); err != nil || rep.Steps[0].Action != plan.NoOp {
		t.Errorf("rerun: %s %v", actions(rep), err)
	}
}

// stepOnly runs a step without its dependencies.
type stepOnly struct{ plan.Step }

func (stepOnly) DependsOn() []string { return nil }

// clusterForPool is a running GKE cluster of the fake world that makes project's workload identity pool.
func clusterForPool(project string) *containerpb.Cluster {
	return &containerpb.Cluster{Name: testCluster, WorkloadIdentityConfig: &containerpb.WorkloadIdentityConfig{WorkloadPool: WorkloadPool(project)}}
}
