package plan

import (
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// cloud is an in-memory provider: resources by name, and every call made.
type cloud struct {
	mu        sync.Mutex
	resources map[string]string // name → ID
	creates   map[string]int
	calls     []string
}

func newCloud() *cloud { return &cloud{resources: map[string]string{}, creates: map[string]int{}} }

func (c *cloud) record(call string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, call)
}

// fakeStep creates one resource; Apply takes `took` of (fake) time after the create call, like waiting
// for a cluster to become ready. applyErrs are returned by the first Apply calls, in order.
type fakeStep struct {
	name      string
	deps      []string
	cloud     *cloud
	took      time.Duration
	applyErrs []error
	mu        sync.Mutex
	applies   int
}

func (s *fakeStep) Name() string        { return s.name }
func (s *fakeStep) DependsOn() []string { return s.deps }

func (s *fakeStep) Observe(context.Context) (Observation, error) {
	s.cloud.record("observe " + s.name)
	s.cloud.mu.Lock()
	defer s.cloud.mu.Unlock()
	id, ok := s.cloud.resources[s.name]
	return Observation{Exists: ok, ID: id}, nil
}

func (s *fakeStep) Plan(obs Observation) Change {
	if obs.Exists {
		return NoChange()
	}
	return Change{Action: Create, Diff: []string{"name: " + s.name}}
}

func (s *fakeStep) Apply(ctx context.Context, c Change) error {
	s.mu.Lock()
	s.applies++
	n := s.applies
	s.mu.Unlock()
	if n <= len(s.applyErrs) && s.applyErrs[n-1] != nil {
		return s.applyErrs[n-1]
	}
	s.cloud.record(c.Action.String() + " " + s.name)
	s.cloud.mu.Lock()
	switch c.Action {
	case Create:
		s.cloud.resources[s.name] = "id-" + s.name
		s.cloud.creates[s.name]++
	case Delete:
		delete(s.cloud.resources, s.name)
	}
	s.cloud.mu.Unlock()
	if s.took == 0 {
		return nil
	}
	select { // wait for "ready"; the resource already exists, so a rerun observes it
	case <-time.After(s.took):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// installSteps is a small AWS-shaped graph: the cluster is the critical path.
func installSteps(c *cloud) []Step {
	return []Step{
		&fakeStep{name: "vpc", cloud: c, took: 2 * time.Minute},
		&fakeStep{name: "subnets", deps: []string{"vpc"}, cloud: c, took: time.Minute},
		&fakeStep{name: "nat", deps: []string{"subnets"}, cloud: c, took: 3 * time.Minute},
		&fakeStep{name: "metrics-bucket", cloud: c, took: time.Minute},
		&fakeStep{name: "logs-bucket", cloud: c, took: time.Minute},
		&fakeStep{name: "cluster-role", cloud: c, took: time.Minute},
		&fakeStep{name: "eks-cluster", deps: []string{"subnets", "cluster-role"}, cloud: c, took: 12 * time.Minute},
		&fakeStep{name: "node-group", deps: []string{"eks-cluster", "nat"}, cloud: c, took: 4 * time.Minute},
		&fakeStep{name: "workload-roles", deps: []string{"eks-cluster", "metrics-bucket", "logs-bucket"}, cloud: c, took: time.Minute},
		&fakeStep{name: "helm-install", deps: []string{"node-group", "workload-roles"}, cloud: c, took: 2 * time.Minute},
	}
}

func durations(steps []Step) map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, s := range steps {
		out[s.Name()] = s.(*fakeStep).took
	}
	return out
}

func TestRunRespectsDependenciesAndOverlaps(t *testing.T) {
	steps := installSteps(newCloud())
	path, critical, err := CriticalPath(steps, durations(steps))
	if err != nil {
		t.Fatal(err)
	}
	var sum time.Duration
	for _, d := range durations(steps) {
		sum += d
	}
	if want := "vpc subnets eks-cluster node-group helm-install"; strings.Join(path, " ") != want {
		t.Errorf("critical path %v, want %s", path, want)
	}

	elapsed := func(concurrency int) time.Duration {
		var got time.Duration
		synctest.Test(t, func(t *testing.T) {
			c := newCloud()
			steps := installSteps(c)
			var mu sync.Mutex
			doneAt := map[string]time.Time{}
			startAt := map[string]time.Time{}
			rep, err := Run(t.Context(), steps, Options{Concurrency: concurrency, Progress: func(e Event) {
				mu.Lock()
				defer mu.Unlock()
				switch e.State {
				case Observing:
					if e.Attempt == 1 {
						startAt[e.Step] = time.Now()
					}
				case Done:
					doneAt[e.Step] = time.Now()
				}
			}})
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range steps {
				for _, d := range s.DependsOn() {
					if startAt[s.Name()].Before(doneAt[d]) {
						t.Errorf("%s started before its dependency %s was done", s.Name(), d)
					}
				}
				if c.creates[s.Name()] != 1 {
					t.Errorf("%s created %d times", s.Name(), c.creates[s.Name()])
				}
			}
			got = rep.Elapsed
		})
		return got
	}
	parallel, sequential := elapsed(10), elapsed(1)
	if parallel != critical {
		t.Errorf("parallel run took %s, want the critical path %s", parallel, critical)
	}
	if sequential != sum {
		t.Errorf("sequential run took %s, want the sum %s", sequential, sum)
	}
	t.Logf("critical path %s = %s; parallel %s vs sequential %s: %.2fx faster",
		strings.Join(path, " → "), critical, parallel, sequential, float64(sequential)/float64(parallel))
}

// stepClock is a fake clock whose Sleep returns at once, recording the delay.
type stepClock struct {
	mu     sync.Mutex
	now    time.Time
	sleeps []time.Duration
}

func (c *stepClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *stepClock) Sleep(_ context.Context, d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sleeps = append(c.sleeps, d)
	c.now = c.now.Add(d)
	return nil
}

func TestThrottledStepIsRetriedWithBackoff(t *testing.T) {
	c := newCloud()
	throttled := Errorf(Throttled, "create VPC", errors.New("Rate exceeded"))
	step := &fakeStep{name: "vpc", cloud: c, applyErrs: []error{throttled, throttled, throttled}}
	clock := &stepClock{now: time.Unix(0, 0)}
	var retries []Event
	rep, err := Run(context.Background(), []Step{step}, Options{
		Clock: clock, Rand: func() float64 { return 0.5 }, InitialBackoff: time.Second, MaxBackoff: 3 * time.Second,
		Progress: func(e Event) {
			if e.State == Retrying {
				retries = append(retries, e)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Steps[0].State != Done || rep.Steps[0].Attempts != 4 || c.creates["vpc"] != 1 {
		t.Errorf("result %+v, creates %d", rep.Steps[0], c.creates["vpc"])
	}
	// 1s, 2s, 4s capped at 3s; jitter 0.5 puts each at 3/4 of the delay.
	want := []time.Duration{750 * time.Millisecond, 1500 * time.Millisecond, 2250 * time.Millisecond}
	if len(clock.sleeps) != len(want) {
		t.Fatalf("sleeps %v, want %v", clock.sleeps, want)
	}
	for i := range want {
		if clock.sleeps[i] != want[i] || retries[i].Delay != want[i] || !errors.Is(retries[i].Err, throttled) {
			t.Errorf("retry %d: slept %s, event %+v; want %s", i, clock.sleeps[i], retries[i], want[i])
		}
	}
}

func TestRetriesStopAtTheTimeout(t *testing.T) {
	throttled := Errorf(Throttled, "create VPC", errors.New("Rate exceeded"))
	errs := make([]error, 100)
	for i := range errs {
		errs[i] = throttled
	}
	clock := &stepClock{now: time.Unix(0, 0)}
	_, err := Run(context.Background(), []Step{&fakeStep{name: "vpc", cloud: newCloud(), applyErrs: errs}},
		Options{Clock: clock, Timeout: 10 * time.Second, InitialBackoff: time.Second, Rand: func() float64 { return 1 }})
	if err == nil || !strings.Contains(err.Error(), "gave up after 4 attempts") || !errors.Is(err, throttled) {
		t.Errorf("got %v", err)
	}
}

func TestPermissionDeniedIsNotRetriedAndStopsScheduling(t *testing.T) {
	c := newCloud()
	denied := PermissionError("create EKS cluster opstrace-prod", "eks:CreateCluster", errors.New("AccessDeniedException"))
	steps := []Step{
		&fakeStep{name: "role", cloud: c},
		&fakeStep{name: "cluster", deps: []string{"role"}, cloud: c, applyErrs: []error{denied}},
		&fakeStep{name: "nodes", deps: []string{"cluster"}, cloud: c},
	}
	rep, err := Run(context.Background(), steps, Options{Clock: &stepClock{}})
	if err == nil || !strings.Contains(err.Error(), "missing permission eks:CreateCluster") || Classify(err) != PermissionDenied {
		t.Fatalf("got %v", err)
	}
	t.Logf("the user sees: %v", err)
	states := map[string]State{}
	for _, r := range rep.Steps {
		states[r.Name] = r.State
	}
	if states["role"] != Done || states["cluster"] != Failed || states["nodes"] != Skipped || rep.Steps[1].Attempts != 1 {
		t.Errorf("states %v, cluster attempts %d", states, rep.Steps[1].Attempts)
	}
}

func TestRunningStepsFinishAfterAFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCloud()
		steps := []Step{
			&fakeStep{name: "slow-bucket", cloud: c, took: time.Minute},
			&fakeStep{name: "broken", cloud: c, applyErrs: []error{Errorf(Quota, "create VPC", errors.New("VpcLimitExceeded"))}},
			&fakeStep{name: "after-bucket", deps: []string{"slow-bucket"}, cloud: c},
		}
		rep, err := Run(t.Context(), steps, Options{})
		if Classify(err) != Quota {
			t.Fatalf("got %v", err)
		}
		if rep.Steps[0].State != Done || rep.Steps[2].State != Skipped {
			t.Errorf("got %+v", rep.Steps)
		}
	})
}

// TestInterruptedRunResumes cancels a run after each step in turn, while it waits for its resource to be
// ready, then runs again: every resource is created exactly once and the rerun finishes.
func TestInterruptedRunResumes(t *testing.T) {
	names := []string{}
	for _, s := range installSteps(newCloud()) {
		names = append(names, s.Name())
	}
	for _, interruptAt := range names {
		t.Run(interruptAt, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := newCloud()
				ctx, cancel := context.WithCancel(t.Context())
				_, err := Run(ctx, installSteps(c), Options{Concurrency: 10, Progress: func(e Event) {
					if e.Step == interruptAt && e.State == Applying {
						go func() { time.Sleep(time.Second); cancel() }() // mid-apply
					}
				}})
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("first run: %v", err)
				}
				if c.creates[interruptAt] != 1 {
					t.Fatalf("%s not created before the interruption", interruptAt)
				}
				rep, err := Run(t.Context(), installSteps(c), Options{Concurrency: 10})
				if err != nil {
					t.Fatalf("rerun: %v", err)
				}
				for _, s := range rep.Steps {
					if s.State != Done || c.creates[s.Name] != 1 {
						t.Errorf("%s: %s, created %d times", s.Name, s.State, c.creates[s.Name])
					}
				}
				if rep.Steps[0].Action != NoOp {
					t.Errorf("rerun planned %s for %s, which the first run created", rep.Steps[0].Action, rep.Steps[0].Name)
				}
			})
		})
	}
}

func TestGraphErrors(t *testing.T) {
	c := newCloud()
	for _, tc := range []struct {
		name  string
		steps []Step
		want  string
	}{
		{"unknown dependency", []Step{&fakeStep{name: "a", deps: []string{"vcp"}, cloud: c}},
			`step "a" depends on unknown step "vcp"`},
		{"cycle", []Step{
			&fakeStep{name: "a", cloud: c},
			&fakeStep{name: "b", deps: []string{"a", "d"}, cloud: c},
			&fakeStep{name: "c", deps: []string{"b"}, cloud: c},
			&fakeStep{name: "d", deps: []string{"c"}, cloud: c},
		}, "dependency cycle: b → d → c → b"},
		{"self", []Step{&fakeStep{name: "a", deps: []string{"a"}, cloud: c}}, "dependency cycle: a → a"},
		{"duplicate", []Step{&fakeStep{name: "a", cloud: c}, &fakeStep{name: "a", cloud: c}}, `two steps are named "a"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Run(context.Background(), tc.steps, Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Run: got %v, want %q", err, tc.want)
			}
			if _, err := Preview(context.Background(), tc.steps); err == nil {
				t.Error("Preview accepted the graph")
			}
			if _, _, err := CriticalPath(tc.steps, nil); err == nil {
				t.Error("CriticalPath accepted the graph")
			}
			if len(c.calls) != 0 {
				t.Errorf("steps were called: %v", c.calls)
			}
		})
	}
}

func TestReverseDestroysInReverseOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCloud()
		if _, err := Run(t.Context(), installSteps(c), Options{Concurrency: 10}); err != nil {
			t.Fatal(err)
		}
		install := installSteps(c)
		destroy, err := Reverse(install)
		if err != nil {
			t.Fatal(err)
		}
		if destroy[0].Name() != "helm-install" || destroy[len(destroy)-1].Name() != "vpc" {
			t.Errorf("destroy order starts %s, ends %s", destroy[0].Name(), destroy[len(destroy)-1].Name())
		}
		c.calls = nil
		if _, err := Run(t.Context(), destroy, Options{Concurrency: 10}); err != nil {
			t.Fatal(err)
		}
		if len(c.resources) != 0 {
			t.Errorf("left behind: %v", c.resources)
		}
		deleted := map[string]int{}
		for i, call := range c.calls {
			if name, ok := strings.CutPrefix(call, "delete "); ok {
				deleted[name] = i
			}
		}
		for _, s := range install {
			for _, d := range s.DependsOn() {
				if deleted[d] < deleted[s.Name()] {
					t.Errorf("%s deleted before %s, which depends on it", d, s.Name())
				}
			}
		}
		// Destroying again finds nothing to do.
		rep, err := Run(t.Context(), destroy, Options{})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range rep.Steps {
			if s.Action != NoOp {
				t.Errorf("second destroy: %s planned %s", s.Name, s.Action)
			}
		}
	})
}

func TestDescribeGolden(t *testing.T) {
	c := newCloud()
	c.resources["vpc"] = "vpc-0abc" // already there from an earlier, interrupted run
	steps := installSteps(c)
	steps[3] = &updateStep{fakeStep: steps[3].(*fakeStep)}
	plan, err := Preview(context.Background(), steps)
	if err != nil {
		t.Fatal(err)
	}
	for _, call := range c.calls {
		if !strings.HasPrefix(call, "observe ") {
			t.Errorf("Preview changed something: %s", call)
		}
	}
	got := Describe(plan)
	golden := filepath.Join("testdata", "describe.golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("Describe differs from %s (go test -update to accept):\n%s", golden, got)
	}
}

// updateStep plans an update with a two-line diff, for the golden file.
type updateStep struct{ *fakeStep }

func (s *updateStep) Plan(Observation) Change {
	return Change{Action: Update, Diff: []string{"lifecycle: expire after 7 days → 30 days", "encryption: none → aws:kms"}}
}

func TestClassify(t *testing.T) {
	wrapped := errors.Join(errors.New("context"), Errorf(Conflict, "create node group", errors.New("ResourceInUse")))
	for _, tc := range []struct {
		err       error
		kind      Kind
		retryable bool
	}{
		{errors.New("plain"), Other, false},
		{Errorf(NotFound, "get role", nil), NotFound, true},
		{wrapped, Conflict, true},
		{Errorf(Throttled, "x", nil), Throttled, true},
		{PermissionError("x", "s3:CreateBucket", nil), PermissionDenied, false},
		{Errorf(Quota, "x", nil), Quota, false},
		{NotOwnedError("create bucket", "bucket opstrace-prod-metrics", "opstrace.io/cluster=prod"), NotOwned, false},
		{context.Canceled, Other, false},
	} {
		if Classify(tc.err) != tc.kind || Retryable(tc.err) != tc.retryable {
			t.Errorf("%v: kind %s retryable %v, want %s %v", tc.err, Classify(tc.err), Retryable(tc.err), tc.kind, tc.retryable)
		}
	}
}
