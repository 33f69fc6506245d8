package controllers

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/event"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/manifests"
	"github.com/opstrace/opstrace/internal/upgrade"
)

// testdata/ingester-ring.json is the answer of the real Cortex binary (internal/testenv.StartCortex) to
// GET /ingester/ring with Accept: application/json, its tokens trimmed.
func TestParseRingReadsCortexJSON(t *testing.T) {
	body, err := os.ReadFile("testdata/ingester-ring.json")
	if err != nil {
		t.Fatal(err)
	}
	members, err := parseRing(body)
	if err != nil {
		t.Fatal(err)
	}
	if len(members) != 1 || members[0] != (upgrade.RingMember{ID: "vm", State: upgrade.RingActive}) {
		t.Fatalf("members = %+v, want one ACTIVE member vm", members)
	}
	if _, err := parseRing([]byte(`<html>ring</html>`)); err == nil {
		t.Error("an HTML page parsed as a ring")
	}
	if _, err := parseRing([]byte(`{}`)); err == nil {
		t.Error("a response without shards parsed as a ring")
	}
}

const (
	versionA = "v1.20.1"
	versionB = "v1.21.1"
)

func microservicesCluster(name, version string) *v1alpha1.MetricsCluster {
	return &v1alpha1.MetricsCluster{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1alpha1.MetricsClusterSpec{
			Topology: v1alpha1.TopologyMicroservices,
			Version:  version,
			Size:     v1alpha1.SizeSmall,
			Storage: v1alpha1.StorageSpec{Type: v1alpha1.StorageS3, S3: &v1alpha1.S3Storage{
				Bucket: "metrics", Endpoint: "minio.storage.svc:9000", Insecure: true,
			}},
			// Logs off: these tests follow Cortex's plan alone; metricscluster_upgrade_loki_test.go runs both.
			Logs: v1alpha1.LogsSpec{Enabled: ptr.To(false)},
		},
	}
}

// workload is the live Deployment or StatefulSet of a component.
func (h *harness) workload(cluster, component string) client.Object {
	h.t.Helper()
	obj := h.workloadKind(component)
	h.get(manifests.ComponentName(cluster, component), obj)
	return obj
}

func (h *harness) templateImage(cluster, component string) string {
	h.t.Helper()
	template, _ := podTemplate(h.workload(cluster, component))
	return template.Spec.Containers[0].Image
}

func (h *harness) pods(cluster, component string) map[string]corev1.Pod {
	h.t.Helper()
	var pods corev1.PodList
	if err := env.Client.List(context.Background(), &pods, client.InNamespace(h.ns),
		client.MatchingLabels(manifests.SelectorLabels(cluster, component))); err != nil {
		h.t.Fatal(err)
	}
	out := map[string]corev1.Pod{}
	for _, p := range pods.Items {
		out[p.Name] = p
	}
	return out
}

// settle plays the workload controllers and the kubelet for one component: a Deployment or RollingUpdate
// StatefulSet replaces every pod of another template; an OnDelete StatefulSet only recreates missing pods.
// Every pod becomes Ready and the workload reports itself rolled out.
func (h *harness) settle(cluster, component string) {
	h.t.Helper()
	ctx := context.Background()
	obj := h.workload(cluster, component)
	template, _ := podTemplate(obj)
	revision := template.Annotations[manifests.TemplateHashAnnotation]
	sts, isStatefulSet := obj.(*appsv1.StatefulSet)
	onDelete := isStatefulSet && sts.Spec.UpdateStrategy.Type == appsv1.OnDeleteStatefulSetStrategyType
	var count int32
	existing := h.pods(cluster, component)
	if isStatefulSet {
		count = ptr.Deref(sts.Spec.Replicas, 1)
	} else {
		count = ptr.Deref(obj.(*appsv1.Deployment).Spec.Replicas, 1)
	}
	for i := 0; i < int(count); i++ {
		name := obj.GetName() + "-" + strconv.Itoa(i)
		if p, ok := existing[name]; ok {
			if onDelete || p.Annotations[manifests.TemplateHashAnnotation] == revision {
				continue
			}
			if err := env.Client.Delete(ctx, &p); err != nil {
				h.t.Fatal(err)
			}
			// Unscheduled pods are removed at once.
		}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: h.ns, Labels: map[string]string{}, Annotations: map[string]string{}},
			Spec:       *template.Spec.DeepCopy(),
		}
		for k, v := range template.Labels {
			pod.Labels[k] = v
		}
		for k, v := range template.Annotations {
			pod.Annotations[k] = v
		}
		if isStatefulSet {
			pod.Labels[appsv1.PodIndexLabel] = strconv.Itoa(i)
			pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
		}
		if err := env.Client.Create(ctx, pod); err != nil {
			h.t.Fatalf("create pod %s: %v", name, err)
		}
		pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}
		if err := env.Client.Status().Update(ctx, pod); err != nil {
			h.t.Fatal(err)
		}
	}
	switch w := obj.(type) {
	case *appsv1.StatefulSet:
		w.Status = appsv1.StatefulSetStatus{ObservedGeneration: w.Generation, Replicas: count, ReadyReplicas: count,
			CurrentReplicas: count, UpdatedReplicas: count, AvailableReplicas: count, CurrentRevision: "r", UpdateRevision: "r"}
	case *appsv1.Deployment:
		w.Status = appsv1.DeploymentStatus{ObservedGeneration: w.Generation, Replicas: count, ReadyReplicas: count,
			UpdatedReplicas: count, AvailableReplicas: count}
	}
	if err := env.Client.Status().Update(ctx, obj); err != nil {
		h.t.Fatal(err)
	}
}

// replaceIngesters plays the OnDelete rollout of the ingester StatefulSet component, whose template is
// applied: each reconcile deletes the highest ordinal still on the old template, a second reconcile before
// its replacement exists deletes and writes nothing, and the test then recreates it as the StatefulSet
// controller does. check sees the cluster after each deleting reconcile, with step ingesters replaced before.
func (h *harness) replaceIngesters(cluster, component string, check func(step, n int, mc *v1alpha1.MetricsCluster)) {
	h.t.Helper()
	n := len(h.pods(cluster, component))
	if n < 2 {
		h.t.Fatalf("%d %s pods, want several", n, component)
	}
	for step := 0; step < n; step++ {
		h.reconcileCluster(cluster)
		var mc v1alpha1.MetricsCluster
		h.get(cluster, &mc)
		check(step, n, &mc)
		deleted := manifests.ComponentName(cluster, component) + "-" + strconv.Itoa(n-1-step)
		if now := h.pods(cluster, component); len(now) != n-1 || now[deleted].Name != "" {
			h.t.Fatalf("step %d: %s pods %v, want exactly %s deleted", step, component, keys(now), deleted)
		}
		before := h.writes.n.Load()
		h.reconcileCluster(cluster)
		if writes := h.writes.n.Load() - before; writes != 0 {
			h.t.Fatalf("step %d: a reconcile waiting for %s made %d writes, want 0", step, deleted, writes)
		}
		if now := h.pods(cluster, component); len(now) != n-1 {
			h.t.Fatalf("step %d: a reconcile while %s is missing left %d pods, want %d", step, deleted, len(now), n-1)
		}
		h.settle(cluster, component)
	}
}

func TestVersionUpgradeRollsComponentsInOrderAndIngestersOneAtATime(t *testing.T) {
	h := newHarness(t)
	h.create(microservicesCluster("metrics", versionA))
	h.reconcileCluster("metrics")
	for _, component := range append(upgrade.Order(v1alpha1.TopologyMicroservices), manifests.ComponentGateway) {
		h.settle("metrics", component)
	}
	h.reconcileCluster("metrics")
	var cluster v1alpha1.MetricsCluster
	h.get("metrics", &cluster)
	if cluster.Status.Version != versionA {
		t.Fatalf("status.version = %q after every component is Ready, want %s; conditions %+v", cluster.Status.Version, versionA, cluster.Status.Conditions)
	}
	if c := condition(cluster.Status.Conditions, v1alpha1.ConditionProgressing); c.Status != metav1.ConditionFalse {
		t.Fatalf("Progressing = %+v, want False", c)
	}

	cluster.Spec.Version = versionB
	if err := env.Client.Update(context.Background(), &cluster); err != nil {
		t.Fatal(err)
	}
	order := upgrade.Order(v1alpha1.TopologyMicroservices)
	imageB := manifests.CortexImage(versionB)
	for i, component := range order {
		h.reconcileCluster("metrics")
		for j, other := range order {
			want := manifests.CortexImage(versionA)
			if j <= i {
				want = imageB
			}
			if got := h.templateImage("metrics", other); got != want {
				t.Fatalf("while upgrading %s: the template of %s has image %s, want %s", component, other, got, want)
			}
		}
		h.get("metrics", &cluster)
		if cluster.Status.Version != versionA {
			t.Fatalf("status.version = %q while upgrading %s, want %s", cluster.Status.Version, component, versionA)
		}
		if c := condition(cluster.Status.Conditions, v1alpha1.ConditionProgressing); c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonUpgrading {
			t.Fatalf("Progressing = %+v while upgrading %s, want True, Upgrading", c, component)
		}
		if component != manifests.ComponentIngester {
			h.settle("metrics", component)
		}
	}

	// The ingester template is applied (OnDelete: nothing restarts). Each reconcile now deletes the highest
	// ordinal still on the old template, and the test plays the StatefulSet controller recreating it.
	h.replaceIngesters("metrics", manifests.ComponentIngester, func(step, n int, mc *v1alpha1.MetricsCluster) {
		c := condition(mc.Status.Conditions, v1alpha1.ConditionProgressing)
		if want := "ingesters " + strconv.Itoa(step) + "/" + strconv.Itoa(n) + " at " + versionB; c.Message != want {
			t.Fatalf("Progressing message = %q, want %q", c.Message, want)
		}
		if mc.Status.Version != versionA {
			t.Fatalf("status.version = %q with ingesters on the old version, want %s", mc.Status.Version, versionA)
		}
	})
	h.reconcileCluster("metrics")
	h.get("metrics", &cluster)
	if cluster.Status.Version != versionB {
		t.Fatalf("status.version = %q after the rollout, want %s; conditions %+v", cluster.Status.Version, versionB, cluster.Status.Conditions)
	}
	if c := condition(cluster.Status.Conditions, v1alpha1.ConditionProgressing); c.Status != metav1.ConditionFalse {
		t.Fatalf("Progressing = %+v after the rollout, want False", c)
	}
	for _, p := range h.pods("metrics", manifests.ComponentIngester) {
		if p.Spec.Containers[0].Image != imageB {
			t.Errorf("ingester %s runs %s, want %s", p.Name, p.Spec.Containers[0].Image, imageB)
		}
	}

	// A downgrade is refused, and no template changes.
	before := h.writes.n.Load()
	h.reconcileCluster("metrics")
	if writes := h.writes.n.Load() - before; writes != 0 {
		t.Fatalf("an idle reconcile after the rollout made %d writes, want 0", writes)
	}
	cluster.Spec.Version = versionA
	if err := env.Client.Update(context.Background(), &cluster); err != nil {
		t.Fatal(err)
	}
	h.reconcileCluster("metrics")
	h.get("metrics", &cluster)
	if c := condition(cluster.Status.Conditions, v1alpha1.ConditionDegraded); c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonVersionRefused {
		t.Fatalf("Degraded = %+v after a downgrade, want True, VersionRefused", c)
	}
	for _, component := range order {
		if got := h.templateImage("metrics", component); got != imageB {
			t.Errorf("after a refused downgrade the template of %s has image %s, want %s", component, got, imageB)
		}
	}
}

func keys(m map[string]corev1.Pod) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// A rollout moves on pod events: a Cortex or Loki pod of a cluster wakes that cluster, and only when what the
// planner sees of the pod changes; other pods and other changes wake nothing.
func TestRolloutPodEventsWakeTheirClusterOnPlannerChanges(t *testing.T) {
	ingester := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "metrics-ingester-2", Namespace: "ns",
			Labels:      manifests.Labels("metrics", manifests.ComponentIngester),
			Annotations: map[string]string{manifests.TemplateHashAnnotation: "r1"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: manifests.ComponentIngester, Image: manifests.CortexImage(versionA)}}},
		Status: corev1.PodStatus{PodIP: "10.244.0.7", Conditions: []corev1.PodCondition{
			{Type: corev1.PodReady, Status: corev1.ConditionFalse, LastTransitionTime: metav1.Now()}}},
	}
	lokiIngester := ingester.DeepCopy()
	lokiIngester.Name, lokiIngester.Labels = "metrics-loki-ingester-2", manifests.Labels("metrics", manifests.LokiComponentIngester)
	lokiIngester.Spec.Containers[0].Name = manifests.LokiComponentIngester
	gatewayPod := ingester.DeepCopy()
	gatewayPod.Labels = manifests.Labels("metrics", manifests.ComponentGateway)
	foreign := ingester.DeepCopy()
	foreign.Labels = map[string]string{manifests.LabelInstance: "metrics", manifests.LabelComponent: "ingester"}

	mapped := func(pod *corev1.Pod) []reconcile.Request {
		q := &fakeQueue{}
		clusterOfPod.Create(context.Background(), event.CreateEvent{Object: pod}, q)
		return q.added
	}
	for _, pod := range []*corev1.Pod{ingester, lokiIngester} {
		if got := mapped(pod); len(got) != 1 || got[0].NamespacedName != (types.NamespacedName{Namespace: "ns", Name: "metrics"}) {
			t.Errorf("pod %s of cluster ns/metrics enqueues %v", pod.Name, got)
		}
	}
	// The manager's cache holds the pods of both engines (and no others).
	var selector labels.Selector
	for obj, opts := range CacheOptions().ByObject {
		if _, ok := obj.(*corev1.Pod); ok {
			selector = opts.Label
		}
	}
	for _, pod := range []*corev1.Pod{ingester, lokiIngester, foreign} {
		if want := pod != foreign; selector.Matches(labels.Set(pod.Labels)) != want {
			t.Errorf("the pod cache selects %s: %v, want %v", pod.Name, !want, want)
		}
	}
	if got := mapped(gatewayPod); len(got) != 0 {
		t.Errorf("a gateway pod, not part of the rollout, enqueues %v", got)
	}
	if got := mapped(foreign); len(got) != 0 {
		t.Errorf("a pod the controller does not manage enqueues %v", got)
	}

	for _, pod := range []*corev1.Pod{ingester, lokiIngester} {
		changed := func(edit func(p *corev1.Pod)) bool {
			updated := pod.DeepCopy()
			edit(updated)
			return plannerViewChanged.Update(event.UpdateEvent{ObjectOld: pod, ObjectNew: updated})
		}
		for name, edit := range map[string]func(p *corev1.Pod){
			"became Ready": func(p *corev1.Pod) {
				p.Status.Conditions[0].Status = corev1.ConditionTrue
			},
			"terminating": func(p *corev1.Pod) { p.DeletionTimestamp = ptr.To(metav1.Now()) },
			"crash-looping": func(p *corev1.Pod) {
				p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: p.Spec.Containers[0].Name, RestartCount: 1,
					State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}}}
			},
		} {
			if !changed(edit) {
				t.Errorf("%s %s: the update is filtered out", pod.Name, name)
			}
		}
		if changed(func(p *corev1.Pod) { p.Status.Message, p.Status.HostIP = "probing", "10.0.0.1" }) {
			t.Errorf("%s: a status change the planner does not see wakes the cluster", pod.Name)
		}
	}
}

type fakeQueue struct {
	workqueue.TypedRateLimitingInterface[reconcile.Request]
	added []reconcile.Request
}

func (q *fakeQueue) Add(r reconcile.Request) { q.added = append(q.added, r) }

// The controllers as the manager runs them, with the rollout's safety-net recheck taken away: a Cortex and
// a Loki version upgrade still go through every component and every ingester of both plans, woken only by
// the events of the pods the test plays the workload controllers and kubelet for (Ring is nil: a Ready
// ingester counts as ACTIVE).
func TestRolloutMovesOnPodEventsAlone(t *testing.T) {
	defer func(d time.Duration) { upgradeRecheck = d }(upgradeRecheck)
	upgradeRecheck = time.Hour
	h := newHarness(t)
	// The test's namespace only: the MetricsClusters earlier tests left in theirs would queue before its own
	// (one worker), and under load keep it waiting past waitFor's deadline.
	cacheOptions := CacheOptions()
	cacheOptions.DefaultNamespaces = map[string]cache.Config{h.ns: {}}
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{Scheme: env.Scheme, Cache: cacheOptions,
		Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
		// TestManagerCarriesTenantChangesToTheGateway registers the same controller names in this process.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := (&MetricsClusterReconciler{Client: mgr.GetClient(), Scheme: mgr.GetScheme(), RESTMapper: mgr.GetRESTMapper(),
		GatewayImage: "opstrace/opstrace-gateway:test"}).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- mgr.Start(ctx) }()
	defer func() {
		cancel()
		if err := <-stopped; err != nil {
			t.Errorf("manager: %v", err)
		}
	}()

	h.create(loggingCluster("metrics", versionA, lokiA))
	plans := []struct {
		engine  upgrade.Engine
		image   func(string) string
		version func(v1alpha1.MetricsClusterStatus) string
	}{
		{upgrade.Cortex, manifests.CortexImage, func(s v1alpha1.MetricsClusterStatus) string { return s.Version }},
		{upgrade.Loki, manifests.LokiImage, func(s v1alpha1.MetricsClusterStatus) string { return s.LogsVersion }},
	}
	exists := func(component string) bool {
		obj := h.workloadKind(component)
		return env.Client.Get(ctx, client.ObjectKey{Namespace: h.ns, Name: manifests.ComponentName("metrics", component)}, obj) == nil
	}
	status := func() v1alpha1.MetricsClusterStatus {
		var mc v1alpha1.MetricsCluster
		h.get("metrics", &mc)
		return mc.Status
	}
	for _, plan := range plans {
		for _, component := range plan.engine.Order(v1alpha1.TopologyMicroservices) {
			waitFor(t, func() bool { return exists(component) }, "the "+component+" workload")
			h.settle("metrics", component)
		}
	}
	waitFor(t, func() bool { s := status(); return s.Version == versionA && s.LogsVersion == lokiA }, "status versions "+versionA+", "+lokiA)

	var cluster v1alpha1.MetricsCluster
	h.get("metrics", &cluster)
	cluster.Spec.Version, cluster.Spec.Logs.Version = versionB, lokiB
	if err := env.Client.Update(ctx, &cluster); err != nil {
		t.Fatal(err)
	}
	for i, plan := range plans {
		to := []string{versionB, lokiB}[i]
		order := plan.engine.Order(v1alpha1.TopologyMicroservices)
		for _, component := range order {
			waitFor(t, func() bool { return h.templateImage("metrics", component) == plan.image(to) }, "the "+component+" template at "+to)
			if component != plan.engine.Ingester() {
				h.settle("metrics", component)
			}
		}
		ingester := plan.engine.Ingester()
		n := len(h.pods("metrics", ingester))
		for step := range n {
			deleted := manifests.ComponentName("metrics", ingester) + "-" + strconv.Itoa(n-1-step)
			waitFor(t, func() bool {
				_, ok := h.pods("metrics", ingester)[deleted]
				return !ok
			}, "ingester "+deleted+" deleted")
			h.settle("metrics", ingester)
		}
		waitFor(t, func() bool { return plan.version(status()) == to }, string(plan.engine)+" version "+to+" in the status")
	}
}

// workloadKind is an empty Deployment or StatefulSet, as the component runs.
func (h *harness) workloadKind(component string) client.Object {
	switch component {
	case manifests.ComponentDistributor, manifests.ComponentQuerier, manifests.ComponentQueryFrontend, manifests.ComponentGateway,
		manifests.LokiComponentDistributor, manifests.LokiComponentQuerier, manifests.LokiComponentQueryFrontend:
		return &appsv1.Deployment{}
	}
	return &appsv1.StatefulSet{}
}
