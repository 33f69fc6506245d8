package controllers

import (
	"context"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/manifests"
	"github.com/opstrace/opstrace/internal/testenv"
	"github.com/opstrace/opstrace/internal/upgrade"
)

// Loki's rollout is the planner's second plan: these tests run it next to Cortex's on the real API server, the
// test playing the workload controllers and the kubelet (settle), as metricscluster_upgrade_test.go does.

const (
	lokiA = "v3.6.5"
	lokiB = "v3.7.8"
)

// loggingCluster is microservicesCluster with logs on, Loki at lokiVersion.
func loggingCluster(name, version, lokiVersion string) *v1alpha1.MetricsCluster {
	mc := microservicesCluster(name, version)
	mc.Spec.Logs = v1alpha1.LogsSpec{Version: lokiVersion}
	return mc
}

// rolledOut creates loggingCluster(name, version, lokiVersion), settles every workload of both plans and
// the gateway, and returns the cluster once a reconcile reported both versions in its status.
func (h *harness) rolledOut(name, version, lokiVersion string) *v1alpha1.MetricsCluster {
	h.t.Helper()
	h.create(loggingCluster(name, version, lokiVersion))
	h.reconcileCluster(name)
	components := append(upgrade.Cortex.Order(v1alpha1.TopologyMicroservices), upgrade.Loki.Order(v1alpha1.TopologyMicroservices)...)
	for _, component := range append(components, manifests.ComponentGateway) {
		h.settle(name, component)
	}
	h.reconcileCluster(name)
	var cluster v1alpha1.MetricsCluster
	h.get(name, &cluster)
	if cluster.Status.Version != version || cluster.Status.LogsVersion != lokiVersion {
		h.t.Fatalf("status versions %q, %q once every component is Ready, want %s, %s; conditions %+v",
			cluster.Status.Version, cluster.Status.LogsVersion, version, lokiVersion, cluster.Status.Conditions)
	}
	return &cluster
}

// templateHashes are the template-hash annotations of the live workloads of components.
func (h *harness) templateHashes(cluster string, components []string) map[string]string {
	h.t.Helper()
	out := map[string]string{}
	for _, component := range components {
		template, _ := podTemplate(h.workload(cluster, component))
		out[component] = template.Annotations[manifests.TemplateHashAnnotation]
	}
	return out
}

// A change of Loki's version or configuration rolls the Loki components in order, one at a time, and the
// Loki ingesters one by one, highest ordinal first; status.logsVersion moves only at the end; Cortex's
// templates never change; a controller restarted half-way goes on; a downgrade is refused.
func TestLokiRollsOutInOrderAndIngestersOneAtATime(t *testing.T) {
	for _, tc := range []struct {
		name    string
		change  func(mc *v1alpha1.MetricsCluster)
		version string // spec.logs.version after the change
		message string // the Progressing message while the first component rolls
	}{
		{"version", func(mc *v1alpha1.MetricsCluster) { mc.Spec.Logs.Version = lokiB }, lokiB,
			"upgrading loki-compactor to " + lokiB},
		{"config", func(mc *v1alpha1.MetricsCluster) { mc.Spec.Retention.LogsDays = 30 }, lokiA,
			"rolling out the new pod template of loki-compactor (" + lokiA + ")"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			cluster := h.rolledOut("metrics", versionB, lokiA)
			lokiOrder := upgrade.Loki.Order(v1alpha1.TopologyMicroservices)
			cortexOrder := upgrade.Cortex.Order(v1alpha1.TopologyMicroservices)
			lokiBefore := h.templateHashes("metrics", lokiOrder)
			cortexBefore := h.templateHashes("metrics", cortexOrder)

			tc.change(cluster)
			if err := env.Client.Update(context.Background(), cluster); err != nil {
				t.Fatal(err)
			}
			for i, component := range lokiOrder {
				h.reconcileCluster("metrics")
				now := h.templateHashes("metrics", lokiOrder)
				for j, other := range lokiOrder {
					if changed := now[other] != lokiBefore[other]; changed != (j <= i) {
						t.Fatalf("while rolling %s: the template of %s changed=%v, want %v", component, other, changed, j <= i)
					}
				}
				h.get("metrics", cluster)
				c := condition(cluster.Status.Conditions, v1alpha1.ConditionProgressing)
				named := component
				if component == manifests.LokiComponentIngester {
					named = "loki ingesters 0/"
				}
				if c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonUpgrading || !strings.Contains(c.Message, named) {
					t.Fatalf("Progressing = %+v while rolling %s, want True, Upgrading, naming it", c, component)
				}
				if i == 0 && c.Message != tc.message {
					t.Fatalf("Progressing message %q, want %q", c.Message, tc.message)
				}
				if cluster.Status.LogsVersion != lokiA {
					t.Fatalf("status.logsVersion = %q while rolling %s, want %s", cluster.Status.LogsVersion, component, lokiA)
				}
				if component != manifests.LokiComponentIngester {
					h.settle("metrics", component)
				}
			}

			h.replaceIngesters("metrics", manifests.LokiComponentIngester, func(step, n int, mc *v1alpha1.MetricsCluster) {
				c := condition(mc.Status.Conditions, v1alpha1.ConditionProgressing)
				if want := "loki ingesters " + strconv.Itoa(step) + "/" + strconv.Itoa(n) + " at " + tc.version; c.Message != want {
					t.Fatalf("Progressing message = %q, want %q", c.Message, want)
				}
				if mc.Status.LogsVersion != lokiA {
					t.Fatalf("status.logsVersion = %q with Loki ingesters on the old template, want %s", mc.Status.LogsVersion, lokiA)
				}
				if step == 0 {
					// A new controller process: nothing of the rollout is remembered, the next reconcile goes on.
					h.cluster = &MetricsClusterReconciler{Client: h.cluster.Client, Scheme: h.cluster.Scheme,
						RESTMapper: h.cluster.RESTMapper, GatewayImage: h.cluster.GatewayImage, Now: h.cluster.Now}
				}
			})
			h.reconcileCluster("metrics")
			h.get("metrics", cluster)
			if cluster.Status.LogsVersion != tc.version || cluster.Status.Version != versionB {
				t.Fatalf("status versions %q, %q after the rollout, want %s, %s", cluster.Status.Version, cluster.Status.LogsVersion, versionB, tc.version)
			}
			if c := condition(cluster.Status.Conditions, v1alpha1.ConditionProgressing); c.Status != metav1.ConditionFalse {
				t.Fatalf("Progressing = %+v after the rollout, want False", c)
			}
			after := h.templateHashes("metrics", lokiOrder)
			for _, p := range h.pods("metrics", manifests.LokiComponentIngester) {
				if p.Annotations[manifests.TemplateHashAnnotation] != after[manifests.LokiComponentIngester] {
					t.Errorf("Loki ingester %s runs another template than its StatefulSet's", p.Name)
				}
			}
			for component, hash := range h.templateHashes("metrics", cortexOrder) {
				if hash != cortexBefore[component] {
					t.Errorf("a Loki %s changed the template of Cortex's %s", tc.name, component)
				}
			}
			before := h.writes.n.Load()
			h.reconcileCluster("metrics")
			if writes := h.writes.n.Load() - before; writes != 0 {
				t.Fatalf("an idle reconcile after the rollout made %d writes, want 0", writes)
			}

			if tc.name != "version" {
				return
			}
			// Back to the previous Loki: refused, no Loki template changes, Cortex is not held.
			cluster.Spec.Logs.Version = lokiA
			if err := env.Client.Update(context.Background(), cluster); err != nil {
				t.Fatal(err)
			}
			h.reconcileCluster("metrics")
			h.get("metrics", cluster)
			c := condition(cluster.Status.Conditions, v1alpha1.ConditionDegraded)
			if c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonVersionRefused ||
				!strings.HasPrefix(c.Message, "Loki "+lokiA+" is older than the running "+lokiB+": Loki cannot be downgraded in place") {
				t.Fatalf("Degraded = %+v after a Loki downgrade, want True, VersionRefused, naming both versions", c)
			}
			for component, hash := range h.templateHashes("metrics", lokiOrder) {
				if hash != after[component] {
					t.Errorf("after a refused Loki downgrade the template of %s changed", component)
				}
			}
			if cluster.Status.LogsVersion != lokiB {
				t.Errorf("status.logsVersion = %q after a refused downgrade, want %s", cluster.Status.LogsVersion, lokiB)
			}
		})
	}
}

// crash makes the pods of component crash-loop, as the kubelet reports it.
func (h *harness) crash(cluster, component string) {
	h.t.Helper()
	for _, p := range h.pods(cluster, component) {
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse, LastTransitionTime: metav1.Now()}}
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: p.Spec.Containers[0].Name, Image: p.Spec.Containers[0].Image,
			RestartCount: 4, State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}}}
		if err := env.Client.Status().Update(context.Background(), &p); err != nil {
			h.t.Fatal(err)
		}
	}
}

// A Loki pod that cannot start stops the Loki rollout, and the cluster is Degraded naming the pod and why;
// Cortex's rollout, started by the same spec change, goes on to the end, and status.version moves while
// status.logsVersion does not. Once the pod runs, the Loki rollout goes on by itself.
func TestStalledLokiRolloutDegradesWhileCortexRollsOn(t *testing.T) {
	h := newHarness(t)
	cluster := h.rolledOut("metrics", versionA, lokiA)
	cluster.Spec.Version, cluster.Spec.Logs.Version = versionB, lokiB
	if err := env.Client.Update(context.Background(), cluster); err != nil {
		t.Fatal(err)
	}

	// One reconcile starts both rollouts.
	h.reconcileCluster("metrics")
	if got := h.templateImage("metrics", manifests.ComponentCompactor); got != manifests.CortexImage(versionB) {
		t.Fatalf("Cortex compactor template %s, want %s", got, manifests.CortexImage(versionB))
	}
	if got := h.templateImage("metrics", manifests.LokiComponentCompactor); got != manifests.LokiImage(lokiB) {
		t.Fatalf("Loki compactor template %s, want %s", got, manifests.LokiImage(lokiB))
	}
	h.get("metrics", cluster)
	if c, want := condition(cluster.Status.Conditions, v1alpha1.ConditionProgressing),
		"upgrading compactor to "+versionB+"; upgrading loki-compactor to "+lokiB; c.Message != want {
		t.Fatalf("Progressing message %q with both rollouts moving, want %q", c.Message, want)
	}
	h.settle("metrics", manifests.LokiComponentCompactor)
	h.crash("metrics", manifests.LokiComponentCompactor)

	wantDegraded := func(mc *v1alpha1.MetricsCluster, when string) {
		t.Helper()
		c := condition(mc.Status.Conditions, v1alpha1.ConditionDegraded)
		if c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonUpgradeStalled ||
			!strings.Contains(c.Message, "pod metrics-loki-compactor-0 (loki-compactor): it cannot start: CrashLoopBackOff") {
			t.Fatalf("%s: Degraded = %+v, want True, UpgradeStalled, naming metrics-loki-compactor-0 and CrashLoopBackOff", when, c)
		}
		if mc.Status.LogsVersion != lokiA {
			t.Fatalf("%s: status.logsVersion = %q, want %s", when, mc.Status.LogsVersion, lokiA)
		}
		if got := h.templateImage("metrics", manifests.LokiComponentQueryFrontend); got != manifests.LokiImage(lokiA) {
			t.Fatalf("%s: the stalled Loki rollout went on to the query-frontend (%s)", when, got)
		}
	}
	for _, component := range upgrade.Cortex.Order(v1alpha1.TopologyMicroservices) {
		h.reconcileCluster("metrics")
		h.get("metrics", cluster)
		wantDegraded(cluster, "rolling Cortex's "+component)
		if got := h.templateImage("metrics", component); got != manifests.CortexImage(versionB) {
			t.Fatalf("Cortex's %s template %s beside a stalled Loki, want %s", component, got, manifests.CortexImage(versionB))
		}
		c := condition(cluster.Status.Conditions, v1alpha1.ConditionProgressing)
		if c.Status != metav1.ConditionTrue || !strings.Contains(c.Message, component) {
			t.Fatalf("Progressing = %+v while Cortex rolls %s, want True naming it", c, component)
		}
		if component != manifests.ComponentIngester {
			h.settle("metrics", component)
		}
	}
	h.replaceIngesters("metrics", manifests.ComponentIngester, func(step, n int, mc *v1alpha1.MetricsCluster) {
		wantDegraded(mc, "replacing Cortex ingesters")
		c := condition(mc.Status.Conditions, v1alpha1.ConditionProgressing)
		if want := "ingesters " + strconv.Itoa(step) + "/" + strconv.Itoa(n) + " at " + versionB; c.Message != want {
			t.Fatalf("Progressing message = %q, want %q", c.Message, want)
		}
	})
	h.reconcileCluster("metrics")
	h.get("metrics", cluster)
	wantDegraded(cluster, "Cortex rolled out")
	if cluster.Status.Version != versionB {
		t.Fatalf("status.version = %q once Cortex rolled out beside a stalled Loki, want %s", cluster.Status.Version, versionB)
	}
	if c := condition(cluster.Status.Conditions, v1alpha1.ConditionProgressing); c.Status != metav1.ConditionFalse || c.Reason != v1alpha1.ReasonUpgradeStalled {
		t.Fatalf("Progressing = %+v with Cortex done and Loki stalled, want False, UpgradeStalled", c)
	}

	// The Loki compactor starts after all: the Loki rollout goes on, Degraded clears.
	h.settle("metrics", manifests.LokiComponentCompactor)
	for _, p := range h.pods("metrics", manifests.LokiComponentCompactor) {
		p.Status.ContainerStatuses = nil
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}
		if err := env.Client.Status().Update(context.Background(), &p); err != nil {
			t.Fatal(err)
		}
	}
	h.reconcileCluster("metrics")
	h.get("metrics", cluster)
	if c := condition(cluster.Status.Conditions, v1alpha1.ConditionDegraded); c.Status != metav1.ConditionFalse {
		t.Fatalf("Degraded = %+v once the Loki compactor is Ready, want False", c)
	}
	if got := h.templateImage("metrics", manifests.LokiComponentQueryFrontend); got != manifests.LokiImage(lokiB) {
		t.Fatalf("the Loki rollout did not go on to the query-frontend: %s", got)
	}
}

// The Loki ring reader against the real Loki binary: GET /ring with Accept: application/json answers the
// shape parseRing reads, and the ingester is listed under the process's hostname, which in a pod is the
// pod's name (Loki's ingester.lifecycler.id defaults to it, and the rendered configuration does not set it:
// see TestLokiIngesterRegistersUnderItsHostname in internal/manifests).
func TestLokiRingReaderReadsTheRealLokiRing(t *testing.T) {
	cluster := &v1alpha1.MetricsCluster{ObjectMeta: metav1.ObjectMeta{Name: "metrics", Namespace: "observability"}}
	if got, want := RingURL(cluster, upgrade.Loki), "http://metrics-loki-distributor.observability.svc.cluster.local:3100/ring"; got != want {
		t.Errorf("Loki ring URL %s, want %s", got, want)
	}
	if got, want := RingURL(cluster, upgrade.Cortex), "http://metrics-distributor.observability.svc.cluster.local:8080/ingester/ring"; got != want {
		t.Errorf("Cortex ring URL %s, want %s", got, want)
	}

	loki := testenv.StartLoki(t, testenv.MinimalLokiConfig)
	hostname, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	reader := HTTPRingReader{Client: &http.Client{Timeout: 5 * time.Second}}
	var members []upgrade.RingMember
	deadline := time.Now().Add(30 * time.Second)
	for {
		members, err = reader.read(context.Background(), loki.URL+"/ring")
		if err == nil && len(members) == 1 && members[0].State == upgrade.RingActive {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Loki's ring: %+v, %v; want one ACTIVE member\n%s", members, err, loki.LogTail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if members[0].ID != hostname {
		t.Errorf("Loki's ingester is in the ring as %q, want the hostname %q", members[0].ID, hostname)
	}
	// A page that is no ring (/ready answers plain text) is an error, not an empty ring.
	if _, err := reader.read(context.Background(), loki.URL+"/ready"); err == nil {
		t.Error("Loki's /ready parsed as a ring")
	}
}
