package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/manifests"
	"github.com/opstrace/opstrace/internal/upgrade"
)

// A cluster has two rollouts, two independent plans of the same planner (see internal/upgrade): its Cortex
// workloads and, with logs on, its Loki workloads. Each reconcile observes both, holds back the templates
// each has not reached, and carries out the next action of each.
//
// A rollout moves on pod events (see RolloutPodEvents) and workload events. Two things have no event: the
// ingester rings, which the controller polls every ringPoll while a planner waits on one, and the deadline
// of a pod that does not become Ready. upgradeRecheck is a safety net for both, and for a missed event.
const ringPoll = 2 * time.Second

// upgradeRecheck is a variable only so that a test can take the safety net away.
var upgradeRecheck = 30 * time.Second

// RingReader reads an engine's ingester ring as the engine's distributors of a cluster see it.
type RingReader interface {
	ReadRing(ctx context.Context, cluster *v1alpha1.MetricsCluster, engine upgrade.Engine) ([]upgrade.RingMember, error)
}

// HTTPRingReader reads the ring from the distributor Service's ring page, as JSON (see RingURL).
type HTTPRingReader struct {
	// Client is the HTTP client; http.DefaultClient when nil.
	Client *http.Client
}

// ReadRing GETs the engine's RingURL with Accept: application/json.
func (r HTTPRingReader) ReadRing(ctx context.Context, cluster *v1alpha1.MetricsCluster, engine upgrade.Engine) ([]upgrade.RingMember, error) {
	return r.read(ctx, RingURL(cluster, engine))
}

// RingURL is the page of an engine's ingester ring on the engine's distributor Service: Cortex's
// http://<cluster>-distributor.<namespace>.svc...:8080/ingester/ring, Loki's
// http://<cluster>-loki-distributor.<namespace>.svc...:3100/ring. Both are the ring as that distributor
// sees it, and both answer the same JSON (dskit's ring page).
func RingURL(cluster *v1alpha1.MetricsCluster, engine upgrade.Engine) string {
	if engine == upgrade.Loki {
		return "http://" + manifests.ServiceAddress(manifests.ComponentName(cluster.Name, manifests.LokiComponentDistributor),
			cluster.Namespace, manifests.LokiHTTPPort) + "/ring"
	}
	return "http://" + manifests.ServiceAddress(manifests.ComponentName(cluster.Name, manifests.ComponentDistributor),
		cluster.Namespace, manifests.DefaultHTTPPort) + "/ingester/ring"
}

// read GETs a ring page as JSON and parses it.
func (r HTTPRingReader) read(ctx context.Context, url string) ([]upgrade.RingMember, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	c := r.Client
	if c == nil {
		c = http.DefaultClient
	}
	res, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("read ingester ring: %w", err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("read ingester ring: %w", err)
	}
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("read ingester ring: %s from %s", res.Status, url)
	}
	return parseRing(body)
}

// parseRing parses the JSON of Cortex's /ingester/ring and Loki's /ring: {"shards": [{"id": ..., "state":
// ...}, ...]}. A member whose heartbeat is too old has the state "UNHEALTHY".
func parseRing(body []byte) ([]upgrade.RingMember, error) {
	var page struct {
		Shards *[]struct {
			ID    string `json:"id"`
			State string `json:"state"`
		} `json:"shards"`
	}
	if err := json.Unmarshal(body, &page); err != nil {
		return nil, fmt.Errorf("parse ingester ring: %w", err)
	}
	if page.Shards == nil {
		return nil, fmt.Errorf("parse ingester ring: no shards in the response")
	}
	members := make([]upgrade.RingMember, 0, len(*page.Shards))
	for _, s := range *page.Shards {
		members = append(members, upgrade.RingMember{ID: s.ID, State: upgrade.RingState(s.State)})
	}
	return members, nil
}

// liveWorkload is a workload of a plan as it exists, with the pods the planner may delete.
type liveWorkload struct {
	template corev1.PodTemplateSpec
	podUIDs  map[string]types.UID
}

// rollout is one plan of a cluster as this reconcile observed it.
type rollout struct {
	state upgrade.State
	live  map[string]liveWorkload
	// versionErr: the desired version breaks the skew policy, so no template of the plan changes.
	versionErr error
}

// planRollouts observes the cluster's plans (Cortex's; Loki's when logs are on), checks their versions, and
// keeps in objects the live pod template of every workload a rollout has not reached. The objects may then
// be applied.
func (r *MetricsClusterReconciler) planRollouts(ctx context.Context, cluster *v1alpha1.MetricsCluster, objects []client.Object, cortexVersion string, now time.Time) ([]rollout, error) {
	type plan struct {
		engine  upgrade.Engine
		version string
	}
	plans := []plan{{upgrade.Cortex, cortexVersion}}
	if cluster.Spec.Logs.IsEnabled() {
		plans = append(plans, plan{upgrade.Loki, manifests.LokiVersion(cluster.Spec.Logs)})
	}
	var rollouts []rollout
	for _, p := range plans {
		state, live, err := r.observeUpgrade(ctx, cluster, objects, p.engine, p.version)
		if err != nil {
			return nil, err
		}
		ro := rollout{state: state, live: live, versionErr: upgrade.CheckVersion(state)}
		gateTemplates(objects, ro, now)
		rollouts = append(rollouts, ro)
	}
	return rollouts, nil
}

// executeRollouts records each plan's progress in facts and carries out each plan's next action, after the
// objects are applied. It returns when to look again, and a *DegradedError naming every plan that waits for
// a person (a refused version, a stalled pod); the other plan has still moved on.
func (r *MetricsClusterReconciler) executeRollouts(ctx context.Context, cluster *v1alpha1.MetricsCluster, rollouts []rollout, now time.Time, facts *clusterFacts) (time.Duration, error) {
	var requeue time.Duration
	var stopped []DegradedError
	for _, ro := range rollouts {
		fact := rolloutFact{engine: ro.state.Engine, version: ro.state.Version}
		fact.progress, fact.done = upgrade.Progress(ro.state)
		if ro.versionErr != nil {
			fact.stopped = true
			facts.rollouts = append(facts.rollouts, fact)
			stopped = append(stopped, DegradedError{Reason: v1alpha1.ReasonVersionRefused, Message: ro.versionErr.Error()})
			continue
		}
		action := upgrade.Next(ro.state, now)
		if action.Kind == upgrade.Stalled {
			fact.stopped = true
			stopped = append(stopped, DegradedError{Reason: v1alpha1.ReasonUpgradeStalled, Message: action.Message()})
		}
		facts.rollouts = append(facts.rollouts, fact)
		after, err := r.executeAction(ctx, cluster, action, ro.live)
		if err != nil {
			return 0, err
		}
		if after > 0 && (requeue == 0 || after < requeue) {
			requeue = after
		}
	}
	if len(stopped) == 0 {
		return requeue, nil
	}
	// One Degraded condition: the first plan's reason, every plan's message.
	degraded := &DegradedError{Reason: stopped[0].Reason, Message: stopped[0].Message}
	for _, d := range stopped[1:] {
		degraded.Message += "; " + d.Message
	}
	return requeue, degraded
}

// observeUpgrade turns the built workloads of an engine, the live ones and their pods into the planner's
// State of that engine's plan.
func (r *MetricsClusterReconciler) observeUpgrade(ctx context.Context, cluster *v1alpha1.MetricsCluster, objects []client.Object, engine upgrade.Engine, version string) (upgrade.State, map[string]liveWorkload, error) {
	state := upgrade.State{Engine: engine, Topology: cluster.Spec.Topology, Version: version}
	live := map[string]liveWorkload{}
	inPlan := map[string]bool{}
	for _, name := range engine.Order(cluster.Spec.Topology) {
		inPlan[name] = true
	}
	for _, obj := range objects {
		component := obj.GetLabels()[manifests.LabelComponent]
		desired, ok := podTemplate(obj)
		if !ok || !inPlan[component] {
			continue
		}
		existing := obj.DeepCopyObject().(client.Object)
		err := r.Client.Get(ctx, client.ObjectKeyFromObject(obj), existing)
		if apierrors.IsNotFound(err) {
			continue
		} else if err != nil {
			return state, nil, fmt.Errorf("get %s workload: %w", component, err)
		}
		template, _ := podTemplate(existing)
		c := upgrade.Component{
			Name:             component,
			DesiredRevision:  desired.Annotations[manifests.TemplateHashAnnotation],
			TemplateRevision: template.Annotations[manifests.TemplateHashAnnotation],
		}
		switch w := existing.(type) {
		case *appsv1.StatefulSet:
			c.Replicas = ptr.Deref(w.Spec.Replicas, 1)
			c.OnDelete = w.Spec.UpdateStrategy.Type == appsv1.OnDeleteStatefulSetStrategyType
		case *appsv1.Deployment:
			c.Replicas = ptr.Deref(w.Spec.Replicas, 1)
		}
		var pods corev1.PodList
		if err := r.Client.List(ctx, &pods, client.InNamespace(cluster.Namespace),
			client.MatchingLabels(manifests.SelectorLabels(cluster.Name, component))); err != nil {
			return state, nil, fmt.Errorf("list pods of %s: %w", component, err)
		}
		lw := liveWorkload{template: *template.DeepCopy(), podUIDs: map[string]types.UID{}}
		for i := range pods.Items {
			c.Pods = append(c.Pods, observePod(&pods.Items[i], component))
			lw.podUIDs[pods.Items[i].Name] = pods.Items[i].UID
		}
		live[component] = lw
		state.Components = append(state.Components, c)
	}
	if cluster.Spec.Topology == v1alpha1.TopologyMicroservices {
		r.observeRing(ctx, cluster, &state)
	}
	return state, live, nil
}

// observeRing fills in the ring states of the plan's ingesters. Without a RingReader the ring check is
// disabled: every Ready ingester pod counts as ACTIVE. A ring that cannot be read leaves RingObserved false,
// so the planner waits.
func (r *MetricsClusterReconciler) observeRing(ctx context.Context, cluster *v1alpha1.MetricsCluster, state *upgrade.State) {
	index := -1
	for i, c := range state.Components {
		if c.Name == state.Engine.Ingester() {
			index = i
		}
	}
	if index < 0 {
		return
	}
	ingesters := state.Components[index].Pods
	if r.Ring == nil {
		state.RingObserved = true
		for i := range ingesters {
			if ingesters[i].Ready {
				ingesters[i].Ring = upgrade.RingActive
			}
		}
		return
	}
	members, err := r.Ring.ReadRing(ctx, cluster, state.Engine)
	if err != nil {
		return
	}
	state.RingObserved = true
	byPod := map[string]int{}
	for i := range ingesters {
		byPod[ingesters[i].Name] = i
	}
	for _, m := range members {
		if i, ok := byPod[m.ID]; ok {
			ingesters[i].Ring = m.State
		} else {
			state.StrayRingMembers = append(state.StrayRingMembers, m)
		}
	}
}

// observePod is a pod as the planner sees it.
func observePod(pod *corev1.Pod, component string) upgrade.Pod {
	p := upgrade.Pod{
		Name:        pod.Name,
		Revision:    pod.Annotations[manifests.TemplateHashAnnotation],
		Terminating: pod.DeletionTimestamp != nil,
	}
	if ordinal, err := strconv.Atoi(pod.Labels[appsv1.PodIndexLabel]); err == nil {
		p.Ordinal = ordinal
	}
	container := component
	if component == manifests.TargetAll {
		container = manifests.AppCortex
	}
	for _, c := range pod.Spec.Containers {
		if c.Name == container {
			if i := strings.LastIndex(c.Image, ":"); i >= 0 && !strings.Contains(c.Image[i:], "/") {
				p.Version = c.Image[i+1:]
			}
		}
	}
	p.NotReadySince = pod.CreationTimestamp.Time
	for _, cond := range pod.Status.Conditions {
		if cond.Type != corev1.PodReady {
			continue
		}
		p.Ready = cond.Status == corev1.ConditionTrue
		if !cond.LastTransitionTime.IsZero() {
			p.NotReadySince = cond.LastTransitionTime.Time
		}
	}
	if p.Ready {
		p.NotReadySince = time.Time{}
	}
	for _, s := range pod.Status.ContainerStatuses {
		if s.Name != container {
			continue
		}
		p.RestartCount = s.RestartCount
		if s.State.Waiting != nil {
			p.WaitingReason = s.State.Waiting.Reason
		}
	}
	return p
}

// podTemplate is a pointer to the pod template of a Deployment or StatefulSet.
func podTemplate(obj client.Object) (*corev1.PodTemplateSpec, bool) {
	switch w := obj.(type) {
	case *appsv1.StatefulSet:
		return &w.Spec.Template, true
	case *appsv1.Deployment:
		return &w.Spec.Template, true
	}
	return nil, false
}

// gateTemplates keeps the live pod template in every built workload of the plan that its rollout has not
// reached, or in all of them when the plan's version is refused.
func gateTemplates(objects []client.Object, ro rollout, now time.Time) {
	for _, obj := range objects {
		component := obj.GetLabels()[manifests.LabelComponent]
		lw, exists := ro.live[component]
		template, ok := podTemplate(obj)
		if !ok || !exists {
			continue
		}
		if template.Annotations[manifests.TemplateHashAnnotation] == lw.template.Annotations[manifests.TemplateHashAnnotation] {
			continue
		}
		if ro.versionErr != nil || !upgrade.MayApplyTemplate(ro.state, now, component) {
			*template = *lw.template.DeepCopy()
		}
	}
}

// executeAction carries out the planner's action after the objects are applied (ApplyComponent is carried
// out by gateTemplates letting the template through).
func (r *MetricsClusterReconciler) executeAction(ctx context.Context, cluster *v1alpha1.MetricsCluster, action upgrade.Action, live map[string]liveWorkload) (time.Duration, error) {
	switch action.Kind {
	case upgrade.DeletePod:
		uid := live[action.Component].podUIDs[action.Pod]
		pod := &corev1.Pod{}
		pod.Namespace, pod.Name = cluster.Namespace, action.Pod
		// No grace period override: the ingester gets its full termination grace period to flush.
		if err := r.Client.Delete(ctx, pod, client.Preconditions{UID: &uid}); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return 0, fmt.Errorf("delete pod %s to roll it out: %w", action.Pod, err)
		}
		return upgradeRecheck, nil
	case upgrade.Wait:
		if action.OnRing {
			return ringPoll, nil
		}
		return upgradeRecheck, nil
	case upgrade.Stalled:
		return upgradeRecheck, nil
	}
	return 0, nil
}

// CacheOptions are the manager's cache options the controllers need: of all Pods, only those the
// controller's workloads run (label app.kubernetes.io/managed-by=opstrace-controller), Cortex's and Loki's.
// The rollouts list and watch only them, and a cluster-wide cache of every Pod would cost memory in
// proportion to the cluster.
func CacheOptions() cache.Options {
	return cache.Options{ByObject: map[client.Object]cache.ByObject{
		&corev1.Pod{}: {Label: labels.SelectorFromSet(labels.Set{manifests.LabelManagedBy: manifests.ManagedBy})},
	}}
}

// clusterOfPod maps a Cortex or Loki pod to its MetricsCluster (label app.kubernetes.io/instance, same
// namespace).
var clusterOfPod = handler.EnqueueRequestsFromMapFunc(func(_ context.Context, obj client.Object) []reconcile.Request {
	if _, ok := rolloutComponent(obj); !ok {
		return nil
	}
	name := obj.GetLabels()[manifests.LabelInstance]
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: obj.GetNamespace(), Name: name}}}
})

// rolloutComponent is the component of a pod one of the rollout plans looks at, if it is one: a Cortex or
// Loki pod of the controller.
func rolloutComponent(obj client.Object) (string, bool) {
	l := obj.GetLabels()
	engine := l[manifests.LabelName] == manifests.AppCortex || l[manifests.LabelName] == manifests.AppLoki
	if l[manifests.LabelManagedBy] != manifests.ManagedBy || !engine || l[manifests.LabelInstance] == "" {
		return "", false
	}
	return l[manifests.LabelComponent], l[manifests.LabelComponent] != ""
}

// plannerViewChanged lets a pod update through only when what the planner sees of the pod changes (Ready,
// terminating, revision, restarts, waiting reason): the node agent's other status updates wake nobody.
var plannerViewChanged = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		oldPod, ok1 := e.ObjectOld.(*corev1.Pod)
		newPod, ok2 := e.ObjectNew.(*corev1.Pod)
		component, ours := rolloutComponent(e.ObjectNew)
		if !ok1 || !ok2 || !ours {
			return false
		}
		a, b := observePod(oldPod, component), observePod(newPod, component)
		sameSince := a.NotReadySince.Equal(b.NotReadySince)
		a.NotReadySince, b.NotReadySince = time.Time{}, time.Time{}
		return a != b || !sameSince
	},
}

// RolloutPodEvents wake a MetricsCluster's reconcile when one of its Cortex or Loki pods is created,
// deleted, or changes in a way the rollout planner sees, so that a rollout moves as soon as a pod allows it.
func RolloutPodEvents(b *builder.Builder) *builder.Builder {
	return b.Watches(&corev1.Pod{}, clusterOfPod, builder.WithPredicates(plannerViewChanged))
}
