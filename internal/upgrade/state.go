// Package upgrade decides, one step at a time, how a change to the Cortex workloads of a MetricsCluster is
// rolled out without losing a sample: a new Cortex version, a new configuration, or any other change to a pod
// template.
//
// It is a pure planner. The controller observes the cluster (workloads, pods, the ingester ring as the
// distributors see it) into a State; Next turns that State into the one Action to take now; the controller
// executes it and observes again. Nothing here reads a clock, talks to an API server or remembers anything
// between calls: progress is derived only from what is observed (which pods already run the desired
// revision), so a controller restarted in the middle of an upgrade continues where the previous one stopped.
//
// # Order
//
// Topology microservices is rolled out one component at a time, in Order:
//
//	compactor, store-gateway, query-frontend, querier, distributor, ingester
//
// Each component starts only when every earlier one is fully rolled out: every pod runs the desired revision,
// is Ready and is not terminating. The components that only touch object storage (compactor, store-gateway)
// go first: they serve no writes, so a new version that misbehaves is noticed before the write path is
// touched. The read path (query-frontend, querier) comes next, then the stateless write path (distributors,
// which work with ingesters of either version). Ingesters go last, because they hold the samples not yet
// shipped to object storage and are the slowest and riskiest to restart.
//
// Ingesters run in a StatefulSet with updateStrategy OnDelete. The planner first updates its template
// (ApplyComponent, which restarts nothing), then replaces one ingester at a time (DeletePod), and the next one
// only when every ingester (the one just replaced included) is Ready and ACTIVE in the ring as the
// distributors see it, and no stray ring member is unhealthy: with replication factor 3 a write needs 2 of
// the 3 ingesters of a series, so exactly one may be missing at any time. Ingesters are replaced from the
// highest ordinal down, like a StatefulSet RollingUpdate and a partitioned rolling update do, so "the
// ingesters with ordinal >= k run the new revision" means the same whichever of the three drives the
// rollout, and the executor could switch to a partitioned rolling update without changing what progress
// means.
//
// Topology single has one step: the StatefulSet "all" (RollingUpdate, one replica), which its StatefulSet
// controller restarts once the template is applied. Its rings live in memory, so no ring is consulted.
//
// The gateway is not part of the plan, in either topology: it is not Cortex, holds no data, is not in the
// ring, talks to the distributors and query-frontend over HTTP APIs that do not change between Cortex
// minor versions, and its Deployment rolls itself (RollingUpdate behind a PodDisruptionBudget). Holding a
// gateway fix behind a rollout of ingesters that may take an hour would help no one. Components a topology
// does not have (the gateway, or "all" in microservices) are ignored by Next and Progress.
//
// A component whose workload does not exist yet (a new cluster, or a component a new controller adds) is
// created at once, before anything else and without waiting for earlier components: there is nothing of it
// to keep available.
//
// # Stopping
//
// A pod that runs the desired revision and does not become Ready within the deadline (State.ReadyDeadline,
// DefaultReadyDeadline when zero), or that cannot start (CrashLoopBackOff, ImagePullBackOff, ...), stalls
// the rollout: Next returns Stalled naming the pod and the reason, and keeps returning it, without touching
// any other component or ingester, until the pod becomes Ready (the rollout then continues by itself) or the
// desired revision changes (the user fixed the spec; the rollout starts again from the first component).
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
	// Version is the Cortex release the pod runs, such as v1.21.1, from its image tag.
	Version string
	// Ready is the pod's Ready condition.
	Ready bool
	// NotReadySince is when the pod last became not Ready: the lastTransitionTime of its Ready condition when
	// that is False, else its creation time. Zero when Ready, or not known (then no deadline applies).
	NotReadySince time.Time
	// Terminating: the pod has a deletionTimestamp.
	Terminating bool
	// RestartCount of the Cortex container.
	RestartCount int32
	// WaitingReason of the Cortex container's waiting state, such as CrashLoopBackOff; empty when running.
	WaitingReason string
	// Ring is the pod's state in the ingester ring as the distributors see it. Ingesters only. When the
	// distributors disagree, the executor records the worst state (missing, then UNHEALTHY, LEAVING,
	// PENDING, JOINING, ACTIVE).
	Ring RingState
}

// Component is one Cortex workload (Deployment or StatefulSet) that exists in the cluster.
type Component struct {
	// Name is the component, such as manifests.ComponentIngester or manifests.TargetAll.
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

// State is what the controller observed of one MetricsCluster.
type State struct {
	// Topology of the cluster; empty is single, the API's default.
	Topology v1alpha1.Topology
	// Version is the desired Cortex release: spec.version, or the controller's default.
	Version string
	// Components are the Cortex workloads that exist. A component of the topology that is not listed does
	// not exist yet.
	Components []Component
	// RingObserved: the ingester ring was read from the distributors in this observation. Without it no
	// ingester is replaced. Topology microservices only.
	RingObserved bool
	// StrayRingMembers are ring entries that are no ingester pod of the cluster, such as an instance left
	// behind by a removed pod. One that is not ACTIVE counts as a missing ingester.
	StrayRingMembers []RingMember
	// ReadyDeadline is how long a pod of the desired revision may stay not Ready; DefaultReadyDeadline when
	// zero.
	ReadyDeadline time.Duration
}

// Order is the order in which the components of a topology are rolled out.
func Order(topology v1alpha1.Topology) []string {
	if topology == v1alpha1.TopologyMicroservices {
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
