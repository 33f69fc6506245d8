package controllers

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/gateway"
	"github.com/opstrace/opstrace/internal/manifests"
)

// The controllers as the manager runs them: only the watches set up in SetupWithManager bring a new or
// deleted Tenant to the gateway's tenant list.
func TestManagerCarriesTenantChangesToTheGateway(t *testing.T) {
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme: env.Scheme, Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := (&MetricsClusterReconciler{Client: mgr.GetClient(), Scheme: mgr.GetScheme(), RESTMapper: mgr.GetRESTMapper(),
		GatewayImage: "opstrace/opstrace-gateway:test"}).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	if err := (&TenantReconciler{Client: mgr.GetClient(), Scheme: mgr.GetScheme()}).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error)
	go func() { stopped <- mgr.Start(ctx) }()
	defer func() { cancel(); <-stopped }()

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "manager-"}}
	if err := env.Client.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	cluster := singleCluster("metrics")
	cluster.Namespace = ns.Name
	if err := env.Client.Create(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	inGateway := func(tenant string) bool {
		var auth corev1.Secret
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: manifests.GatewayAuthSecretName("metrics")}, &auth); err != nil {
			return false
		}
		var list gateway.TenantList
		_ = json.Unmarshal(auth.Data[manifests.GatewayAuthTenantsKey], &list)
		_, ok := list.Tenants[tenant]
		return ok
	}
	waitFor(t, func() bool { return inGateway(v1alpha1.SystemTenant) }, "the cluster's gateway tenant list")

	start := time.Now()
	tenant := &v1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "team-a", Namespace: ns.Name}}
	if err := env.Client.Create(ctx, tenant); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		var token corev1.Secret
		err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: manifests.TenantTokenSecretName("team-a")}, &token)
		return err == nil && inGateway("team-a")
	}, "team-a's token and its place in the gateway's tenant list")
	t.Logf("Tenant create → token Secret and gateway tenant list updated: %v", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	if err := env.Client.Delete(ctx, tenant); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return !inGateway("team-a") }, "team-a to leave the gateway's tenant list")
	t.Logf("Tenant delete → gateway tenant list updated: %v", time.Since(start).Round(time.Millisecond))
}

// waitFor polls cond for up to 30 seconds: a deadline for a broken watch, not a performance target.
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
