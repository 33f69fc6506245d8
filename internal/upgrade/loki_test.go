package upgrade

import (
	"reflect"
	"testing"
	"time"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/manifests"
)

// The Loki plan is the same planner as Cortex's with Loki's components: plan_test.go walks both (walks); these
// tests are Loki's own cases.

const (
	lokiFrom = "v3.7.8"
	lokiTo   = "v3.8.0"
)

// lokiUpgrade is a microservices cluster whose Loki components run lokiFrom, with lokiTo desired.
func lokiUpgrade() State {
	return desire(engineAt(Loki, v1alpha1.TopologyMicroservices, lokiFrom, 3), lokiTo)
}

// lokiIngesterState is a Loki rollout that reached the ingesters, whose template is applied; edit changes it.
func lokiIngesterState(edit func(s *State, ing *Component)) State {
	return ingesterStateOf(lokiUpgrade(), edit)
}

func TestLokiIngesterTable(t *testing.T) {
	updated := func(ing *Component, ordinal int) {
		ing.Pods[ordinal].Revision, ing.Pods[ordinal].Version = ing.DesiredRevision, lokiTo
	}
	const component = manifests.LokiComponentIngester
	for _, tc := range []struct {
		name string
		edit func(s *State, ing *Component)
		want Action
	}{
		{"all ACTIVE: highest ordinal first", func(s *State, ing *Component) {},
			Action{Kind: DeletePod, Component: component, Pod: "metrics-loki-ingester-2"}},
		{"replacement Ready but JOINING in the ring: wait", func(s *State, ing *Component) {
			updated(ing, 2)
			ing.Pods[2].Ring = RingJoining
		}, Action{Kind: Wait, Component: component, Reason: "ingester metrics-loki-ingester-2 is JOINING in the ring", OnRing: true}},
		{"replacement Ready but not in the ring yet: wait", func(s *State, ing *Component) {
			updated(ing, 2)
			ing.Pods[2].Ring = RingMissing
		}, Action{Kind: Wait, Component: component, Reason: "ingester metrics-loki-ingester-2 is not in the ring yet", OnRing: true}},
		{"another ingester UNHEALTHY: wait", func(s *State, ing *Component) {
			updated(ing, 2)
			ing.Pods[0].Ring = RingUnhealthy
		}, Action{Kind: Wait, Component: component, Reason: "ingester metrics-loki-ingester-0 is UNHEALTHY in the ring", OnRing: true}},
		{"ring unreadable: wait", func(s *State, ing *Component) {
			updated(ing, 2)
			s.RingObserved = false
		}, Action{Kind: Wait, Component: component, Reason: "the Loki ingester ring could not be read from the Loki distributors", OnRing: true}},
		{"stray ring member LEAVING: wait", func(s *State, ing *Component) {
			s.StrayRingMembers = []RingMember{{ID: "metrics-loki-ingester-3", State: RingLeaving}}
		}, Action{Kind: Wait, Component: component, Reason: "ring member metrics-loki-ingester-3 is LEAVING and is no ingester pod of this cluster; if it is gone for good, remove it with Forget on a Loki distributor's /ring page", OnRing: true}},
		{"replacement terminating: wait", func(s *State, ing *Component) {
			ing.Pods[2].Terminating, ing.Pods[2].Ready = true, false
		}, Action{Kind: Wait, Component: component, Reason: "ingester metrics-loki-ingester-2 is shutting down"}},
		{"replacement crash-looping: stall", func(s *State, ing *Component) {
			updated(ing, 2)
			ing.Pods[2].Ready, ing.Pods[2].WaitingReason, ing.Pods[2].Ring = false, "CrashLoopBackOff", RingMissing
		}, Action{Kind: Stalled, Component: component, Pod: "metrics-loki-ingester-2", Reason: "cannot start: CrashLoopBackOff"}},
		{"2 of 3 done", func(s *State, ing *Component) {
			updated(ing, 2)
			updated(ing, 1)
		}, Action{Kind: DeletePod, Component: component, Pod: "metrics-loki-ingester-0"}},
		{"all done", func(s *State, ing *Component) {
			updated(ing, 2)
			updated(ing, 1)
			updated(ing, 0)
		}, Action{Kind: Done}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Next(lokiIngesterState(tc.edit), t0.Add(time.Minute))
			got.Reason = reasonIf(tc.want, got)
			if got != tc.want {
				t.Errorf("got  %#v\nwant %#v", got, tc.want)
			}
		})
	}

	// An unreadable ring does not move the count either way.
	s := lokiIngesterState(func(s *State, ing *Component) {
		updated(ing, 2)
		s.RingObserved = false
		for i := range ing.Pods {
			ing.Pods[i].Ring = RingMissing
		}
	})
	if m, _ := Progress(s); m != "loki ingesters 1/3 at v3.8.0" {
		t.Errorf("ring unreadable: progress %q", m)
	}
}

// TestPlansIgnoreTheOtherEngine: each plan sees only its own engine's components, even in a State that lists
// both, so a stalled Cortex rollout cannot hold back Loki's and the other way round, and neither engine's
// versions count in the other's skew check.
func TestPlansIgnoreTheOtherEngine(t *testing.T) {
	cortex := desire(clusterAt(v1alpha1.TopologyMicroservices, "v1.21.1", 3), "v1.22.0")
	loki := lokiUpgrade()
	// The Cortex rollout is stalled on an ingester, the Loki one is about to replace its first ingester.
	cortex = allButIngestersAtDesired(cortex)
	ing := componentPtr(&cortex, manifests.ComponentIngester)
	ing.TemplateRevision = ing.DesiredRevision
	ing.Pods[2].Revision, ing.Pods[2].Ready, ing.Pods[2].WaitingReason = ing.DesiredRevision, false, "CrashLoopBackOff"
	loki = allButIngestersAtDesired(loki)
	lokiIng := componentPtr(&loki, manifests.LokiComponentIngester)
	lokiIng.TemplateRevision = lokiIng.DesiredRevision

	both := func(s State, others State) State {
		s = clone(s)
		for _, c := range others.Components {
			if c.Name != manifests.ComponentGateway {
				s.Components = append(s.Components, c)
			}
		}
		return s
	}
	if got := Next(both(loki, cortex), t0); got.Kind != DeletePod || got.Pod != "metrics-loki-ingester-2" {
		t.Errorf("Loki plan beside a stalled Cortex: got %v, want DeletePod(metrics-loki-ingester-2)", got)
	}
	if got := Next(both(cortex, loki), t0); got.Kind != Stalled || got.Pod != "metrics-ingester-2" {
		t.Errorf("Cortex plan beside Loki: got %v, want Stalled(metrics-ingester-2)", got)
	}
	if m, _ := Progress(both(loki, cortex)); m != "loki ingesters 0/3 at v3.8.0" {
		t.Errorf("Loki progress beside Cortex: %q", m)
	}
	if oldest, newest := RunningVersions(both(loki, cortex)); oldest != lokiFrom || newest != lokiTo {
		t.Errorf("Loki running versions beside Cortex: %s %s, want %s %s", oldest, newest, lokiFrom, lokiTo)
	}
	if err := CheckVersion(both(loki, cortex)); err != nil {
		t.Errorf("Loki %s beside Cortex v1.21/v1.22 pods: %v", lokiTo, err)
	}
	// Loki's new template is let through by the stalled Cortex plan.
	lokiStart := lokiUpgrade()
	if !MayApplyTemplate(both(cortex, lokiStart), t0, manifests.LokiComponentCompactor) {
		t.Error("the stalled Cortex plan holds back the Loki compactor's template")
	}
	if !MayApplyTemplate(both(lokiStart, cortex), t0, manifests.LokiComponentCompactor) {
		t.Error("the Loki plan holds back its first component's template")
	}
	if MayApplyTemplate(both(lokiStart, cortex), t0, manifests.LokiComponentQuerier) {
		t.Error("the Loki plan lets the querier's template through before the compactor is rolled out")
	}

	// A new cluster with logs on creates every Loki workload at once, in order.
	s := State{Engine: Loki, Topology: v1alpha1.TopologyMicroservices, Version: lokiFrom}
	var created []string
	for i := 0; i < 10; i++ {
		a := Next(s, t0)
		if a.Kind != ApplyComponent {
			break
		}
		created = append(created, a.Component)
		rev := revision(a.Component, lokiFrom)
		s.Components = append(s.Components, Component{Name: a.Component, DesiredRevision: rev, TemplateRevision: rev, Replicas: 1})
	}
	if want := Loki.Order(v1alpha1.TopologyMicroservices); !reflect.DeepEqual(created, want) {
		t.Errorf("created %q, want %q", created, want)
	}
}
