package controllers

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/opstrace/opstrace/internal/testenv"
)

// One real API server for the package, with cert-manager's and prometheus-operator's CRDs installed: the
// controllers' behaviour depends on what the API server owns (validation, defaults, server-side apply,
// owner references), which no fake client reproduces. There is no kube-controller-manager, so workloads
// never become ready and nothing is garbage-collected; the local-cluster tests cover that.
var env *testenv.Env

func TestMain(m *testing.M) {
	var err error
	env, err = testenv.Start(testenv.ThirdPartyCRDs()...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if err := env.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stop control plane:", err)
	}
	os.Exit(code)
}

// writeCounter counts every call that would change the API server's state.
type writeCounter struct{ n atomic.Int64 }

func (w *writeCounter) client(c client.WithWatch) client.Client {
	count := func() { w.n.Add(1) }
	return interceptor.NewClient(c, interceptor.Funcs{
		Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			count()
			return c.Create(ctx, obj, opts...)
		},
		Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
			count()
			return c.Update(ctx, obj, opts...)
		},
		Patch: func(ctx context.Context, c client.WithWatch, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
			count()
			return c.Patch(ctx, obj, patch, opts...)
		},
		Apply: func(ctx context.Context, c client.WithWatch, obj runtime.ApplyConfiguration, opts ...client.ApplyOption) error {
			count()
			return c.Apply(ctx, obj, opts...)
		},
		Delete: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.DeleteOption) error {
			count()
			return c.Delete(ctx, obj, opts...)
		},
		SubResourceCreate: func(ctx context.Context, c client.Client, sub string, obj, subObj client.Object, opts ...client.SubResourceCreateOption) error {
			count()
			return c.SubResource(sub).Create(ctx, obj, subObj, opts...)
		},
		SubResourceUpdate: func(ctx context.Context, c client.Client, sub string, obj client.Object, opts ...client.SubResourceUpdateOption) error {
			count()
			return c.SubResource(sub).Update(ctx, obj, opts...)
		},
		SubResourceApply: func(ctx context.Context, c client.Client, sub string, obj runtime.ApplyConfiguration, opts ...client.SubResourceApplyOption) error {
			count()
			return c.SubResource(sub).Apply(ctx, obj, opts...)
		},
		SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
			count()
			return c.SubResource(sub).Patch(ctx, obj, patch, opts...)
		},
	})
}

// harness holds reconcilers that talk to the test API server through a write-counting client.
type harness struct {
	t       *testing.T
	writes  *writeCounter
	cluster *MetricsClusterReconciler
	tenant  *TenantReconciler
	ns      string
	now     time.Time
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	direct, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	writes := &writeCounter{}
	c := writes.client(direct)
	httpClient, err := rest.HTTPClientFor(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper, err := apiutil.NewDynamicRESTMapper(env.Config, httpClient)
	if err != nil {
		t.Fatal(err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "controllers-"}}
	if err := env.Client.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, writes: writes, ns: ns.Name, now: time.Now()}
	clock := func() time.Time { return h.now }
	h.cluster = &MetricsClusterReconciler{Client: c, Scheme: env.Scheme, RESTMapper: mapper,
		GatewayImage: "opstrace/opstrace-gateway:test", Now: clock}
	h.tenant = &TenantReconciler{Client: c, Scheme: env.Scheme, Now: clock}
	return h
}

func (h *harness) reconcileCluster(name string) reconcile.Result {
	h.t.Helper()
	result, err := h.cluster.Reconcile(context.Background(), reconcile.Request{NamespacedName: types.NamespacedName{Namespace: h.ns, Name: name}})
	if err != nil {
		h.t.Fatalf("reconcile metrics cluster %s: %v", name, err)
	}
	return result
}

func (h *harness) reconcileTenant(name string) reconcile.Result {
	h.t.Helper()
	result, err := h.tenant.Reconcile(context.Background(), reconcile.Request{NamespacedName: types.NamespacedName{Namespace: h.ns, Name: name}})
	if err != nil {
		h.t.Fatalf("reconcile tenant %s: %v", name, err)
	}
	return result
}

func (h *harness) get(name string, obj client.Object) {
	h.t.Helper()
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: h.ns, Name: name}, obj); err != nil {
		h.t.Fatalf("get %T %s: %v", obj, name, err)
	}
}

func (h *harness) create(obj client.Object) {
	h.t.Helper()
	obj.SetNamespace(h.ns)
	if err := env.Client.Create(context.Background(), obj); err != nil {
		h.t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
}
