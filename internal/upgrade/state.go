// Package upgrade decides, one step at a time, how a change to the Cortex or Loki workloads of a
// MetricsCluster is rolled out without losing a sample or a log line: a new version, a new configuration, or
// any other change to a pod template.
//
// It is a pure planner. The controller observes the cluster (workloads, pods, the ingester ring as the
// distributors see it) into a State; Next turns that State into the one Action to take now; the controller
// executes it and observes again. Nothing here reads a clock, talks to an API server or remembers anything
// between calls: progress is derived only from what is observed (which pods already run the desired
// revision), so a controller restarted in the middle of an upgrade continues where the previous one stopped.
//
// # Two plans: Cortex and Loki
//
// A cluster with logs on has two plans, one per Engine: the Cortex workloads (metrics) and the Loki
// workloads (logs), each a State of its own that the same Next, Progress and CheckVersion judge. The
// controller observes both, and executes both actions in the same reconcile. They are independent because
// the two systems are: Cortex and Loki share no ring, no data and no process, no component of one talks to
// a component of the other (only the gateway talks to both, over HTTP APIs that do not depend on the
// other's rollout), and they run different releases (spec.version and spec.logs.version) with their own
// skew policy. One long list would make a Loki ingester that does not start hold back a Cortex security fix,
// and a Cortex ingester replay hold back a Loki config change, for nothing. Each plan keeps its own promise:
// at most one of its ingesters is unavailable at any time. Replacing a Cortex ingester and a Loki ingester at
// the same moment breaks neither promise.
//
// The engines differ only in data: the components and their order (Engine.Order), which component is the
// ingester, and how messages and the skew policy name the engine and its fields. Every rule below (the
// order, the ingester steps, the ring, the deadlines) is the same code for both.
//
// # Order
//
// Topology microservices is rolled out one component at a time, in the engine's Order. Cortex:
//
//	compactor, store-gateway, query-frontend, querier, distributor, ingester
//
// Loki:
//
//	loki-compactor, loki-query-frontend, loki-querier, loki-distributor, loki-ingester
//
// Each component starts only when every earlier one is fully rolled out: every pod runs the desired revision,
// is Ready and is not terminating. The components that only touch object storage (the compactors, Cortex's
// store-gateway) go first: they serve no writes, so a new version that misbehaves is noticed before the write
// path is touched. The read path (query-frontend, querier) comes next, then the stateless write path
// (distributors, which work with ingesters of either version). Ingesters go last, because they hold the
// samples and log lines not yet shipped to object storage and are the slowest and riskiest to restart.
//
// Ingesters run in a StatefulSet with updateStrategy OnDelete. The planner first updates its template
// (ApplyComponent, which restarts nothing), then replaces one ingester at a time (DeletePod), and the next one
// only when every ingester (the one just replaced included) is Ready and ACTIVE in the ring as the
// distributors see it, and no stray ring member is unhealthy: with replication factor 3 a write needs 2 of
// the 3 ingesters of a series or stream, so exactly one may be missing at any time. Ingesters are replaced
// from the highest ordinal down, like a StatefulSet RollingUpdate and a partitioned rolling update do, so
// "the ingesters with ordinal >= k run the new revision" means the same whichever of the three drives the
// rollout, and the executor could switch to a partitioned rolling update without changing what progress
// means. Cortex's ring is read from its distributors' /ingester/ring, Loki's from its distributors' /ring;
// both list instances by ID, which for an ingester of either engine is its hostname, the pod's name.
//
// Topology single has one step: the StatefulSet "all" (Cortex) or "loki" (Loki), RollingUpdate with one
// replica, which its StatefulSet controller restarts once the template is applied. Its rings live in
// memory, so no ring is consulted.
//
// The gateway is not part of either plan, in either topology: it is neither Cortex nor Loki, holds no data,
// is in no ring, talks to the distributors and query-frontends over HTTP APIs that do not change between
// minor versions, and its Deployment rolls itself (RollingUpdate behind a PodDisruptionBudget). Holding a
// gateway fix behind a rollout of ingesters that may take an hour would help no one. Components a plan does
// not have (the gateway, the other engine's, or "all" in microservices) are ignored by Next and Progress.
//
// A component whose workload does not exist yet (a new cluster, logs turned on, or a component a new
// controller adds) is created at once, before anything else and without waiting for earlier components:
// there is nothing of it to keep available.
//
// # Stopping
//
// A pod that runs the desired revision and does not become Ready within the deadline (State.ReadyDeadline,
// DefaultReadyDeadline when zero), or that cannot start (CrashLoopBackOff, ImagePullBackOff, ...), stalls
// the rollout of its plan: Next returns Stalled naming the pod and the reason, and keeps returning it,
// without touching any other component or ingester of that plan, until the pod becomes Ready (the rollout
// then continues by itself) or the desired revision changes (the user fixed the spec; the rollout starts
// again from the first component). The other plan goes on.
package upgrade

import (
	"time"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/manifests"
)

// DefaultReadyDeadline is how long a pod running the desired revision may stay not Ready before the rollout
// stalls. Ingesters replaying a large WAL can take minutes; ten is generous.
const DefaultReadyDeadline = 10 * time.Minute

// CrashLoopRestarts is how many restarts of a pod that is not Ready count as crash-looping, even in the
// moments between two crashes when the kubelet reports no waiting reason.
const CrashLoopRestarts = 3

// RingState is the state of an ingester in the ring as the distributors see it.
type RingState string

const (
	// RingMissing: the ingester is not in the ring.
	RingMissing RingState = ""
	RingActive  RingState = "ACTIVE"
	RingJoining RingState = "JOINING"
	RingLeaving RingState = "LEAVING"
	RingPending RingState = "PENDING"
	// RingUnhealthy is an instance whose heartbeat is older than the ring's heartbeat timeout, whatever
	// state it last reported. Cortex's ring page shows this as health "UNHEALTHY".
	RingUnhealthy RingState = "UNHEALTHY"
)

// RingMember is an entry of the ingester ring.
type RingMember struct {
	// ID is the instance ID, which for the ingester StatefulSet is the pod name.
	ID    string
	State RingState
}

// Pod is one pod of a component, as observed.
type Pod struct {
	Name string
	// Ordinal is the StatefulSet ordinal (label apps.kubernetes.io/pod-index); 0 for Deployment pods.
	Ordinal int
	// Revision is the revision of the pod template the pod was created from (see Component.DesiredRevision).
	Revision string
	// Version is the release the pod runs, such as v1.21.1 (Cortex) or v3.7.8 (Loki), from its image tag.
	Version string
	// Ready is the pod's Ready condition.
	Ready bool
	// NotReadySince is when the pod last became not Ready: the lastTransitionTime of its Ready condition when
	// that is False, else its creation time. Zero when Ready, or not known (then no deadline applies).
	NotReadySince time.Time
	// Terminating: the pod has a deletionTimestamp.
	Terminating bool
	// RestartCount of the engine's container.
	RestartCount int32
	// WaitingReason of the engine container's waiting state, such as CrashLoopBackOff; empty when running.
	WaitingReason string
	// Ring is the pod's state in the ingester ring as the distributors see it. Ingesters only. When the
	// distributors disagree, the executor records the worst state (missing, then UNHEALTHY, LEAVING,
	// PENDING, JOINING, ACTIVE).
	Ring RingState
}

// Component is one workload (Deployment or StatefulSet) of the plan's engine that exists in the cluster.
type Component struct {
	// Name is the component, such as manifests.ComponentIngester, manifests.TargetAll or
	// manifests.LokiComponentIngester.
	Name string
	// DesiredRevision identifies the pod template the builders produce now: a hash of the whole template
	// (image, so version, config hash, resources, ...), stamped on the template as an annotation so that every
	// pod created from it carries it too.
	DesiredRevision string
	// TemplateRevision is the revision of the pod template the workload has now.
	TemplateRevision string
	// OnDelete: the workload is a StatefulSet with updateStrategy OnDelete, whose pods the planner replaces.
	// Otherwise its own controller (Deployment, RollingUpdate StatefulSet) replaces them.
	OnDelete bool
	// Replicas is spec.replicas of the workload.
	Replicas int32
	// Pods are the pods of the workload, in any order, terminating ones included.
	Pods []Pod
}

// State is what the controller observed of one plan of one MetricsCluster: its Cortex workloads, or its
// Loki workloads.
type State struct {
	// Engine whose workloads these are; empty is Cortex.
	Engine Engine
	// Topology of the cluster; empty is single, the API's default.
	Topology v1alpha1.Topology
	// Version is the desired release of the engine: spec.version (Cortex) or spec.logs.version (Loki), or
	// the controller's default.
	Version string
	// Components are the engine's workloads that exist. A component of the plan that is not listed does not
	// exist yet.
	Components []Component
	// RingObserved: the engine's ingester ring was read from its distributors in this observation. Without
	// it no ingester is replaced. Topology microservices only.
	RingObserved bool
	// StrayRingMembers are ring entries that are no ingester pod of the cluster, such as an instance left
	// behind by a removed pod. One that is not ACTIVE counts as a missing ingester.
	StrayRingMembers []RingMember
	// ReadyDeadline is how long a pod of the desired revision may stay not Ready; DefaultReadyDeadline when
	// zero.
	ReadyDeadline time.Duration
}

// Engine is the system a plan rolls out; see "Two plans" in the package doc.
type Engine string

const (
	Cortex Engine = "Cortex"
	Loki   Engine = "Loki"
)

// Order is the order in which the Cortex components of a topology are rolled out: Cortex.Order.
func Order(topology v1alpha1.Topology) []string { return Cortex.Order(topology) }

// Order is the order in which the engine's components of a topology are rolled out.
func (e Engine) Order(topology v1alpha1.Topology) []string {
	microservices := topology == v1alpha1.TopologyMicroservices
	switch {
	case e == Loki && microservices:
		return []string{
			manifests.LokiComponentCompactor,
			manifests.LokiComponentQueryFrontend,
			manifests.LokiComponentQuerier,
			manifests.LokiComponentDistributor,
			manifests.LokiComponentIngester,
		}
	case e == Loki:
		return []string{manifests.LokiComponentAll}
	case microservices:
		return []string{
			manifests.ComponentCompactor,
			manifests.ComponentStoreGateway,
			manifests.ComponentQueryFrontend,
			manifests.ComponentQuerier,
			manifests.ComponentDistributor,
			manifests.ComponentIngester,
		}
	}
	return []string{manifests.TargetAll}
}

// Ingester is the engine's ingester component, of topology microservices.
func (e Engine) Ingester() string {
	if e == Loki {
		return manifests.LokiComponentIngester
	}
	return manifests.ComponentIngester
}

// qualifier is what messages put before the name of a part of the engine, such as "ingester ring" or
// "distributors": nothing for Cortex, whose messages predate Loki's plan, "Loki " for Loki.
func (e Engine) qualifier() string {
	if e == Cortex {
		return ""
	}
	return string(e) + " "
}

// engine is s.Engine, Cortex when empty.
func (s State) engine() Engine {
	if s.Engine == "" {
		return Cortex
	}
	return s.Engine
}

// isRingIngester says whether c is an ingester whose rollout waits for the ring: the engine's ingester in
// topology microservices.
func (s State) isRingIngester(c Component) bool {
	return c.Name == s.engine().Ingester() && s.Topology == v1alpha1.TopologyMicroservices
}

// component is the observed component of that name.
func (s State) component(name string) (Component, bool) {
	for _, c := range s.Components {
		if c.Name == name {
			return c, true
		}
	}
	return Component{}, false
}

func (s State) readyDeadline() time.Duration {
	if s.ReadyDeadline <= 0 {
		return DefaultReadyDeadline
	}
	return s.ReadyDeadline
}
