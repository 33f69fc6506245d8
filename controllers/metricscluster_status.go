package controllers

import (
	"context"
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/manifests"
	"github.com/opstrace/opstrace/internal/upgrade"
	"github.com/opstrace/opstrace/internal/version"
)

// clusterFacts are what a reconcile observed; the status functions turn them into conditions.
type clusterFacts struct {
	degraded *DegradedError
	// version is the desired Cortex release.
	version             string
	workloads           []workloadFact
	monitoringAvailable bool
	endpoint            string
	// rollouts are the observed plans: Cortex's, then Loki's when logs are on. None when the reconcile
	// stopped before it observed them.
	rollouts []rolloutFact
}

// rolloutFact is one plan as the planner judged it.
type rolloutFact struct {
	engine upgrade.Engine
	// version is the plan's desired release.
	version string
	// progress is upgrade.Progress of the plan; done says every component of the plan runs the desired
	// revision and is Ready, so the engine's version in the status may become version.
	progress string
	done     bool
	// stopped: the plan waits for a person (a refused version or a stalled pod); its problem is in degraded.
	stopped bool
}

// workloadFact is one component's Deployment or StatefulSet as its controller reports it.
type workloadFact struct {
	component        string
	exists           bool
	desired, ready   int32
	updated, current bool
	image            string
}

func (w workloadFact) isReady() bool {
	return w.exists && w.updated && w.current && w.ready >= w.desired
}

// observeWorkloads reads the cluster's Deployments and StatefulSets from the cache.
func (r *MetricsClusterReconciler) observeWorkloads(ctx context.Context, cluster *v1alpha1.MetricsCluster) ([]workloadFact, error) {
	selector := client.MatchingLabels{manifests.LabelInstance: cluster.Name}
	var deployments appsv1.DeploymentList
	if err := r.Client.List(ctx, &deployments, client.InNamespace(cluster.Namespace), selector); err != nil {
		return nil, fmt.Errorf("list deployments: %w", err)
	}
	var statefulSets appsv1.StatefulSetList
	if err := r.Client.List(ctx, &statefulSets, client.InNamespace(cluster.Namespace), selector); err != nil {
		return nil, fmt.Errorf("list statefulsets: %w", err)
	}
	found := map[string]workloadFact{}
	for _, d := range deployments.Items {
		found[d.Labels[manifests.LabelComponent]] = workloadFact{
			exists: true, desired: ptr.Deref(d.Spec.Replicas, 1), ready: d.Status.ReadyReplicas,
			updated: d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedReplicas >= ptr.Deref(d.Spec.Replicas, 1),
			current: d.Status.Replicas == d.Status.UpdatedReplicas, image: firstImage(d.Spec.Template.Spec.Containers),
		}
	}
	for _, s := range statefulSets.Items {
		found[s.Labels[manifests.LabelComponent]] = workloadFact{
			exists: true, desired: ptr.Deref(s.Spec.Replicas, 1), ready: s.Status.ReadyReplicas,
			updated: s.Status.ObservedGeneration >= s.Generation && s.Status.UpdatedReplicas >= ptr.Deref(s.Spec.Replicas, 1),
			current: s.Status.CurrentRevision == s.Status.UpdateRevision, image: firstImage(s.Spec.Template.Spec.Containers),
		}
	}
	var facts []workloadFact
	for _, component := range expectedComponents(cluster) {
		fact := found[component]
		fact.component = component
		facts = append(facts, fact)
	}
	return facts, nil
}

// expectedComponents are the components whose workloads the cluster runs: Cortex's, Loki's when logs are on,
// then the gateway.
func expectedComponents(cluster *v1alpha1.MetricsCluster) []string {
	components := []string{manifests.TargetAll}
	if cluster.Spec.Topology == v1alpha1.TopologyMicroservices {
		components = append([]string{}, manifests.MicroservicesComponents...)
	}
	if cluster.Spec.Logs.IsEnabled() {
		components = append(components, manifests.LokiComponents(cluster.Spec.Topology)...)
	}
	return append(components, manifests.ComponentGateway)
}

func firstImage(containers []corev1.Container) string {
	if len(containers) == 0 {
		return ""
	}
	return containers[0].Image
}

// componentConditionType is the condition of one component, such as IngesterReady; the single process of
// topology single is CortexReady. Loki's components are LokiReady (topology single) and LokiIngesterReady,
// LokiDistributorReady, ... (microservices).
func componentConditionType(component string) string {
	if component == manifests.TargetAll {
		return "CortexReady"
	}
	var b strings.Builder
	for _, part := range strings.Split(component, "-") {
		b.WriteString(strings.ToUpper(part[:1]) + part[1:])
	}
	return b.String() + "Ready"
}

// setClusterStatus turns facts into the status. Messages hold counts, never times, so a cluster that does
// not change writes no status.
func setClusterStatus(cluster *v1alpha1.MetricsCluster, facts clusterFacts) {
	generation := cluster.Generation
	cluster.Status.ObservedGeneration = generation
	cluster.Status.ControllerVersion = version.Version
	set := func(condition string, ok bool, reason, message string) {
		status := metav1.ConditionFalse
		if ok {
			status = metav1.ConditionTrue
		}
		meta.SetStatusCondition(&cluster.Status.Conditions, metav1.Condition{
			Type: condition, Status: status, Reason: reason, Message: message, ObservedGeneration: generation,
		})
	}

	// Each engine's version moves when its own plan is done, whatever the other plan or a problem elsewhere
	// does: the two rollouts are independent.
	var moving []string
	for _, r := range facts.rollouts {
		switch {
		case r.done && r.engine == upgrade.Loki:
			cluster.Status.LogsVersion = r.version
		case r.done:
			cluster.Status.Version = r.version
		case !r.stopped:
			moving = append(moving, r.progress)
		}
	}
	if !cluster.Spec.Logs.IsEnabled() {
		cluster.Status.LogsVersion = ""
	}

	if facts.degraded != nil {
		set(v1alpha1.ConditionDegraded, true, facts.degraded.Reason, facts.degraded.Message)
		set(v1alpha1.ConditionReady, false, facts.degraded.Reason, "the cluster is degraded: "+facts.degraded.Message)
		if len(moving) > 0 {
			// One rollout waits for a person, the other goes on.
			set(v1alpha1.ConditionProgressing, true, v1alpha1.ReasonUpgrading, strings.Join(moving, "; "))
		} else {
			set(v1alpha1.ConditionProgressing, false, facts.degraded.Reason, "stopped until the problem is fixed")
		}
		return
	}
	set(v1alpha1.ConditionDegraded, false, v1alpha1.ReasonNoProblem, "")

	// A component the cluster no longer runs (logs turned off) loses its condition.
	running := map[string]bool{}
	for _, w := range facts.workloads {
		running[componentConditionType(w.component)] = true
	}
	for _, component := range append(manifests.LokiComponents(v1alpha1.TopologySingle), manifests.LokiComponents(v1alpha1.TopologyMicroservices)...) {
		if kind := componentConditionType(component); !running[kind] {
			meta.RemoveStatusCondition(&cluster.Status.Conditions, kind)
		}
	}
	var waiting []string
	for _, w := range facts.workloads {
		message := fmt.Sprintf("%d/%d replicas ready", w.ready, w.desired)
		if !w.exists {
			message = "not created yet"
		}
		if w.isReady() {
			set(componentConditionType(w.component), true, v1alpha1.ReasonReady, message)
		} else {
			set(componentConditionType(w.component), false, v1alpha1.ReasonNotReady, message)
			waiting = append(waiting, fmt.Sprintf("%s (%s)", w.component, message))
		}
	}
	switch {
	case len(moving) > 0:
		set(v1alpha1.ConditionProgressing, true, v1alpha1.ReasonUpgrading, strings.Join(moving, "; "))
	case len(waiting) > 0:
		set(v1alpha1.ConditionProgressing, true, v1alpha1.ReasonRollingOut, "waiting for "+strings.Join(waiting, ", "))
	default:
		set(v1alpha1.ConditionProgressing, false, v1alpha1.ReasonUpToDate, "every component runs the desired configuration")
	}
	if len(waiting) > 0 {
		set(v1alpha1.ConditionReady, false, v1alpha1.ReasonNotReady, "waiting for "+strings.Join(waiting, ", "))
	} else {
		set(v1alpha1.ConditionReady, true, v1alpha1.ReasonReady, "every component is ready")
	}
	if facts.monitoringAvailable {
		set(v1alpha1.ConditionMonitoring, true, v1alpha1.ReasonMonitoringConfigured, "ServiceMonitors and alerts are configured")
	} else {
		set(v1alpha1.ConditionMonitoring, false, v1alpha1.ReasonMonitoringUnavailable,
			"the monitoring.coreos.com CRDs are not installed; install prometheus-operator to get ServiceMonitors and alerts for this cluster")
	}
	cluster.Status.GatewayEndpoint = facts.endpoint
}
