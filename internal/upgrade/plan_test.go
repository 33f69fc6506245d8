package upgrade

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/manifests"
)

const testCluster = "metrics"

var t0 = time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)

func revision(component, version string) string { return component + "@" + version }

func podName(component string, i int) string {
	return fmt.Sprintf("%s-%d", manifests.ComponentName(testCluster, component), i)
}

// clusterAt is a cluster of topology whose every Cortex component runs version, fully rolled out: pods
// Ready, ingesters ACTIVE. The gateway is listed too, to show that the planner ignores it.
func clusterAt(topology v1alpha1.Topology, version string, ingesters int32) State {
	return engineAt(Cortex, topology, version, ingesters)
}

// engineAt is the plan of engine of a cluster of topology whose every component of that engine runs version,
// fully rolled out, as clusterAt.
func engineAt(engine Engine, topology v1alpha1.Topology, version string, ingesters int32) State {
	state := State{Engine: engine, Topology: topology, Version: version, RingObserved: topology == v1alpha1.TopologyMicroservices}
	replicas := map[string]int32{manifests.ComponentIngester: ingesters, manifests.ComponentQuerier: 2,
		manifests.ComponentDistributor: 2, manifests.ComponentQueryFrontend: 2,
		manifests.LokiComponentIngester: ingesters, manifests.LokiComponentQuerier: 2,
		manifests.LokiComponentDistributor: 2, manifests.LokiComponentQueryFrontend: 2}
	for _, name := range append(engine.Order(topology), manifests.ComponentGateway) {
		n := replicas[name]
		if n == 0 {
			n = 1
		}
		c := Component{Name: name, DesiredRevision: revision(name, version), TemplateRevision: revision(name, version),
			Replicas: n, OnDelete: name == engine.Ingester()}
		for i := 0; i < int(n); i++ {
			p := Pod{Name: podName(name, i), Ordinal: i, Revision: c.TemplateRevision, Version: version, Ready: true}
			if state.isRingIngester(c) {
				p.Ring = RingActive
			}
			c.Pods = append(c.Pods, p)
		}
		state.Components = append(state.Components, c)
	}
	return state
}

// desire makes version the desired one, as a changed spec.version does.
func desire(state State, version string) State {
	state = clone(state)
	state.Version = version
	for i := range state.Components {
		state.Components[i].DesiredRevision = revision(state.Components[i].Name, version)
	}
	return state
}

func clone(s State) State {
	out := s
	out.Components = nil
	for _, c := range s.Components {
		c.Pods = append([]Pod(nil), c.Pods...)
		out.Components = append(out.Components, c)
	}
	out.StrayRingMembers = append([]RingMember(nil), s.StrayRingMembers...)
	return out
}

// world simulates Kubernetes and Cortex around the planner: it executes actions, and on each tick moves
// every pod one stage on (terminating → recreated, not Ready → Ready and JOINING → ACTIVE).
type world struct {
	state State
	now   time.Time
	// broken pods never become Ready once they run the desired revision; waiting is their waiting reason.
	broken  map[string]string
	actions []Action // every action Next returned, Waits included
}

func newWorld(state State) *world {
	return &world{state: state, now: t0, broken: map[string]string{}}
}

func (w *world) component(name string) *Component {
	for i := range w.state.Components {
		if w.state.Components[i].Name == name {
			return &w.state.Components[i]
		}
	}
	panic("no component " + name)
}

func versionOf(rev string) string { return rev[strings.Index(rev, "@")+1:] }

func (w *world) newPod(c *Component, old Pod) Pod {
	p := Pod{Name: old.Name, Ordinal: old.Ordinal, Revision: c.TemplateRevision, Version: versionOf(c.TemplateRevision),
		NotReadySince: w.now}
	if reason, ok := w.broken[p.Name]; ok && p.Revision == c.DesiredRevision {
		p.WaitingReason = reason
	}
	return p
}

func (w *world) apply(t *testing.T, a Action) {
	t.Helper()
	switch a.Kind {
	case ApplyComponent:
		c := w.component(a.Component)
		c.TemplateRevision = c.DesiredRevision
		if !c.OnDelete { // Deployment or RollingUpdate StatefulSet: its controller replaces every pod
			for i, p := range c.Pods {
				c.Pods[i] = w.newPod(c, p)
			}
		}
	case DeletePod:
		c := w.component(a.Component)
		for i := range c.Pods {
			if c.Pods[i].Name == a.Pod {
				c.Pods[i].Terminating, c.Pods[i].Ready, c.Pods[i].Ring = true, false, RingLeaving
				c.Pods[i].NotReadySince = w.now
				return
			}
		}
		t.Fatalf("DeletePod of unknown pod %s", a.Pod)
	}
}

func (w *world) tick() {
	w.now = w.now.Add(30 * time.Second)
	for ci := range w.state.Components {
		c := &w.state.Components[ci]
		for i, p := range c.Pods {
			_, broken := w.broken[p.Name]
			switch {
			case p.Terminating:
				c.Pods[i] = w.newPod(c, p)
			case !p.Ready && broken && p.Revision == c.DesiredRevision:
				if p.WaitingReason == "CrashLoopBackOff" {
					c.Pods[i].RestartCount++
				}
			case !p.Ready:
				c.Pods[i].Ready, c.Pods[i].NotReadySince = true, time.Time{}
				if w.state.isRingIngester(*c) {
					c.Pods[i].Ring = RingJoining
				}
			case p.Ring == RingJoining:
				c.Pods[i].Ring = RingActive
			}
		}
	}
}

type observed struct {
	state  State
	now    time.Time
	action Action
}

// run asks Next, checks the invariants, executes, until Done or Stalled or maxSteps. It returns every
// (state, action) pair seen and the actions other than Wait.
func (w *world) run(t *testing.T, maxSteps int) (seen []observed, acted []string) {
	t.Helper()
	for i := 0; i < maxSteps; i++ {
		checkAtMostOneIngesterDown(t, w.state)
		a := Next(w.state, w.now)
		seen = append(seen, observed{clone(w.state), w.now, a})
		w.actions = append(w.actions, a)
		if a.Kind != Wait {
			acted = append(acted, a.String())
		}
		switch a.Kind {
		case Done, Stalled:
			return seen, acted
		case Wait:
			w.tick()
		default:
			w.apply(t, a)
			checkAtMostOneIngesterDown(t, w.state)
		}
	}
	return seen, acted
}

// checkAtMostOneIngesterDown: with replication factor 3, never more than one ingester may be unavailable.
func checkAtMostOneIngesterDown(t *testing.T, state State) {
	t.Helper()
	c, ok := state.component(state.engine().Ingester())
	if !ok || !state.isRingIngester(c) {
		return
	}
	var notActive []string
	for _, p := range c.Pods {
		if p.Terminating || !p.Ready || p.Ring != RingActive {
			notActive = append(notActive, p.Name)
		}
	}
	if len(notActive) > 1 {
		t.Fatalf("more than one ingester is not ACTIVE: %v", notActive)
	}
}

// walks are a version upgrade of each plan, topology microservices with three ingesters, and what the
// planner does along it.
var walks = []struct {
	engine   Engine
	from, to string
	// actions are the actions other than Wait, in order.
	actions []string
	// messages are the Progressing messages, deduplicated, in order.
	messages []string
}{
	{Cortex, "v1.21.1", "v1.22.0", []string{
		"ApplyComponent(compactor)",
		"ApplyComponent(store-gateway)",
		"ApplyComponent(query-frontend)",
		"ApplyComponent(querier)",
		"ApplyComponent(distributor)",
		"ApplyComponent(ingester)",
		"DeletePod(metrics-ingester-2)",
		"DeletePod(metrics-ingester-1)",
		"DeletePod(metrics-ingester-0)",
		"Done",
	}, []string{
		"upgrading compactor to v1.22.0",
		"upgrading store-gateway to v1.22.0",
		"upgrading query-frontend to v1.22.0",
		"upgrading querier to v1.22.0",
		"upgrading distributor to v1.22.0",
		"ingesters 0/3 at v1.22.0",
		"ingesters 1/3 at v1.22.0",
		"ingesters 2/3 at v1.22.0",
		"every component runs v1.22.0",
	}},
	{Loki, lokiFrom, lokiTo, []string{
		"ApplyComponent(loki-compactor)",
		"ApplyComponent(loki-query-frontend)",
		"ApplyComponent(loki-querier)",
		"ApplyComponent(loki-distributor)",
		"ApplyComponent(loki-ingester)",
		"DeletePod(metrics-loki-ingester-2)",
		"DeletePod(metrics-loki-ingester-1)",
		"DeletePod(metrics-loki-ingester-0)",
		"Done",
	}, []string{
		"upgrading loki-compactor to v3.8.0",
		"upgrading loki-query-frontend to v3.8.0",
		"upgrading loki-querier to v3.8.0",
		"upgrading loki-distributor to v3.8.0",
		"loki ingesters 0/3 at v3.8.0",
		"loki ingesters 1/3 at v3.8.0",
		"loki ingesters 2/3 at v3.8.0",
		"every Loki component runs v3.8.0",
	}},
}

func TestHappyPathMicroservices(t *testing.T) {
	for _, walk := range walks {
		t.Run(string(walk.engine), func(t *testing.T) {
			w := newWorld(desire(engineAt(walk.engine, v1alpha1.TopologyMicroservices, walk.from, 3), walk.to))
			seen, acted := w.run(t, 200)
			if !reflect.DeepEqual(acted, walk.actions) {
				t.Fatalf("actions:\n got %q\nwant %q", acted, walk.actions)
			}
			// Every pod of the plan runs the new version; the gateway was not touched.
			for _, c := range w.state.Components {
				for _, p := range c.Pods {
					wantVersion := walk.to
					if c.Name == manifests.ComponentGateway {
						wantVersion = walk.from
					}
					if p.Version != wantVersion {
						t.Errorf("%s runs %s, want %s", p.Name, p.Version, wantVersion)
					}
				}
			}
			for _, o := range seen {
				// Progress is done exactly when Next is Done, so the version in the status changes only at the end.
				if _, done := Progress(o.state); done != (o.action.Kind == Done) {
					t.Errorf("Progress done=%v but Next is %v", done, o.action)
				}
				// Every DeletePod came when all three ingesters were Ready and ACTIVE on a fresh look.
				if o.action.Kind != DeletePod {
					continue
				}
				c, _ := o.state.component(walk.engine.Ingester())
				for _, p := range c.Pods {
					if !p.Ready || p.Ring != RingActive || p.Terminating {
						t.Errorf("%v while %s is Ready=%v ring=%q", o.action, p.Name, p.Ready, p.Ring)
					}
				}
			}
		})
	}
}

// TestProgressMessagesAlongTheWalk: the Progressing messages of the walk, deduplicated, in order. They move
// only when the rollout moves.
func TestProgressMessagesAlongTheWalk(t *testing.T) {
	for _, walk := range walks {
		w := newWorld(desire(engineAt(walk.engine, v1alpha1.TopologyMicroservices, walk.from, 3), walk.to))
		seen, _ := w.run(t, 200)
		var messages []string
		for _, o := range seen {
			m, _ := Progress(o.state)
			if len(messages) == 0 || messages[len(messages)-1] != m {
				messages = append(messages, m)
			}
		}
		if !reflect.DeepEqual(messages, walk.messages) {
			t.Errorf("%s messages:\n got %q\nwant %q", walk.engine, messages, walk.messages)
		}
	}
}

// TestResumeIsDerivedFromObservedState: a controller restarted at any point of the walk (a fresh call on the
// state it observes, with no history) takes the same action as the one that did not restart.
func TestResumeIsDerivedFromObservedState(t *testing.T) {
	for _, walk := range walks {
		t.Run(string(walk.engine), func(t *testing.T) {
			start := desire(engineAt(walk.engine, v1alpha1.TopologyMicroservices, walk.from, 3), walk.to)
			seen, _ := newWorld(clone(start)).run(t, 200)
			if len(seen) < 20 {
				t.Fatalf("walk too short: %d steps", len(seen))
			}
			for i := len(seen) - 1; i >= 0; i-- { // in reverse, so no call can depend on an earlier one
				o := seen[i]
				if got := Next(clone(o.state), o.now); got != o.action {
					t.Errorf("step %d: a fresh Next gives %v, the walk gave %v", i, got, o.action)
				}
			}

			// A restart mid-upgrade, from a state built by hand rather than reached by a walk: ingester 2
			// already runs the new revision (replaced by the previous controller), 1 and 0 do not.
			ingester := walk.engine.Ingester()
			mid := allButIngestersAtDesired(start)
			ing := componentPtr(&mid, ingester)
			ing.TemplateRevision = ing.DesiredRevision
			ing.Pods[2].Revision, ing.Pods[2].Version = ing.DesiredRevision, walk.to
			for _, now := range []time.Time{t0, t0.Add(time.Hour), t0.Add(24 * time.Hour)} {
				if got := Next(mid, now); got.Kind != DeletePod || got.Pod != podName(ingester, 1) {
					t.Errorf("mid-upgrade at %v: got %v, want DeletePod(%s)", now, got, podName(ingester, 1))
				}
			}
			if m, _ := Progress(mid); m != walk.messages[len(walk.messages)-3] {
				t.Errorf("mid-upgrade progress %q, want %q", m, walk.messages[len(walk.messages)-3])
			}
			// And the resumed walk finishes with the two remaining ingesters only.
			_, acted := newWorld(mid).run(t, 100)
			if want := walk.actions[len(walk.actions)-3:]; !reflect.DeepEqual(acted, want) {
				t.Errorf("resumed walk %q, want %q", acted, want)
			}
		})
	}
}

func TestIngesterThatNeverBecomesReadyStalls(t *testing.T) {
	for _, walk := range walks {
		for _, tc := range []struct {
			name       string
			waiting    string
			wantReason string
		}{
			{"not ready until the deadline", "", "did not become Ready within 10m0s"},
			{"crash-looping", "CrashLoopBackOff", "cannot start: CrashLoopBackOff"},
			{"image cannot be pulled", "ErrImagePull", "cannot start: ImagePullBackOff"},
		} {
			t.Run(string(walk.engine)+"/"+tc.name, func(t *testing.T) {
				w := newWorld(desire(engineAt(walk.engine, v1alpha1.TopologyMicroservices, walk.from, 3), walk.to))
				broken := podName(walk.engine.Ingester(), 2)
				w.broken[broken] = tc.waiting
				_, acted := w.run(t, 500)
				last := acted[len(acted)-1]
				if want := "Stalled(" + broken + ": " + tc.wantReason + ")"; last != want {
					t.Fatalf("last action %s, want %s (all: %q)", last, want, acted)
				}
				// Keep observing for an hour: it stays Stalled on the same pod with the same message, and no
				// other ingester is deleted.
				first := Next(w.state, w.now)
				for i := 0; i < 120; i++ {
					w.tick()
					a := Next(w.state, w.now)
					if a.Kind == DeletePod {
						t.Fatalf("deleted %s while %s is broken", a.Pod, broken)
					}
					if a != first {
						t.Fatalf("stall changed from %v to %v", first, a)
					}
				}
				if !strings.Contains(first.Message(), broken) || !strings.Contains(first.Message(), tc.wantReason) {
					t.Errorf("message %q does not name the pod and reason", first.Message())
				}
				for _, a := range acted {
					if a == "DeletePod("+podName(walk.engine.Ingester(), 1)+")" || a == "DeletePod("+podName(walk.engine.Ingester(), 0)+")" {
						t.Errorf("continued past the broken ingester: %q", acted)
					}
				}
			})
		}
	}
}

func TestDeadlineIsMeasuredFromNotReadySince(t *testing.T) {
	state := desire(clusterAt(v1alpha1.TopologyMicroservices, "v1.21.1", 3), "v1.22.0")
	state = allButIngestersAtDesired(state)
	ing := componentPtr(&state, manifests.ComponentIngester)
	ing.TemplateRevision = ing.DesiredRevision
	ing.Pods[2] = Pod{Name: "metrics-ingester-2", Ordinal: 2, Revision: ing.DesiredRevision, Version: "v1.22.0",
		NotReadySince: t0}
	for _, tc := range []struct {
		now      time.Time
		deadline time.Duration
		want     ActionKind
	}{
		{t0.Add(9*time.Minute + 59*time.Second), 0, Wait},
		{t0.Add(10 * time.Minute), 0, Stalled},
		{t0.Add(10 * time.Minute), 30 * time.Minute, Wait},
		{t0.Add(30 * time.Minute), 30 * time.Minute, Stalled},
	} {
		s := clone(state)
		s.ReadyDeadline = tc.deadline
		if got := Next(s, tc.now); got.Kind != tc.want || !strings.Contains(got.String(), "metrics-ingester-2") {
			t.Errorf("at +%v with deadline %v: got %v, want %s on metrics-ingester-2", tc.now.Sub(t0), tc.deadline, got, tc.want)
		}
	}
	// Unknown NotReadySince: no deadline applies.
	ing.Pods[2].NotReadySince = time.Time{}
	if got := Next(state, t0.Add(24*time.Hour)); got.Kind != Wait {
		t.Errorf("unknown NotReadySince: got %v, want Wait", got)
	}
}

func TestCrashLoopingQuerierStallsBeforeTheDistributors(t *testing.T) {
	w := newWorld(desire(clusterAt(v1alpha1.TopologyMicroservices, "v1.21.1", 3), "v1.22.0"))
	w.broken["metrics-querier-1"] = "CrashLoopBackOff"
	_, acted := w.run(t, 100)
	want := []string{
		"ApplyComponent(compactor)",
		"ApplyComponent(store-gateway)",
		"ApplyComponent(query-frontend)",
		"ApplyComponent(querier)",
		"Stalled(metrics-querier-1: cannot start: CrashLoopBackOff)",
	}
	if !reflect.DeepEqual(acted, want) {
		t.Fatalf("actions:\n got %q\nwant %q", acted, want)
	}
	// Between two crashes the kubelet reports no waiting reason; the restart count keeps it Stalled.
	s := clone(w.state)
	q := componentPtr(&s, manifests.ComponentQuerier)
	q.Pods[1].WaitingReason, q.Pods[1].RestartCount = "", CrashLoopRestarts
	if got := Next(s, w.now); got.Kind != Stalled || got.Reason != "cannot start: CrashLoopBackOff" {
		t.Errorf("running between crashes: got %v", got)
	}
	// A fixed spec (a new revision) rolls out from the start again, past the stall.
	fixed := desire(w.state, "v1.22.1")
	if got := Next(fixed, w.now); got.Kind != ApplyComponent || got.Component != manifests.ComponentCompactor {
		t.Errorf("after a new desired revision: got %v, want ApplyComponent(compactor)", got)
	}
}

// allButIngestersAtDesired: every component but the ingesters is rolled out to the desired revision.
func allButIngestersAtDesired(state State) State {
	state = clone(state)
	for i := range state.Components {
		c := &state.Components[i]
		if c.Name == state.engine().Ingester() || c.Name == manifests.ComponentGateway {
			continue
		}
		c.TemplateRevision = c.DesiredRevision
		for j := range c.Pods {
			c.Pods[j].Revision, c.Pods[j].Version = c.DesiredRevision, state.Version
		}
	}
	return state
}

func componentPtr(s *State, name string) *Component {
	for i := range s.Components {
		if s.Components[i].Name == name {
			return &s.Components[i]
		}
	}
	panic(name)
}

// ingesterState is a Cortex upgrade rolled out but for the ingesters, whose template is applied; edit
// changes it.
func ingesterState(edit func(s *State, ing *Component)) State {
	return ingesterStateOf(desire(clusterAt(v1alpha1.TopologyMicroservices, "v1.21.1", 3), "v1.22.0"), edit)
}

// ingesterStateOf is the upgrade plan rolled out but for its ingesters, whose template is applied; edit
// changes it.
func ingesterStateOf(plan State, edit func(s *State, ing *Component)) State {
	s := allButIngestersAtDesired(plan)
	ing := componentPtr(&s, s.engine().Ingester())
	ing.TemplateRevision = ing.DesiredRevision
	edit(&s, ing)
	return s
}

func TestIngesterTable(t *testing.T) {
	updated := func(ing *Component, ordinal int) {
		ing.Pods[ordinal].Revision, ing.Pods[ordinal].Version = ing.DesiredRevision, "v1.22.0"
	}
	for _, tc := range []struct {
		name string
		edit func(s *State, ing *Component)
		want Action
	}{
		{"all ACTIVE: highest ordinal first", func(s *State, ing *Component) {},
			Action{Kind: DeletePod, Component: "ingester", Pod: "metrics-ingester-2"}},
		{"pods listed in any order", func(s *State, ing *Component) {
			ing.Pods[0], ing.Pods[2] = ing.Pods[2], ing.Pods[0]
		}, Action{Kind: DeletePod, Component: "ingester", Pod: "metrics-ingester-2"}},
		{"replacement JOINING", func(s *State, ing *Component) {
			updated(ing, 2)
			ing.Pods[2].Ring = RingJoining
		}, Action{Kind: Wait, Component: "ingester", Reason: "ingester metrics-ingester-2 is JOINING in the ring", OnRing: true}},
		{"replacement Ready but not in the ring yet", func(s *State, ing *Component) {
			updated(ing, 2)
			ing.Pods[2].Ring = RingMissing
		}, Action{Kind: Wait, Component: "ingester", Reason: "ingester metrics-ingester-2 is not in the ring yet", OnRing: true}},
		{"another ingester LEAVING", func(s *State, ing *Component) {
			updated(ing, 2)
			ing.Pods[0].Ring = RingLeaving
		}, Action{Kind: Wait, Component: "ingester", Reason: "ingester metrics-ingester-0 is LEAVING in the ring", OnRing: true}},
		{"another ingester PENDING", func(s *State, ing *Component) {
			ing.Pods[1].Ring = RingPending
		}, Action{Kind: Wait, Component: "ingester", Reason: "ingester metrics-ingester-1 is PENDING in the ring", OnRing: true}},
		{"another ingester UNHEALTHY", func(s *State, ing *Component) {
			ing.Pods[1].Ring = RingUnhealthy
		}, Action{Kind: Wait, Component: "ingester", Reason: "ingester metrics-ingester-1 is UNHEALTHY in the ring", OnRing: true}},
		{"ring not observed", func(s *State, ing *Component) {
			s.RingObserved = false
		}, Action{Kind: Wait, Component: "ingester", Reason: "the ingester ring could not be read from the distributors", OnRing: true}},
		{"stray ring member unhealthy", func(s *State, ing *Component) {
			s.StrayRingMembers = []RingMember{{ID: "metrics-ingester-3", State: RingUnhealthy}}
		}, Action{Kind: Wait, Component: "ingester", Reason: "ring member metrics-ingester-3 is UNHEALTHY and is no ingester pod of this cluster; if it is gone for good, remove it with Forget on a distributor's /ring page", OnRing: true}},
		{"stray ring member ACTIVE does not block", func(s *State, ing *Component) {
			s.StrayRingMembers = []RingMember{{ID: "metrics-ingester-3", State: RingActive}}
		}, Action{Kind: DeletePod, Component: "ingester", Pod: "metrics-ingester-2"}},
		{"a pod is terminating", func(s *State, ing *Component) {
			ing.Pods[2].Terminating, ing.Pods[2].Ready = true, false
		}, Action{Kind: Wait, Component: "ingester", Reason: "ingester metrics-ingester-2 is shutting down"}},
		{"a pod does not exist", func(s *State, ing *Component) {
			ing.Pods = ing.Pods[:2]
		}, Action{Kind: Wait, Component: "ingester", Reason: "the ingester with ordinal 2 does not exist yet"}},
		{"replacement not Ready yet", func(s *State, ing *Component) {
			updated(ing, 2)
			ing.Pods[2].Ready, ing.Pods[2].NotReadySince, ing.Pods[2].Ring = false, t0, RingMissing
		}, Action{Kind: Wait, Component: "ingester", Reason: "ingester metrics-ingester-2 is not Ready yet"}},
		{"old ingester briefly not Ready: wait, do not replace", func(s *State, ing *Component) {
			ing.Pods[0].Ready, ing.Pods[0].NotReadySince = false, t0
		}, Action{Kind: Wait, Component: "ingester", Reason: "ingester metrics-ingester-0 is not Ready yet"}},
		{"the only broken ingester runs the old revision: replace it first", func(s *State, ing *Component) {
			ing.Pods[0].Ready, ing.Pods[0].WaitingReason = false, "CrashLoopBackOff"
		}, Action{Kind: DeletePod, Component: "ingester", Pod: "metrics-ingester-0"}},
		{"two down, one broken: stall on the broken one", func(s *State, ing *Component) {
			ing.Pods[0].Ready, ing.Pods[0].WaitingReason = false, "CrashLoopBackOff"
			ing.Pods[1].Ring = RingLeaving
		}, Action{Kind: Stalled, Component: "ingester", Pod: "metrics-ingester-0", Reason: "cannot start: CrashLoopBackOff"}},
		{"replacement crash-looping", func(s *State, ing *Component) {
			updated(ing, 2)
			ing.Pods[2].Ready, ing.Pods[2].WaitingReason, ing.Pods[2].Ring = false, "CrashLoopBackOff", RingMissing
		}, Action{Kind: Stalled, Component: "ingester", Pod: "metrics-ingester-2", Reason: "cannot start: CrashLoopBackOff"}},
		{"2 of 3 done", func(s *State, ing *Component) {
			updated(ing, 2)
			updated(ing, 1)
		}, Action{Kind: DeletePod, Component: "ingester", Pod: "metrics-ingester-0"}},
		{"all done", func(s *State, ing *Component) {
			updated(ing, 2)
			updated(ing, 1)
			updated(ing, 0)
		}, Action{Kind: Done}},
		{"ingester template not applied yet", func(s *State, ing *Component) {
			ing.TemplateRevision = revision(manifests.ComponentIngester, "v1.21.1")
		}, Action{Kind: ApplyComponent, Component: "ingester"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Next(ingesterState(tc.edit), t0.Add(time.Minute))
			got.Reason = reasonIf(tc.want, got)
			if got != tc.want {
				t.Errorf("got  %#v\nwant %#v", got, tc.want)
			}
		})
	}
}

// reasonIf keeps got's reason only where the test states one (Wait and Stalled).
func reasonIf(want, got Action) string {
	if want.Kind == Wait || want.Kind == Stalled {
		return got.Reason
	}
	return ""
}

func TestOrderBeforeIngesters(t *testing.T) {
	base := desire(clusterAt(v1alpha1.TopologyMicroservices, "v1.21.1", 3), "v1.22.0")
	for _, tc := range []struct {
		name string
		edit func(s *State)
		want string
	}{
		{"nothing applied: compactor first", func(s *State) {}, "ApplyComponent(compactor)"},
		{"compactor applied, its pods not replaced yet", func(s *State) {
			c := componentPtr(s, manifests.ComponentCompactor)
			c.TemplateRevision = c.DesiredRevision
		}, "Wait(pod metrics-compactor-0 runs the previous revision; its StatefulSet replaces it)"},
		{"querier applied, an old pod still there", func(s *State) {
			*s = allButIngestersAtDesired(*s)
			q := componentPtr(s, manifests.ComponentQuerier)
			q.Pods = append(q.Pods, Pod{Name: "metrics-querier-old", Revision: revision("querier", "v1.21.1"), Ready: true})
		}, "Wait(pod metrics-querier-old runs the previous revision; its Deployment replaces it)"},
		{"distributor pods all new but one not Ready", func(s *State) {
			*s = allButIngestersAtDesired(*s)
			d := componentPtr(s, manifests.ComponentDistributor)
			d.Pods[1].Ready, d.Pods[1].NotReadySince = false, t0
		}, "Wait(pod metrics-distributor-1 is not Ready yet)"},
		{"distributor rolled out but a replica missing", func(s *State) {
			*s = allButIngestersAtDesired(*s)
			d := componentPtr(s, manifests.ComponentDistributor)
			d.Pods = d.Pods[:1]
		}, "Wait(1 of 2 pods of distributor exist)"},
		{"an old terminating pod", func(s *State) {
			*s = allButIngestersAtDesired(*s)
			d := componentPtr(s, manifests.ComponentQueryFrontend)
			d.Pods = append(d.Pods, Pod{Name: "metrics-query-frontend-x", Revision: revision("query-frontend", "v1.21.1"), Terminating: true})
		}, "Wait(pod metrics-query-frontend-x is terminating)"},
		{"a missing workload is created before anything else", func(s *State) {
			var kept []Component
			for _, c := range s.Components {
				if c.Name != manifests.ComponentQuerier {
					kept = append(kept, c)
				}
			}
			s.Components = kept
		}, "ApplyComponent(querier)"},
		{"an old stalled store-gateway pod is left to its StatefulSet", func(s *State) {
			c := componentPtr(s, manifests.ComponentCompactor)
			c.TemplateRevision = c.DesiredRevision
			c.Pods[0].Revision = c.DesiredRevision
			g := componentPtr(s, manifests.ComponentStoreGateway)
			g.TemplateRevision = g.DesiredRevision
			g.Pods[0].Ready, g.Pods[0].WaitingReason = false, "CrashLoopBackOff"
		}, "Wait(pod metrics-store-gateway-0 runs the previous revision; its StatefulSet replaces it)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := clone(base)
			tc.edit(&s)
			if got := Next(s, t0.Add(time.Minute)).String(); got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestNewRevisionMidIngestersStartsOverInOrder(t *testing.T) {
	w := newWorld(desire(clusterAt(v1alpha1.TopologyMicroservices, "v1.21.1", 3), "v1.22.0"))
	for i := 0; i < 200; i++ {
		a := Next(w.state, w.now)
		if a.Kind == DeletePod && a.Pod == "metrics-ingester-1" {
			break
		}
		if a.Kind == Wait {
			w.tick()
		} else {
			w.apply(t, a)
		}
	}
	w.state = desire(w.state, "v1.22.1")
	_, acted := w.run(t, 300)
	want := []string{
		"ApplyComponent(compactor)",
		"ApplyComponent(store-gateway)",
		"ApplyComponent(query-frontend)",
		"ApplyComponent(querier)",
		"ApplyComponent(distributor)",
		"ApplyComponent(ingester)",
		"DeletePod(metrics-ingester-2)",
		"DeletePod(metrics-ingester-1)",
		"DeletePod(metrics-ingester-0)",
		"Done",
	}
	if !reflect.DeepEqual(acted, want) {
		t.Fatalf("actions:\n got %q\nwant %q", acted, want)
	}
}

func TestTopologySingle(t *testing.T) {
	for _, walk := range walks {
		t.Run(string(walk.engine), func(t *testing.T) {
			process := walk.engine.Order(v1alpha1.TopologySingle)[0] // all, loki
			start := desire(engineAt(walk.engine, v1alpha1.TopologySingle, walk.from, 0), walk.to)
			w := newWorld(clone(start))
			if m, done := Progress(w.state); m != "upgrading "+displayName(process)+" to "+walk.to || done {
				t.Errorf("progress before: %q %v", m, done)
			}
			_, acted := w.run(t, 20)
			if want := []string{"ApplyComponent(" + process + ")", "Done"}; !reflect.DeepEqual(acted, want) {
				t.Fatalf("actions %q, want %q", acted, want)
			}
			if m, done := Progress(w.state); m != walk.messages[len(walk.messages)-1] || !done {
				t.Errorf("progress after: %q %v", m, done)
			}
			// Empty topology is the API's default, single.
			s := clone(w.state)
			s.Topology = ""
			if got := Next(s, w.now); got.Kind != Done {
				t.Errorf("empty topology: %v", got)
			}

			// The one process never becomes Ready.
			w = newWorld(clone(start))
			w.broken[podName(process, 0)] = ""
			_, acted = w.run(t, 100)
			if last, want := acted[len(acted)-1], "Stalled("+podName(process, 0)+": did not become Ready within 10m0s)"; last != want {
				t.Errorf("last action %s, want %s", last, want)
			}
		})
	}
}

func TestNoChangeIsDone(t *testing.T) {
	for _, topology := range []v1alpha1.Topology{v1alpha1.TopologySingle, v1alpha1.TopologyMicroservices} {
		s := clusterAt(topology, "v1.21.1", 3)
		if got := Next(s, t0); got.Kind != Done {
			t.Errorf("%s: got %v, want Done", topology, got)
		}
		if m, done := Progress(s); m != "every component runs v1.21.1" || !done {
			t.Errorf("%s: progress %q %v", topology, m, done)
		}
		// The gateway is not part of the plan: a gateway rolling out changes nothing.
		g := componentPtr(&s, manifests.ComponentGateway)
		g.DesiredRevision = "gateway@new"
		g.Pods[0].Ready = false
		if got := Next(s, t0); got.Kind != Done {
			t.Errorf("%s with a gateway rollout: got %v, want Done", topology, got)
		}
	}
}

func TestNewClusterCreatesEverythingFirst(t *testing.T) {
	s := State{Topology: v1alpha1.TopologyMicroservices, Version: "v1.21.1"}
	var created []string
	for i := 0; i < 10; i++ {
		a := Next(s, t0)
		if a.Kind != ApplyComponent {
			break
		}
		if m, _ := Progress(s); m != "creating "+a.Component {
			t.Errorf("progress %q while creating %s", m, a.Component)
		}
		created = append(created, a.Component)
		rev := revision(a.Component, "v1.21.1")
		s.Components = append(s.Components, Component{Name: a.Component, DesiredRevision: rev, TemplateRevision: rev, Replicas: 1})
	}
	if want := Order(v1alpha1.TopologyMicroservices); !reflect.DeepEqual(created, want) {
		t.Errorf("created %q, want %q", created, want)
	}
}

func TestProgressMessages(t *testing.T) {
	single := desire(clusterAt(v1alpha1.TopologySingle, "v1.21.1", 0), "v1.21.1")
	all := componentPtr(&single, manifests.TargetAll)
	all.DesiredRevision = "all@v1.21.1-newconfig"
	notReady := clusterAt(v1alpha1.TopologyMicroservices, "v1.21.1", 3)
	componentPtr(&notReady, manifests.ComponentQuerier).Pods[0].Ready = false
	for _, tc := range []struct {
		name  string
		state State
		want  string
	}{
		{"config change, same version", single, "rolling out the new pod template of cortex (v1.21.1)"},
		{"a pod not Ready, nothing to roll", notReady, "waiting for querier to be Ready"},
		{"store-gateway", func() State {
			s := desire(clusterAt(v1alpha1.TopologyMicroservices, "v1.21.1", 3), "v1.21.2")
			c := componentPtr(&s, manifests.ComponentCompactor)
			c.TemplateRevision, c.Pods[0].Revision, c.Pods[0].Version = c.DesiredRevision, c.DesiredRevision, "v1.21.2"
			return s
		}(), "upgrading store-gateway to v1.21.2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := 0; i < 3; i++ { // the same state always gives the same message
				if m, done := Progress(clone(tc.state)); m != tc.want || done {
					t.Fatalf("got %q done=%v, want %q", m, done, tc.want)
				}
			}
		})
	}
}

func TestMayApplyTemplate(t *testing.T) {
	s := desire(clusterAt(v1alpha1.TopologyMicroservices, "v1.21.1", 3), "v1.22.0")
	for _, tc := range []struct {
		component string
		want      bool
	}{
		{manifests.ComponentCompactor, true}, // the rollout is there
		{manifests.ComponentQuerier, false},  // not yet: keep its current template
		{manifests.ComponentIngester, false},
		{"ruler", true}, // does not exist: created with the desired template
	} {
		if got := MayApplyTemplate(s, t0, tc.component); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.component, got, tc.want)
		}
	}
	done := clusterAt(v1alpha1.TopologyMicroservices, "v1.21.1", 3)
	if !MayApplyTemplate(done, t0, manifests.ComponentIngester) {
		t.Error("a component at its desired revision may always be applied")
	}
}

func TestStalledMessage(t *testing.T) {
	a := Action{Kind: Stalled, Component: "ingester", Pod: "metrics-ingester-2", Reason: "did not become Ready within 10m0s"}
	want := "the rollout stopped at pod metrics-ingester-2 (ingester): it did not become Ready within 10m0s; " +
		"find out why with kubectl describe pod metrics-ingester-2 and kubectl logs metrics-ingester-2, then fix " +
		"the cause or change the MetricsCluster's spec; the rollout continues by itself once the pod is Ready"
	if got := a.Message(); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	if (Action{Kind: Wait}).Message() != "" {
		t.Error("only Stalled has a message")
	}
}

func TestRingUnreadableOrRollingUpdateIngesters(t *testing.T) {
	// The ring cannot be read: no ingester is replaced, and the progress count does not move.
	s := ingesterState(func(s *State, ing *Component) {
		ing.Pods[2].Revision, ing.Pods[2].Version = ing.DesiredRevision, "v1.22.0"
		s.RingObserved = false
		for i := range ing.Pods {
			ing.Pods[i].Ring = RingMissing
		}
	})
	if got := Next(s, t0); got.Kind != Wait || got.Reason != "the ingester ring could not be read from the distributors" {
		t.Errorf("ring unreadable: %v", got)
	}
	if m, _ := Progress(s); m != "ingesters 1/3 at v1.22.0" {
		t.Errorf("ring unreadable: progress %q", m)
	}

	// Ingesters in a RollingUpdate StatefulSet: their controller replaces them, the planner still waits for
	// the ring before it calls the rollout done.
	s = ingesterState(func(s *State, ing *Component) {
		ing.OnDelete = false
		for i := range ing.Pods {
			ing.Pods[i].Revision, ing.Pods[i].Version = ing.DesiredRevision, "v1.22.0"
		}
		ing.Pods[1].Ring = RingJoining
	})
	if got := Next(s, t0); got.String() != "Wait(ingester metrics-ingester-1 is JOINING in the ring)" || !got.OnRing {
		t.Errorf("RollingUpdate ingesters: %v (OnRing %t, want true)", got, got.OnRing)
	}
	componentPtr(&s, manifests.ComponentIngester).Pods[1].Ring = RingActive
	if got := Next(s, t0); got.Kind != Done {
		t.Errorf("RollingUpdate ingesters, all ACTIVE: %v", got)
	}
}
