package controllers

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/gateway"
	"github.com/opstrace/opstrace/internal/manifests"
)

func TestLogsRunLokiWithStatusAndTenantURLs(t *testing.T) {
	h := newHarness(t)
	h.create(singleCluster("metrics"))
	h.create(&v1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}})
	h.reconcileCluster("metrics")
	h.reconcileTenant("team-a")

	var cluster v1alpha1.MetricsCluster
	h.get("metrics", &cluster)
	for _, obj := range []client.Object{
		&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "metrics-loki"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "metrics-loki"}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: manifests.LokiConfigMapName("metrics")}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: manifests.LokiRuntimeConfigMapName("metrics")}},
	} {
		h.get(obj.GetName(), obj)
		if !ownedBy(obj, &cluster) {
			t.Errorf("%T %s is not controlled by the MetricsCluster", obj, obj.GetName())
		}
	}
	var sts appsv1.StatefulSet
	h.get("metrics-loki", &sts)
	if image := sts.Spec.Template.Spec.Containers[0].Image; image != manifests.LokiImage(manifests.DefaultLokiVersion) {
		t.Errorf("Loki image %s, want the pinned %s", image, manifests.DefaultLokiVersion)
	}
	var gw appsv1.Deployment
	h.get("metrics-gateway", &gw)
	if args := strings.Join(gw.Spec.Template.Spec.Containers[0].Args, " "); !strings.Contains(args, "--loki-distributor-service=metrics-loki") {
		t.Errorf("the gateway is not told where Loki is: %s", args)
	}

	// Nothing runs pods here: Loki is not ready, has its own condition, and keeps the cluster from Ready.
	if c := condition(cluster.Status.Conditions, "LokiReady"); c.Status != metav1.ConditionFalse || c.Message != "0/1 replicas ready" {
		t.Errorf("LokiReady = %+v, want False with 0/1 replicas ready", c)
	}
	if c := condition(cluster.Status.Conditions, v1alpha1.ConditionReady); c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, "loki (0/1 replicas ready)") {
		t.Errorf("Ready = %+v, want False waiting for loki", c)
	}

	var tenant v1alpha1.Tenant
	h.get("team-a", &tenant)
	endpoint := "https://metrics-gateway." + h.ns + ".svc"
	if tenant.Status.LogsURL != endpoint || tenant.Status.LogsPushURL != endpoint+"/loki/api/v1/push" {
		t.Errorf("tenant logs URLs %q, %q; want the gateway URL and its /loki/api/v1/push", tenant.Status.LogsURL, tenant.Status.LogsPushURL)
	}
}

func TestTenantLogLimitsReachLokiAndTheGatewayWithoutRestart(t *testing.T) {
	h := newHarness(t)
	h.create(singleCluster("metrics"))
	h.create(&v1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}})
	h.reconcileCluster("metrics")
	templateHash := func() string {
		var sts appsv1.StatefulSet
		h.get("metrics-loki", &sts)
		return sts.Spec.Template.Annotations[manifests.TemplateHashAnnotation]
	}
	hash0 := templateHash()

	var tenant v1alpha1.Tenant
	h.get("team-a", &tenant)
	tenant.Spec.Limits.LogIngestionRate = ptr.To[int64](3 << 19) // 1.5 MiB/s
	tenant.Spec.Limits.LogIngestionBurst = ptr.To[int64](2 << 20)
	tenant.Spec.Limits.LogRetentionDays = ptr.To[int32](31)
	if err := env.Client.Update(context.Background(), &tenant); err != nil {
		t.Fatal(err)
	}
	h.reconcileCluster("metrics")

	var overrides corev1.ConfigMap
	h.get(manifests.LokiRuntimeConfigMapName("metrics"), &overrides)
	got := overrides.Data[manifests.LokiRuntimeConfigKey]
	for _, want := range []string{`"team-a":`, "ingestion_rate_mb: 1.5", "ingestion_burst_size_mb: 2", "retention_period: 31d", `"system":`} {
		if !strings.Contains(got, want) {
			t.Errorf("Loki's runtime overrides lack %q:\n%s", want, got)
		}
	}
	if templateHash() != hash0 {
		t.Error("a tenant's log limit changed the Loki pod template: it would restart Loki for nothing")
	}

	var auth corev1.Secret
	h.get(manifests.GatewayAuthSecretName("metrics"), &auth)
	list, err := gateway.ParseTenantList(auth.Data[manifests.GatewayAuthTenantsKey])
	if err != nil {
		t.Fatal(err)
	}
	if p := list.Tenants["team-a"]; p.LogIngestionRate != 3<<19 || p.LogIngestionBurst != 2<<20 {
		t.Errorf("gateway policy of team-a %+v, want the log limits in bytes", p)
	}
	if p := list.Tenants[v1alpha1.SystemTenant]; p.LogIngestionRate != manifests.BuiltinLogIngestionRate || p.LogIngestionBurst != manifests.BuiltinLogIngestionBurst {
		t.Errorf("gateway policy of the system tenant %+v, want the built-in log limits", p)
	}
	raw, _ := json.Marshal(list.Tenants["team-a"])
	if !strings.Contains(string(raw), `"logIngestionRate":1572864`) {
		t.Errorf("tenant policy JSON %s", raw)
	}
}

func TestLogsTurnedOffRemoveLoki(t *testing.T) {
	h := newHarness(t)
	h.create(singleCluster("metrics"))
	h.create(&v1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}})
	h.reconcileCluster("metrics")
	h.reconcileTenant("team-a")

	var cluster v1alpha1.MetricsCluster
	h.get("metrics", &cluster)
	cluster.Spec.Logs.Enabled = ptr.To(false)
	if err := env.Client.Update(context.Background(), &cluster); err != nil {
		t.Fatal(err)
	}
	h.reconcileCluster("metrics")
	h.reconcileTenant("team-a")

	for _, obj := range []client.Object{
		&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "metrics-loki"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "metrics-loki"}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: manifests.LokiConfigMapName("metrics")}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: manifests.LokiServiceAccountName("metrics")}},
	} {
		err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: h.ns, Name: obj.GetName()}, obj)
		if !apierrors.IsNotFound(err) {
			t.Errorf("%T %s still exists with logs off (err %v)", obj, obj.GetName(), err)
		}
	}
	// Cortex is untouched.
	h.get("metrics-all", &appsv1.StatefulSet{})
	h.get("metrics", &cluster)
	if c := condition(cluster.Status.Conditions, "LokiReady"); c.Type != "" {
		t.Errorf("LokiReady %+v is left with logs off", c)
	}
	var gw appsv1.Deployment
	h.get("metrics-gateway", &gw)
	if args := strings.Join(gw.Spec.Template.Spec.Containers[0].Args, " "); strings.Contains(args, "--loki-") {
		t.Errorf("the gateway still has Loki Services: %s", args)
	}
	var tenant v1alpha1.Tenant
	h.get("team-a", &tenant)
	if tenant.Status.LogsURL != "" || tenant.Status.LogsPushURL != "" || tenant.Status.QueryURL == "" {
		t.Errorf("tenant URLs: logs %q %q, query %q; want no logs URLs, the query URL kept", tenant.Status.LogsURL, tenant.Status.LogsPushURL, tenant.Status.QueryURL)
	}

	before := h.writes.n.Load()
	h.reconcileCluster("metrics")
	h.reconcileTenant("team-a")
	if writes := h.writes.n.Load() - before; writes != 0 {
		t.Fatalf("an idle reconcile with logs off made %d write calls, want 0", writes)
	}
}
