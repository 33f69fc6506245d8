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
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
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
			// The planner orders Cortex's components only; Loki's are applied as they are (see the notes).
			Logs: v1alpha1.LogsSpec{Enabled: ptr.To(false)},
		},
	}
}

// workload is the live Deployment or StatefulSet of a component.
func (h *harness) workload(cluster, component string) client.Object {
	h.t.Helper()
	name := manifests.ComponentName(cluster, component)
	var obj client.Object = &appsv1.StatefulSet{}
	switch component {
	case manifests.ComponentDistributor, manifests.ComponentQuerier, manifests.ComponentQueryFrontend, manifests.ComponentGateway:
		obj = &appsv1.Deployment{}
	}
	h.get(name, obj)
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
	ingesters := h.pods("metrics", manifests.ComponentIngester)
	n := len(ingesters)
	if n < 2 {
		t.Fatalf("%d ingesters, want several", n)
	}
	for step := 0; step < n; step++ {
		h.reconcileCluster("metrics")
		h.get("metrics", &cluster)
		c := condition(cluster.Status.Conditions, v1alpha1.ConditionProgressing)
		want := "ingesters " + strconv.Itoa(step) + "/" + strconv.Itoa(n) + " at " + versionB
		if c.Message != want {
			t.Fatalf("Progressing message = %q, want %q", c.Message, want)
		}
		now := h.pods("metrics", manifests.ComponentIngester)
		deleted := "metrics-ingester-" + strconv.Itoa(n-1-step)
		if _, ok := now[deleted]; ok || len(now) != n-1 {
			t.Fatalf("step %d: ingesters %v, want exactly %s deleted", step, keys(now), deleted)
		}
		if cluster.Status.Version != versionA {
			t.Fatalf("status.version = %q with ingesters on the old version, want %s", cluster.Status.Version, versionA)
		}
		// A second reconcile before the replacement exists deletes nothing more, and writes nothing.
		before := h.writes.n.Load()
		h.reconcileCluster("metrics")
		if writes := h.writes.n.Load() - before; writes != 0 {
			t.Fatalf("step %d: a reconcile waiting for %s made %d writes, want 0", step, deleted, writes)
		}
		if now := h.pods("metrics", manifests.ComponentIngester); len(now) != n-1 {
			t.Fatalf("step %d: a reconcile while %s is missing left %d ingesters, want %d", step, deleted, len(now), n-1)
		}
		h.settle("metrics", manifests.ComponentIngester)
	}
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

// A rollout moves on pod events: a Cortex pod of a cluster wakes that cluster, and only when what the
// planner sees of the pod changes; other pods and other changes wake nothing.
func TestCortexPodEventsWakeTheirClusterOnPlannerChanges(t *testing.T) {
	ingester := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "metrics-ingester-2", Namespace: "ns",
			Labels:      manifests.Labels("metrics", manifests.ComponentIngester),
			Annotations: map[string]string{manifests.TemplateHashAnnotation: "r1"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: manifests.ComponentIngester, Image: manifests.CortexImage(versionA)}}},
		Status: corev1.PodStatus{PodIP: "10.244.0.7", Conditions: []corev1.PodCondition{
			{Type: corev1.PodReady, Status: corev1.ConditionFalse, LastTransitionTime: metav1.Now()}}},
	}
	gatewayPod := ingester.DeepCopy()
	gatewayPod.Labels = manifests.Labels("metrics", manifests.ComponentGateway)
	foreign := ingester.DeepCopy()
	foreign.Labels = map[string]string{manifests.LabelInstance: "metrics", manifests.LabelComponent: "ingester"}

	mapped := func(pod *corev1.Pod) []reconcile.Request {
		q := &fakeQueue{}
		clusterOfPod.Create(context.Background(), event.CreateEvent{Object: pod}, q)
		return q.added
	}
	if got := mapped(ingester); len(got) != 1 || got[0].NamespacedName != (types.NamespacedName{Namespace: "ns", Name: "metrics"}) {
		t.Errorf("an ingester pod of cluster ns/metrics enqueues %v", got)
	}
	if got := mapped(gatewayPod); len(got) != 0 {
		t.Errorf("a gateway pod, not part of the rollout, enqueues %v", got)
	}
	if got := mapped(foreign); len(got) != 0 {
		t.Errorf("a pod the controller does not manage enqueues %v", got)
	}

	changed := func(edit func(p *corev1.Pod)) bool {
		updated := ingester.DeepCopy()
		edit(updated)
		return plannerViewChanged.Update(event.UpdateEvent{ObjectOld: ingester, ObjectNew: updated})
	}
	for name, edit := range map[string]func(p *corev1.Pod){
		"became Ready": func(p *corev1.Pod) {
			p.Status.Conditions[0].Status = corev1.ConditionTrue
		},
		"terminating": func(p *corev1.Pod) { p.DeletionTimestamp = ptr.To(metav1.Now()) },
		"crash-looping": func(p *corev1.Pod) {
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: manifests.ComponentIngester, RestartCount: 1,
				State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}}}
		},
	} {
		if !changed(edit) {
			t.Errorf("%s: the update is filtered out", name)
		}
	}
	if changed(func(p *corev1.Pod) { p.Status.Message, p.Status.HostIP = "probing", "10.0.0.1" }) {
		t.Error("a status change the planner does not see wakes the cluster")
	}
}

type fakeQueue struct {
	workqueue.TypedRateLimitingInterface[reconcile.Request]
	added []reconcile.Request
}

func (q *fakeQueue) Add(r reconcile.Request) { q.added = append(q.added, r) }

// The controllers as the manager runs them, with the rollout's safety-net recheck taken away: a version
// upgrade still goes through every component and every ingester, woken only by the events of the pods the
// test plays the workload controllers and kubelet for (Ring is nil: a Ready ingester counts as ACTIVE).
func TestRolloutMovesOnPodEventsAlone(t *testing.T) {
	defer func(d time.Duration) { upgradeRecheck = d }(upgradeRecheck)
	upgradeRecheck = time.Hour
	h := newHarness(t)
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{Scheme: env.Scheme, Cache: CacheOptions(),
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
	stopped := make(chan error)
	go func() { stopped <- mgr.Start(ctx) }()
	defer func() { cancel(); <-stopped }()

	h.create(microservicesCluster("metrics", versionA))
	order := upgrade.Order(v1alpha1.TopologyMicroservices)
	exists := func(component string) bool {
		obj := h.workloadKind(component)
		return env.Client.Get(ctx, client.ObjectKey{Namespace: h.ns, Name: manifests.ComponentName("metrics", component)}, obj) == nil
	}
	for _, component := range order {
		waitFor(t, func() bool { return exists(component) }, "the "+component+" workload")
		h.settle("metrics", component)
	}
	version := func() string {
		var mc v1alpha1.MetricsCluster
		h.get("metrics", &mc)
		return mc.Status.Version
	}
	waitFor(t, func() bool { return version() == versionA }, "status.version "+versionA)

	var cluster v1alpha1.MetricsCluster
	h.get("metrics", &cluster)
	cluster.Spec.Version = versionB
	if err := env.Client.Update(ctx, &cluster); err != nil {
		t.Fatal(err)
	}
	imageB := manifests.CortexImage(versionB)
	for _, component := range order {
		waitFor(t, func() bool { return h.templateImage("metrics", component) == imageB }, "the "+component+" template at "+versionB)
		if component != manifests.ComponentIngester {
			h.settle("metrics", component)
		}
	}
	n := len(h.pods("metrics", manifests.ComponentIngester))
	for step := range n {
		deleted := "metrics-ingester-" + strconv.Itoa(n-1-step)
		waitFor(t, func() bool {
			_, ok := h.pods("metrics", manifests.ComponentIngester)[deleted]
			return !ok
		}, "ingester "+deleted+" deleted")
		h.settle("metrics", manifests.ComponentIngester)
	}
	waitFor(t, func() bool { return version() == versionB }, "status.version "+versionB)
}

// workloadKind is an empty Deployment or StatefulSet, as the component runs.
func (h *harness) workloadKind(component string) client.Object {
	switch component {
	case manifests.ComponentDistributor, manifests.ComponentQuerier, manifests.ComponentQueryFrontend, manifests.ComponentGateway:
		return &appsv1.Deployment{}
	}
	return &appsv1.StatefulSet{}
}
