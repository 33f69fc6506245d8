package upgrade

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/opstrace/opstrace/internal/manifests"
)

// ActionKind is what the executor does.
type ActionKind string

const (
	// ApplyComponent: write the desired pod template to the workload of Action.Component (creating the
	// workload if it does not exist). A Deployment or a RollingUpdate StatefulSet then rolls its pods; an
	// OnDelete StatefulSet restarts nothing.
	ApplyComponent ActionKind = "ApplyComponent"
	// DeletePod: delete Action.Pod, an ingester of the OnDelete StatefulSet, which recreates it from the
	// desired template. Use the pod's full termination grace period, so the ingester flushes its state.
	DeletePod ActionKind = "DeletePod"
	// Wait: something is still converging (Action.Reason says what); observe again later.
	Wait ActionKind = "Wait"
	// Done: every component runs the desired revision and is Ready.
	Done ActionKind = "Done"
	// Stalled: Action.Pod did not become Ready in time or cannot start (Action.Reason). Report Degraded with
	// Action.Message and take no other step; observe again later.
	Stalled ActionKind = "Stalled"
)

// Action is the one thing to do now.
type Action struct {
	Kind ActionKind
	// Component the action is about; empty for Done.
	Component string
	// Pod to delete (DeletePod) or that stalled the rollout (Stalled).
	Pod string
	// Reason is a stable, human explanation: what is awaited (Wait), why the pod stalled (Stalled), or why the
	// action is taken. It holds no times or counters that change while nothing else does.
	Reason string
	// OnRing: a Wait for the ingester ring, the one thing the rollout waits for that no Kubernetes event
	// announces (an ingester not ACTIVE yet as the distributors see it, or a ring that could not be read).
	// The executor polls it; every other Wait ends with a change to a pod or a workload, which wakes it.
	OnRing bool
}

func (a Action) String() string {
	switch a.Kind {
	case Done:
		return string(Done)
	case DeletePod:
		return fmt.Sprintf("%s(%s)", a.Kind, a.Pod)
	case Stalled:
		return fmt.Sprintf("%s(%s: %s)", a.Kind, a.Pod, a.Reason)
	case Wait:
		return fmt.Sprintf("%s(%s)", a.Kind, a.Reason)
	default:
		return fmt.Sprintf("%s(%s)", a.Kind, a.Component)
	}
}

// Message is the Degraded condition's message for a Stalled action: what is wrong, where, and how to fix it.
func (a Action) Message() string {
	if a.Kind != Stalled {
		return ""
	}
	return fmt.Sprintf("the rollout stopped at pod %s (%s): it %s; find out why with kubectl describe pod %s and "+
		"kubectl logs %s, then fix the cause or change the MetricsCluster's spec; the rollout continues by "+
		"itself once the pod is Ready", a.Pod, a.Component, a.Reason, a.Pod, a.Pod)
}

// Next is the one action to take in state. It is pure: the same state and now always give the same action,
// whatever happened before.
func Next(state State, now time.Time) Action {
	order := state.engine().Order(state.Topology)
	for _, name := range order {
		if _, ok := state.component(name); !ok {
			return Action{Kind: ApplyComponent, Component: name, Reason: "the workload does not exist yet"}
		}
	}
	for _, name := range order {
		c, _ := state.component(name)
		if c.TemplateRevision != c.DesiredRevision {
			return Action{Kind: ApplyComponent, Component: name, Reason: "every earlier component runs the desired revision"}
		}
		if action, done := step(state, c, now); !done {
			return action
		}
	}
	return Action{Kind: Done}
}

// MayApplyTemplate says whether the executor may write the desired pod template of component when it applies
// the workload for any reason (a new replica count, labels): only when the rollout has reached it, or the
// workload does not exist yet, or it is no component of the plan. Otherwise it must keep the template the
// workload has now.
func MayApplyTemplate(state State, now time.Time, component string) bool {
	c, ok := state.component(component)
	if !ok || c.TemplateRevision == c.DesiredRevision || !slices.Contains(state.engine().Order(state.Topology), component) {
		return true
	}
	action := Next(state, now)
	return action.Kind == ApplyComponent && action.Component == component
}

// step is the action for a component whose template is the desired one, and whether it is fully rolled out.
// Whether it is done does not depend on now: now only decides between Wait and Stalled.
func step(state State, c Component, now time.Time) (Action, bool) {
	if state.isRingIngester(c) {
		if c.OnDelete {
			return ingesterStep(state, c, now)
		}
		if action, done := rolloutStep(state, c, now); !done {
			return action, false
		}
		return ringStep(state, c)
	}
	return rolloutStep(state, c, now)
}

// rolloutStep waits for the workload's own controller to replace every pod with a Ready pod of the desired
// revision.
func rolloutStep(state State, c Component, now time.Time) (Action, bool) {
	pods := sortedPods(c.Pods)
	deadline := state.readyDeadline()
	for _, p := range pods {
		if p.Revision == c.DesiredRevision && !p.Terminating {
			if reason := stallReason(p, deadline, now); reason != "" {
				return Action{Kind: Stalled, Component: c.Name, Pod: p.Name, Reason: reason}, false
			}
		}
	}
	for _, p := range pods {
		switch {
		case p.Terminating:
			return wait(c, "pod %s is terminating", p.Name), false
		case p.Revision != c.DesiredRevision:
			return wait(c, "pod %s runs the previous revision; its %s replaces it", p.Name, workloadKind(c)), false
		case !p.Ready:
			return wait(c, "pod %s is not Ready yet", p.Name), false
		}
	}
	if int32(len(pods)) < c.Replicas {
		return wait(c, "%d of %d pods of %s exist", len(pods), c.Replicas, c.Name), false
	}
	return Action{}, true
}

// ringStep waits until every ingester is ACTIVE in the ring, for ingesters that the StatefulSet controller
// rolls itself.
func ringStep(state State, c Component) (Action, bool) {
	if !state.RingObserved {
		return ringUnread(state, c), false
	}
	for _, p := range sortedPods(c.Pods) {
		if p.Ring != RingActive {
			return waitRing(c, ringWait(p)), false
		}
	}
	for _, m := range state.StrayRingMembers {
		if m.State != RingActive {
			return waitRing(c, strayWait(state, m)), false
		}
	}
	return Action{}, true
}

// down is an ingester that is not available: not Ready, not ACTIVE in the ring, terminating, missing, or a
// stray ring member that is not ACTIVE.
type down struct {
	pod    *Pod // nil for a missing pod or a stray ring member
	reason string
	ring   bool // down only in the ring's view
}

// ingesterStep replaces the ingesters of an OnDelete StatefulSet one at a time, highest ordinal first.
func ingesterStep(state State, c Component, now time.Time) (Action, bool) {
	pods := sortedPods(c.Pods)
	deadline := state.readyDeadline()
	// A replacement that does not come up stops everything.
	for _, p := range pods {
		if p.Revision == c.DesiredRevision && !p.Terminating {
			if reason := stallReason(p, deadline, now); reason != "" {
				return Action{Kind: Stalled, Component: c.Name, Pod: p.Name, Reason: reason}, false
			}
		}
	}
	if !state.RingObserved {
		return ringUnread(state, c), false
	}

	var unavailable []down
	present := map[int]bool{}
	for i := range pods {
		p := &pods[i]
		present[p.Ordinal] = true
		switch {
		case p.Terminating:
			unavailable = append(unavailable, down{pod: p, reason: fmt.Sprintf("ingester %s is shutting down", p.Name)})
		case !p.Ready:
			unavailable = append(unavailable, down{pod: p, reason: fmt.Sprintf("ingester %s is not Ready yet", p.Name)})
		case p.Ring != RingActive:
			unavailable = append(unavailable, down{pod: p, reason: ringWait(*p), ring: true})
		}
	}
	for ordinal := 0; ordinal < int(c.Replicas); ordinal++ {
		if !present[ordinal] {
			unavailable = append(unavailable, down{reason: fmt.Sprintf("the ingester with ordinal %d does not exist yet", ordinal)})
		}
	}
	for _, m := range state.StrayRingMembers {
		if m.State != RingActive {
			unavailable = append(unavailable, down{reason: strayWait(state, m), ring: true})
		}
	}

	if len(unavailable) == 0 {
		// Every ingester is Ready and ACTIVE: replace the highest ordinal that runs an old revision.
		for i := len(pods) - 1; i >= 0; i-- {
			if pods[i].Revision != c.DesiredRevision {
				return Action{Kind: DeletePod, Component: c.Name, Pod: pods[i].Name,
					Reason: "every ingester is Ready and ACTIVE in the ring; this is the highest ordinal on the previous revision"}, false
			}
		}
		return Action{}, true
	}

	// One broken ingester of a previous revision, every other one available: replacing it makes nothing less
	// available, and it is the only way forward when the new revision is the fix.
	if len(unavailable) == 1 {
		if p := unavailable[0].pod; p != nil && !p.Terminating && p.Revision != c.DesiredRevision {
			if reason := stallReason(*p, deadline, now); reason != "" {
				return Action{Kind: DeletePod, Component: c.Name, Pod: p.Name,
					Reason: "it runs the previous revision and " + reason + ", and every other ingester is Ready and ACTIVE"}, false
			}
		}
	}
	// Several ingesters down and one of them broken: a person must look.
	for _, d := range unavailable {
		if d.pod != nil && !d.pod.Terminating {
			if reason := stallReason(*d.pod, deadline, now); reason != "" {
				return Action{Kind: Stalled, Component: c.Name, Pod: d.pod.Name, Reason: reason}, false
			}
		}
	}
	return Action{Kind: Wait, Component: c.Name, Reason: unavailable[0].reason, OnRing: unavailable[0].ring}, false
}

// stallReason says why a pod that is not Ready will not become Ready by waiting; empty when it may.
func stallReason(p Pod, deadline time.Duration, now time.Time) string {
	if p.Ready {
		return ""
	}
	switch p.WaitingReason {
	case "CrashLoopBackOff", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
		"CreateContainerError", "RunContainerError":
		return "cannot start: " + p.WaitingReason
	case "ErrImagePull":
		// The kubelet alternates ErrImagePull and ImagePullBackOff; one name keeps the message stable.
		return "cannot start: ImagePullBackOff"
	}
	if p.RestartCount >= CrashLoopRestarts {
		return "cannot start: CrashLoopBackOff"
	}
	if !p.NotReadySince.IsZero() && now.Sub(p.NotReadySince) >= deadline {
		return "did not become Ready within " + deadline.String()
	}
	return ""
}

func ringWait(p Pod) string {
	if p.Ring == RingMissing {
		return fmt.Sprintf("ingester %s is not in the ring yet", p.Name)
	}
	return fmt.Sprintf("ingester %s is %s in the ring", p.Name, p.Ring)
}

func strayWait(state State, m RingMember) string {
	ringState := string(m.State)
	if m.State == RingMissing {
		ringState = "in no known state"
	}
	return fmt.Sprintf("ring member %s is %s and is no ingester pod of this cluster; if it is gone for good, "+
		"remove it with Forget on a %sdistributor's /ring page", m.ID, ringState, state.engine().qualifier())
}

func wait(c Component, format string, args ...any) Action {
	return Action{Kind: Wait, Component: c.Name, Reason: fmt.Sprintf(format, args...)}
}

func waitRing(c Component, reason string) Action {
	return Action{Kind: Wait, Component: c.Name, Reason: reason, OnRing: true}
}

func ringUnread(state State, c Component) Action {
	q := state.engine().qualifier()
	return waitRing(c, "the "+q+"ingester ring could not be read from the "+q+"distributors")
}

func workloadKind(c Component) string {
	switch c.Name {
	case manifests.ComponentDistributor, manifests.ComponentQuerier, manifests.ComponentQueryFrontend,
		manifests.LokiComponentDistributor, manifests.LokiComponentQuerier, manifests.LokiComponentQueryFrontend:
		return "Deployment"
	}
	return "StatefulSet"
}

// sortedPods is a copy of pods ordered by ordinal, then name, so every decision is deterministic.
func sortedPods(pods []Pod) []Pod {
	out := append([]Pod(nil), pods...)
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Ordinal != out[j].Ordinal {
			return out[i].Ordinal < out[j].Ordinal
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// Progress is the message of the Progressing condition, and whether the rollout is done: every component of
// the plan runs the desired revision and is Ready (ingesters also ACTIVE in the ring). Only then may the
// engine's version in the status (status.version, status.logsVersion) become state.Version. The message
// holds no times, and changes only when the rollout moves.
func Progress(state State) (message string, done bool) {
	order := state.engine().Order(state.Topology)
	for _, name := range order {
		if _, ok := state.component(name); !ok {
			return "creating " + displayName(name), false
		}
	}
	for _, name := range order {
		c, _ := state.component(name)
		rolling := c.TemplateRevision != c.DesiredRevision
		if !rolling {
			// Whether a step is done does not depend on the time; the zero time never stalls on a deadline.
			if _, done := step(state, c, time.Time{}); done {
				continue
			}
			for _, p := range c.Pods {
				if p.Revision != c.DesiredRevision {
					rolling = true
				}
			}
		}
		switch {
		case state.isRingIngester(c):
			return fmt.Sprintf("%singesters %d/%d at %s", strings.ToLower(state.engine().qualifier()),
				availableIngesters(state, c), c.Replicas, state.Version), false
		case versionChange(state):
			return fmt.Sprintf("upgrading %s to %s", displayName(name), state.Version), false
		case rolling:
			return fmt.Sprintf("rolling out the new pod template of %s (%s)", displayName(name), state.Version), false
		default:
			return fmt.Sprintf("waiting for %s to be Ready", displayName(name)), false
		}
	}
	return "every " + state.engine().qualifier() + "component runs " + state.Version, true
}

// availableIngesters counts the ingesters that run the desired revision, are Ready and ACTIVE in the ring.
// When the ring could not be read, the ring is left out, so that a failed read does not move the count.
func availableIngesters(state State, c Component) int {
	n := 0
	for _, p := range c.Pods {
		if p.Revision == c.DesiredRevision && p.Ready && !p.Terminating && (p.Ring == RingActive || !state.RingObserved) {
			n++
		}
	}
	return n
}

// versionChange: some pod of the plan runs another version than the desired one.
func versionChange(state State) bool {
	for _, name := range state.engine().Order(state.Topology) {
		c, _ := state.component(name)
		for _, p := range c.Pods {
			if p.Version != "" && p.Version != state.Version {
				return true
			}
		}
	}
	return false
}

func displayName(component string) string {
	if component == manifests.TargetAll {
		return "cortex"
	}
	return component
}
