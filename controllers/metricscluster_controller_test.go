package controllers

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/gateway"
	"github.com/opstrace/opstrace/internal/manifests"
	"github.com/opstrace/opstrace/internal/tokens"
	"github.com/opstrace/opstrace/internal/version"
)

func singleCluster(name string) *v1alpha1.MetricsCluster {
	return &v1alpha1.MetricsCluster{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1alpha1.MetricsClusterSpec{
			Topology: v1alpha1.TopologySingle,
			Storage:  v1alpha1.StorageSpec{Type: v1alpha1.StorageFilesystem},
		},
	}
}

func condition(conditions []metav1.Condition, kind string) metav1.Condition {
	if c := meta.FindStatusCondition(conditions, kind); c != nil {
		return *c
	}
	return metav1.Condition{}
}

func ownedBy(obj client.Object, owner client.Object) bool {
	for _, ref := range obj.GetOwnerReferences() {
		if ref.UID == owner.GetUID() && ptr.Deref(ref.Controller, false) {
			return true
		}
	}
	return false
}

func TestMetricsClusterBuildsEveryObjectWithOwnerAndStatus(t *testing.T) {
	h := newHarness(t)
	h.create(singleCluster("metrics"))
	h.reconcileCluster("metrics")

	var cluster v1alpha1.MetricsCluster
	h.get("metrics", &cluster)
	owned := []client.Object{
		&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "metrics-all"}},
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "metrics-gateway"}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: manifests.CortexConfigMapName("metrics")}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: manifests.RuntimeConfigMapName("metrics")}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "metrics-gateway"}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: manifests.SigningKeysSecretName("metrics")}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: manifests.CASecretName("metrics")}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: manifests.GatewayTLSSecretName("metrics")}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: manifests.GatewayAuthSecretName("metrics")}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: manifests.TenantTokenSecretName(v1alpha1.SystemTenant)}},
	}
	for _, obj := range owned {
		h.get(obj.GetName(), obj)
		if !ownedBy(obj, &cluster) {
			t.Errorf("%T %s is not controlled by the MetricsCluster: %v", obj, obj.GetName(), obj.GetOwnerReferences())
		}
	}

	// No kube-controller-manager here: nothing becomes ready, and the status says what it waits for.
	if c := condition(cluster.Status.Conditions, v1alpha1.ConditionReady); c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, "all (0/1 replicas ready)") {
		t.Errorf("Ready = %+v, want False waiting for all (0/1 replicas ready)", c)
	}
	if c := condition(cluster.Status.Conditions, v1alpha1.ConditionDegraded); c.Status != metav1.ConditionFalse {
		t.Errorf("Degraded = %+v, want False", c)
	}
	for _, kind := range []string{"CortexReady", "GatewayReady", v1alpha1.ConditionProgressing} {
		if c := condition(cluster.Status.Conditions, kind); c.Type == "" {
			t.Errorf("no %s condition in %+v", kind, cluster.Status.Conditions)
		}
	}
	if c := condition(cluster.Status.Conditions, v1alpha1.ConditionMonitoring); c.Status != metav1.ConditionTrue {
		t.Errorf("Monitoring = %+v, want True: the prometheus-operator CRDs are installed", c)
	}
	var monitors unstructured.UnstructuredList
	monitors.SetAPIVersion("monitoring.coreos.com/v1")
	monitors.SetKind("ServiceMonitorList")
	if err := env.Client.List(context.Background(), &monitors, client.InNamespace(h.ns)); err != nil || len(monitors.Items) == 0 {
		t.Errorf("no ServiceMonitors were created: %v", err)
	}
	if cluster.Status.GatewayEndpoint != "https://metrics-gateway."+h.ns+".svc" || cluster.Status.Version != "" {
		t.Errorf("endpoint %q version %q; want the gateway Service URL and no version before anything runs",
			cluster.Status.GatewayEndpoint, cluster.Status.Version)
	}
	// The installer's upgrade waits for the new controller's own status: it must say who wrote it.
	if cluster.Status.ControllerVersion != version.Version {
		t.Errorf("status.controllerVersion %q, want this controller's %q", cluster.Status.ControllerVersion, version.Version)
	}
}

func TestIdleReconcileMakesNoWrite(t *testing.T) {
	h := newHarness(t)
	h.create(singleCluster("metrics"))
	h.create(&v1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}})
	h.reconcileCluster("metrics")
	h.reconcileTenant("team-a")
	h.reconcileCluster("metrics") // sees the tenant's status and token

	before := h.writes.n.Load()
	h.reconcileCluster("metrics")
	h.reconcileTenant("team-a")
	if writes := h.writes.n.Load() - before; writes != 0 {
		t.Fatalf("a reconcile with nothing changed made %d write calls, want 0", writes)
	}
}

func TestConfigChangeRollsPodsAndTenantLimitsDoNot(t *testing.T) {
	h := newHarness(t)
	h.create(singleCluster("metrics"))
	h.create(&v1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}})
	h.reconcileCluster("metrics")
	hash := func() string {
		var sts appsv1.StatefulSet
		h.get("metrics-all", &sts)
		return sts.Spec.Template.Annotations[manifests.ConfigHashAnnotation]
	}
	overrides := func() string {
		var cm corev1.ConfigMap
		h.get(manifests.RuntimeConfigMapName("metrics"), &cm)
		for _, v := range cm.Data {
			return v
		}
		return ""
	}
	hash0, overrides0 := hash(), overrides()

	var tenant v1alpha1.Tenant
	h.get("team-a", &tenant)
	tenant.Spec.Limits.IngestionRate = ptr.To[int64](1234)
	if err := env.Client.Update(context.Background(), &tenant); err != nil {
		t.Fatal(err)
	}
	h.reconcileCluster("metrics")
	if !strings.Contains(overrides(), "1234") || overrides() == overrides0 {
		t.Fatalf("the tenant's new limit is not in the runtime overrides:\n%s", overrides())
	}
	if hash() != hash0 {
		t.Fatal("a tenant limit changed the pods' config hash: it would restart Cortex for nothing")
	}

	var cluster v1alpha1.MetricsCluster
	h.get("metrics", &cluster)
	cluster.Spec.Retention.MetricsDays = 90
	if err := env.Client.Update(context.Background(), &cluster); err != nil {
		t.Fatal(err)
	}
	h.reconcileCluster("metrics")
	if hash() == hash0 {
		t.Fatal("a retention change left the config hash unchanged: the pods would keep the old config")
	}
}

func TestMissingCredentialsSecretDegradesUntilCreated(t *testing.T) {
	h := newHarness(t)
	cluster := &v1alpha1.MetricsCluster{
		ObjectMeta: metav1.ObjectMeta{Name: "onprem"},
		Spec: v1alpha1.MetricsClusterSpec{Storage: v1alpha1.StorageSpec{Type: v1alpha1.StorageS3, S3: &v1alpha1.S3Storage{
			Bucket: "metrics", Endpoint: "minio.storage.svc:9000", Insecure: true,
			CredentialsSecret: &v1alpha1.SecretReference{Name: "minio-credentials"},
		}}},
	}
	h.create(cluster)
	if result := h.reconcileCluster("onprem"); result.RequeueAfter != 0 || result.Requeue {
		t.Fatalf("a degraded cluster requeues (%+v); it should wait for the Secret's watch event", result)
	}
	h.get("onprem", cluster)
	degraded := condition(cluster.Status.Conditions, v1alpha1.ConditionDegraded)
	if degraded.Status != metav1.ConditionTrue || degraded.Reason != v1alpha1.ReasonCredentialsSecretMissing ||
		!strings.Contains(degraded.Message, "Secret minio-credentials, which does not exist") {
		t.Fatalf("Degraded = %+v, want True naming the missing Secret", degraded)
	}
	var sts appsv1.StatefulSet
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: h.ns, Name: "onprem-all"}, &sts); err == nil {
		t.Fatal("workloads were created although Cortex cannot reach its storage")
	}

	h.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "minio-credentials"},
		StringData: map[string]string{"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret-value"}})
	h.reconcileCluster("onprem")
	h.get("onprem", cluster)
	if degraded := condition(cluster.Status.Conditions, v1alpha1.ConditionDegraded); degraded.Status != metav1.ConditionFalse {
		t.Fatalf("Degraded = %+v after the Secret was created, want False", degraded)
	}
	h.get("onprem-all", &sts)
	for _, c := range cluster.Status.Conditions {
		if strings.Contains(c.Message, "secret-value") {
			t.Fatalf("condition %s shows the secret", c.Type)
		}
	}
}

func TestIssuerRefMakesACertManagerCertificate(t *testing.T) {
	h := newHarness(t)
	cluster := singleCluster("metrics")
	cluster.Spec.Gateway.Hostname = "metrics.example.com"
	cluster.Spec.TLS.IssuerRef = &v1alpha1.IssuerReference{Name: "letsencrypt", Kind: "ClusterIssuer"}
	h.create(cluster)
	h.reconcileCluster("metrics")

	certificate := &unstructured.Unstructured{}
	certificate.SetAPIVersion("cert-manager.io/v1")
	certificate.SetKind("Certificate")
	h.get(manifests.GatewayTLSSecretName("metrics"), certificate)
	names, _, _ := unstructured.NestedStringSlice(certificate.Object, "spec", "dnsNames")
	issuer, _, _ := unstructured.NestedString(certificate.Object, "spec", "issuerRef", "name")
	if !strings.Contains(strings.Join(names, ","), "metrics.example.com") || issuer != "letsencrypt" {
		t.Fatalf("Certificate dnsNames %v issuer %q, want the hostname and issuer letsencrypt", names, issuer)
	}
	var ca corev1.Secret
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: h.ns, Name: manifests.CASecretName("metrics")}, &ca); err == nil {
		t.Fatal("the built-in CA was created although cert-manager issues the certificates")
	}
}

func TestTenantTokenVerifiesRevokesAndLeavesTheGatewayOnDeletion(t *testing.T) {
	h := newHarness(t)
	h.create(singleCluster("metrics"))
	h.create(&v1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}})
	h.reconcileCluster("metrics")
	h.reconcileTenant("team-a")
	h.reconcileCluster("metrics")

	verifier := func() *tokens.Verifier {
		var auth corev1.Secret
		h.get(manifests.GatewayAuthSecretName("metrics"), &auth)
		keys, err := tokens.ParseJWKS(auth.Data[manifests.GatewayAuthKeysKey])
		if err != nil {
			t.Fatal(err)
		}
		return &tokens.Verifier{Audience: manifests.TokenAudience(h.ns, "metrics"), Keys: keys}
	}
	tenantList := func() gateway.TenantList {
		var auth corev1.Secret
		h.get(manifests.GatewayAuthSecretName("metrics"), &auth)
		var list gateway.TenantList
		if err := json.Unmarshal(auth.Data[manifests.GatewayAuthTenantsKey], &list); err != nil {
			t.Fatal(err)
		}
		return list
	}
	token := func() string {
		var secret corev1.Secret
		h.get(manifests.TenantTokenSecretName("team-a"), &secret)
		return string(secret.Data[manifests.TenantTokenKey])
	}

	first := token()
	claims, err := verifier().Verify(first)
	if err != nil || claims.Tenant != "team-a" {
		t.Fatalf("the tenant's token does not verify with the cluster's published keys: %+v %v", claims, err)
	}
	if _, ok := tenantList().Tenants["team-a"]; !ok {
		t.Fatalf("team-a is not in the gateway's tenant list: %+v", tenantList())
	}
	var tenant v1alpha1.Tenant
	h.get("team-a", &tenant)
	if c := condition(tenant.Status.Conditions, v1alpha1.ConditionReady); c.Status != metav1.ConditionTrue ||
		tenant.Status.TokenSecretName != "tenant-team-a-token" || tenant.Status.ClusterName != "metrics" ||
		tenant.Status.RemoteWriteURL != "https://metrics-gateway."+h.ns+".svc/api/v1/push" {
		t.Fatalf("tenant status %+v, want Ready with the token Secret and the remote-write URL", tenant.Status)
	}

	// Revoking the current token's id hands the tenant a new one and tells the gateway to refuse the old.
	tenant.Spec.Tokens.RevokedIDs = []string{claims.ID}
	if err := env.Client.Update(context.Background(), &tenant); err != nil {
		t.Fatal(err)
	}
	h.reconcileTenant("team-a")
	h.reconcileCluster("metrics")
	if second := token(); second == first {
		t.Fatal("revoking the current token did not issue a new one")
	} else if _, err := verifier().Verify(second); err != nil {
		t.Fatalf("the new token does not verify: %v", err)
	}
	if revoked := tenantList().Tenants["team-a"].RevokedIDs; len(revoked) != 1 || revoked[0] != claims.ID {
		t.Fatalf("the gateway's revoked ids for team-a are %v, want [%s]", revoked, claims.ID)
	}

	// A token near the end of its life is replaced.
	h.now = h.now.Add(300 * 24 * time.Hour)
	renewed := token()
	h.reconcileTenant("team-a")
	if token() == renewed {
		t.Fatal("a token past 80% of its 365-day lifetime was not replaced")
	}

	if err := env.Client.Delete(context.Background(), &tenant); err != nil {
		t.Fatal(err)
	}
	h.reconcileCluster("metrics")
	if _, ok := tenantList().Tenants["team-a"]; ok {
		t.Fatal("a deleted tenant is still in the gateway's tenant list")
	}
	if _, ok := tenantList().Tenants[v1alpha1.SystemTenant]; !ok {
		t.Fatal("the system tenant is missing from the gateway's tenant list")
	}
}

func TestTenantWithoutItsClusterIsDegraded(t *testing.T) {
	h := newHarness(t)
	h.create(&v1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "orphan"}, Spec: v1alpha1.TenantSpec{ClusterName: "nowhere"}})
	h.reconcileTenant("orphan")
	var tenant v1alpha1.Tenant
	h.get("orphan", &tenant)
	c := condition(tenant.Status.Conditions, v1alpha1.ConditionDegraded)
	if c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonClusterNotFound || !strings.Contains(c.Message, "MetricsCluster nowhere") {
		t.Fatalf("Degraded = %+v, want True ClusterNotFound naming the cluster", c)
	}
}
