package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/apply"
	"github.com/opstrace/opstrace/internal/manifests"
)

// TenantReconciler keeps each Tenant's token Secret and status. The tenant's place in the gateway's allow-list
// and in Cortex's overrides belongs to its MetricsCluster, which watches Tenants.
type TenantReconciler struct {
	Client client.Client
	Scheme *runtime.Scheme
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// +kubebuilder:rbac:groups=opstrace.io,resources=tenants,verbs=get;list;watch
// +kubebuilder:rbac:groups=opstrace.io,resources=tenants/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update;patch;delete

// Reconcile resolves the tenant's cluster, keeps a valid token in Secret tenant-<name>-token and reports status.
func (r *TenantReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var tenant v1alpha1.Tenant
	if err := r.Client.Get(ctx, req.NamespacedName, &tenant); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	original := tenant.DeepCopy()
	now := r.now()

	cluster, reason, message, err := resolveCluster(ctx, r.Client, &tenant)
	if err != nil {
		return ctrl.Result{}, err
	}
	var result ctrl.Result
	if cluster != nil {
		reason, message, result, err = r.reconcileToken(ctx, &tenant, cluster, now)
		if err != nil {
			return ctrl.Result{}, err
		}
	}
	setTenantStatus(&tenant, cluster, reason, message)
	if !equality.Semantic.DeepEqual(original.Status, tenant.Status) {
		if err := r.Client.Status().Patch(ctx, &tenant, client.MergeFrom(original)); err != nil {
			return ctrl.Result{}, fmt.Errorf("update status of tenant %s: %w", tenant.Name, err)
		}
	}
	return result, nil
}

// reconcileToken issues a token when the tenant has none, or the one it has is revoked, invalid or old. It
// returns the Ready reason and message.
func (r *TenantReconciler) reconcileToken(ctx context.Context, tenant *v1alpha1.Tenant, cluster *v1alpha1.MetricsCluster, now time.Time) (string, string, ctrl.Result, error) {
	var keysSecret corev1.Secret
	keysKey := client.ObjectKey{Namespace: cluster.Namespace, Name: manifests.SigningKeysSecretName(cluster.Name)}
	if err := r.Client.Get(ctx, keysKey, &keysSecret); apierrors.IsNotFound(err) {
		return v1alpha1.ReasonClusterNotReady, fmt.Sprintf("waiting for MetricsCluster %s to create its token signing keys", cluster.Name), ctrl.Result{}, nil
	} else if err != nil {
		return "", "", ctrl.Result{}, fmt.Errorf("get signing keys of cluster %s: %w", cluster.Name, err)
	}
	keys, err := parseSigningKeys(&keysSecret)
	if err != nil {
		return v1alpha1.ReasonClusterNotReady, err.Error(), ctrl.Result{}, nil
	}

	var existing corev1.Secret
	secretKey := client.ObjectKey{Namespace: tenant.Namespace, Name: manifests.TenantTokenSecretName(tenant.Name)}
	if err := r.Client.Get(ctx, secretKey, &existing); err != nil && !apierrors.IsNotFound(err) {
		return "", "", ctrl.Result{}, fmt.Errorf("get token of tenant %s: %w", tenant.Name, err)
	}
	audience := manifests.TokenAudience(cluster.Namespace, cluster.Name)
	lifetime := time.Duration(tenant.Spec.Tokens.LifetimeDays) * 24 * time.Hour
	issue, _, recheck := tokenDecision(existing.Data[manifests.TenantTokenKey], keys, audience, tenant.Spec.Tokens.RevokedIDs, lifetime, now)
	if issue {
		token, _, err := keys.current.Issue(tenant.Name, audience, now, lifetime)
		if err != nil {
			return "", "", ctrl.Result{}, err
		}
		applier := apply.Applier{Client: r.Client, Scheme: r.Scheme}
		if _, err := applier.Apply(ctx, tenant, tokenSecret(tenant.Namespace, tenant.Name, token)); err != nil {
			return "", "", ctrl.Result{}, err
		}
		recheck = time.Duration(float64(lifetime) * tokenRenewalFraction)
	}
	return v1alpha1.ReasonReady, "the tenant's token is in Secret " + secretKey.Name, ctrl.Result{RequeueAfter: recheck}, nil
}

// setTenantStatus records what the reconcile found; messages hold no times, so an unchanged tenant writes
// nothing.
func setTenantStatus(tenant *v1alpha1.Tenant, cluster *v1alpha1.MetricsCluster, reason, message string) {
	tenant.Status.ObservedGeneration = tenant.Generation
	ready := metav1.Condition{Type: v1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: reason,
		Message: message, ObservedGeneration: tenant.Generation}
	degraded := metav1.Condition{Type: v1alpha1.ConditionDegraded, Status: metav1.ConditionFalse,
		Reason: v1alpha1.ReasonNoProblem, ObservedGeneration: tenant.Generation}
	switch reason {
	case v1alpha1.ReasonReady:
		ready.Status = metav1.ConditionTrue
	case v1alpha1.ReasonClusterNotFound, v1alpha1.ReasonClusterAmbiguous:
		degraded.Status, degraded.Reason, degraded.Message = metav1.ConditionTrue, reason, message
	}
	meta.SetStatusCondition(&tenant.Status.Conditions, ready)
	meta.SetStatusCondition(&tenant.Status.Conditions, degraded)

	tenant.Status.ClusterName, tenant.Status.TokenSecretName = "", ""
	tenant.Status.RemoteWriteURL, tenant.Status.QueryURL = "", ""
	tenant.Status.LogsPushURL, tenant.Status.LogsURL = "", ""
	if cluster != nil {
		tenant.Status.ClusterName = cluster.Name
	}
	if reason == v1alpha1.ReasonReady {
		tenant.Status.TokenSecretName = manifests.TenantTokenSecretName(tenant.Name)
		if endpoint := cluster.Status.GatewayEndpoint; endpoint != "" {
			tenant.Status.RemoteWriteURL = endpoint + "/api/v1/push"
			tenant.Status.QueryURL = endpoint
			if cluster.Spec.Logs.IsEnabled() {
				// The gateway serves Loki's API under /loki: a Grafana Loki data source takes the bare URL.
				tenant.Status.LogsPushURL = endpoint + "/loki/api/v1/push"
				tenant.Status.LogsURL = endpoint
			}
		}
	}
}

// resolveCluster finds the tenant's MetricsCluster: the one named in spec.clusterName, else the only one in
// the namespace. When there is none it returns the reason and message for the tenant's status.
func resolveCluster(ctx context.Context, c client.Client, tenant *v1alpha1.Tenant) (*v1alpha1.MetricsCluster, string, string, error) {
	var clusters v1alpha1.MetricsClusterList
	if err := c.List(ctx, &clusters, client.InNamespace(tenant.Namespace)); err != nil {
		return nil, "", "", fmt.Errorf("list metrics clusters in %s: %w", tenant.Namespace, err)
	}
	cluster, reason, message := pickCluster(tenant, clusters.Items)
	return cluster, reason, message, nil
}

// pickCluster is resolveCluster's decision.
func pickCluster(tenant *v1alpha1.Tenant, clusters []v1alpha1.MetricsCluster) (*v1alpha1.MetricsCluster, string, string) {
	if name := tenant.Spec.ClusterName; name != "" {
		for i := range clusters {
			if clusters[i].Name == name {
				return &clusters[i], "", ""
			}
		}
		return nil, v1alpha1.ReasonClusterNotFound, fmt.Sprintf(
			"spec.clusterName names MetricsCluster %s, which does not exist in namespace %s; create it or fix the name", name, tenant.Namespace)
	}
	switch len(clusters) {
	case 1:
		return &clusters[0], "", ""
	case 0:
		return nil, v1alpha1.ReasonClusterNotFound, fmt.Sprintf(
			"there is no MetricsCluster in namespace %s; create one, or move the tenant to the namespace of its cluster", tenant.Namespace)
	default:
		return nil, v1alpha1.ReasonClusterAmbiguous, fmt.Sprintf(
			"namespace %s has %d MetricsClusters; set spec.clusterName to choose one", tenant.Namespace, len(clusters))
	}
}

func (r *TenantReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// SetupWithManager reconciles a Tenant when it, its token Secret, a MetricsCluster of its namespace, or the
// signing keys of one change.
func (r *TenantReconciler) SetupWithManager(mgr ctrl.Manager) error {
	tenantsOfNamespace := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, obj client.Object) []reconcile.Request {
		var tenants v1alpha1.TenantList
		if err := r.Client.List(ctx, &tenants, client.InNamespace(obj.GetNamespace())); err != nil {
			return nil
		}
		requests := make([]reconcile.Request, 0, len(tenants.Items))
		for _, t := range tenants.Items {
			requests = append(requests, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&t)})
		}
		return requests
	})
	signingKeys := predicate.NewPredicateFuncs(func(obj client.Object) bool {
		_, ok := obj.GetLabels()[signingKeysLabel]
		return ok
	})
	return ctrl.NewControllerManagedBy(mgr).
		For(&v1alpha1.Tenant{}).
		Owns(&corev1.Secret{}).
		Watches(&v1alpha1.MetricsCluster{}, tenantsOfNamespace).
		Watches(&corev1.Secret{}, tenantsOfNamespace, builder.WithPredicates(signingKeys)).
		Complete(r)
}
