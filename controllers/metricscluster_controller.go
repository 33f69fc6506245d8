package controllers

import (
	"context"
	"errors"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/apply"
	"github.com/opstrace/opstrace/internal/manifests"
	"github.com/opstrace/opstrace/internal/storageprobe"
)

// MetricsClusterReconciler turns a MetricsCluster and its Tenants into a running, secured Cortex: gather and
// check inputs, keep keys and certificates, build every object with the pure builders of internal/manifests,
// apply them, then report what the workloads say.
type MetricsClusterReconciler struct {
	Client client.Client
	Scheme *runtime.Scheme
	// RESTMapper tells whether the prometheus-operator and cert-manager CRDs are installed.
	RESTMapper meta.RESTMapper
	// GatewayImage is the image of opstrace-gateway deployed for every cluster.
	GatewayImage string
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Ring reads the ingester ring for the rollout of ingesters. When nil the ring check is disabled: every
	// Ready ingester pod counts as ACTIVE in the ring.
	Ring RingReader
	// StorageProbe checks the bucket with the credentials Secret (storageprobe.New()); nil probes nothing.
	StorageProbe storageprobe.Prober
}

var (
	serviceMonitorKind = schema.GroupVersionKind{Group: "monitoring.coreos.com", Version: "v1", Kind: "ServiceMonitor"}
	certificateKind    = schema.GroupVersionKind{Group: "cert-manager.io", Version: "v1", Kind: "Certificate"}
)

// +kubebuilder:rbac:groups=opstrace.io,resources=metricsclusters,verbs=get;list;watch
// +kubebuilder:rbac:groups=opstrace.io,resources=metricsclusters/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=configmaps;services;serviceaccounts,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch;delete
// +kubebuilder:rbac:groups=apps,resources=deployments;statefulsets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=roles;rolebindings,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch
// +kubebuilder:rbac:groups=monitoring.coreos.com,resources=servicemonitors;prometheusrules,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=cert-manager.io,resources=certificates,verbs=get;list;watch;create;update;patch;delete

// Reconcile makes the cluster's objects match its spec and its Tenants, and reports status.
func (r *MetricsClusterReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var cluster v1alpha1.MetricsCluster
	if err := r.Client.Get(ctx, req.NamespacedName, &cluster); err != nil {
		// Deleted: every object it made has it as owner, so the garbage collector removes them.
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	original := cluster.DeepCopy()
	facts, result, err := r.reconcileObjects(ctx, &cluster)
	var degraded *DegradedError
	switch {
	case errors.As(err, &degraded):
		facts.degraded = degraded
	case err != nil:
		return ctrl.Result{}, err
	}
	setClusterStatus(&cluster, facts)
	if !equality.Semantic.DeepEqual(original.Status, cluster.Status) {
		if err := r.Client.Status().Patch(ctx, &cluster, client.MergeFrom(original)); err != nil {
			return ctrl.Result{}, fmt.Errorf("update status of metrics cluster %s: %w", cluster.Name, err)
		}
	}
	return result, nil
}

// reconcileObjects runs the phases in order. A *DegradedError stops it where the user has to act.
func (r *MetricsClusterReconciler) reconcileObjects(ctx context.Context, cluster *v1alpha1.MetricsCluster) (clusterFacts, ctrl.Result, error) {
	facts := clusterFacts{version: manifests.DefaultCortexVersion}
	if cluster.Spec.Version != "" {
		facts.version = cluster.Spec.Version
	}
	if err := r.checkCredentials(ctx, cluster); err != nil {
		return facts, ctrl.Result{RequeueAfter: storageRecheck(err)}, err
	}
	tenants, err := r.tenants(ctx, cluster)
	if err != nil {
		return facts, ctrl.Result{}, err
	}
	keys, err := r.ensureSigningKeys(ctx, cluster)
	if err != nil {
		return facts, ctrl.Result{}, err
	}
	certRecheck, componentTLS, err := r.reconcileCertificates(ctx, cluster)
	if err != nil {
		return facts, ctrl.Result{}, err
	}

	facts.monitoringAvailable = r.kindExists(serviceMonitorKind)
	objects, err := r.desiredObjects(cluster, keys, tenants, facts.monitoringAvailable, componentTLS)
	if err != nil {
		return facts, ctrl.Result{}, err
	}

	// Roll changes of the Cortex and Loki pod templates out in the planner's order: a workload its rollout
	// has not reached keeps its live template, whatever else of it is applied.
	now := r.now()
	rollouts, err := r.planRollouts(ctx, cluster, objects, facts.version, now)
	if err != nil {
		return facts, ctrl.Result{}, err
	}
	applier := apply.Applier{Client: r.Client, Scheme: r.Scheme}
	for _, obj := range objects {
		if _, err := applier.Apply(ctx, cluster, obj); err != nil {
			return facts, ctrl.Result{}, err
		}
	}
	if err := r.removeLoki(ctx, cluster, facts.monitoringAvailable); err != nil {
		return facts, ctrl.Result{}, err
	}
	if err := r.reconcileSystemToken(ctx, cluster, keys); err != nil {
		return facts, ctrl.Result{}, err
	}

	facts.workloads, err = r.observeWorkloads(ctx, cluster)
	if err != nil {
		return facts, ctrl.Result{}, err
	}
	facts.endpoint = gatewayEndpoint(cluster)
	// A *DegradedError here is a rollout waiting for a person; the other rollout has moved on.
	requeue, err := r.executeRollouts(ctx, cluster, rollouts, now, &facts)
	var stopped *DegradedError
	if err != nil && !errors.As(err, &stopped) {
		return facts, ctrl.Result{}, err
	}
	result := ctrl.Result{RequeueAfter: certRecheck}
	if requeue > 0 && (result.RequeueAfter == 0 || requeue < result.RequeueAfter) {
		result.RequeueAfter = requeue
	}
	return facts, result, err
}

// desiredObjects is everything built from the spec and the tenants: the workloads and their configuration,
// and the gateway's key set and tenant list.
func (r *MetricsClusterReconciler) desiredObjects(cluster *v1alpha1.MetricsCluster, keys signingKeys, tenants []v1alpha1.Tenant, monitoring bool, componentTLS manifests.ComponentTLS) ([]client.Object, error) {
	opts := manifests.NewBuildOptions(cluster, r.GatewayImage, monitoring)
	opts.TLS = &componentTLS
	limits := make(map[string]v1alpha1.TenantLimits, len(tenants)+1)
	limits[v1alpha1.SystemTenant] = v1alpha1.TenantLimits{}
	for _, t := range tenants {
		limits[t.Name] = t.Spec.Limits
	}
	overrides, err := manifests.RuntimeOverrides(cluster.Spec.DefaultTenantLimits, limits)
	if err != nil {
		return nil, err
	}
	opts.RuntimeOverrides = overrides
	if err := setLokiOverrides(&opts, cluster.Spec.DefaultTenantLimits, limits); err != nil {
		return nil, err
	}
	objects, err := manifests.BuildAll(opts)
	if err != nil {
		return nil, &DegradedError{Reason: v1alpha1.ReasonApplyFailed, Message: err.Error()}
	}
	auth, err := gatewayAuthSecret(cluster, keys.all, tenants)
	if err != nil {
		return nil, err
	}
	return append(objects, auth), nil
}

// checkCredentials refuses to go on while the storage credentials Secret is missing or lacks its keys: Cortex
// would crash-loop with an error only its logs show.
func (r *MetricsClusterReconciler) checkCredentials(ctx context.Context, cluster *v1alpha1.MetricsCluster) error {
	name, keys := credentialsSecret(cluster.Spec.Storage)
	if name == "" {
		return nil
	}
	var secret corev1.Secret
	err := r.Client.Get(ctx, client.ObjectKey{Namespace: cluster.Namespace, Name: name}, &secret)
	if apierrors.IsNotFound(err) {
		return &DegradedError{Reason: v1alpha1.ReasonCredentialsSecretMissing, Message: fmt.Sprintf(
			"spec.storage.%s.credentialsSecret names Secret %s, which does not exist in namespace %s; create it with the keys %v",
			cluster.Spec.Storage.Type, name, cluster.Namespace, keys)}
	} else if err != nil {
		return fmt.Errorf("get credentials secret %s: %w", name, err)
	}
	for _, key := range keys {
		if len(secret.Data[key]) == 0 {
			return &DegradedError{Reason: v1alpha1.ReasonCredentialsSecretInvalid, Message: fmt.Sprintf(
				"Secret %s lacks the key %s, which %s storage needs; add it", name, key, cluster.Spec.Storage.Type)}
		}
	}
	return r.checkStorage(ctx, cluster, name, secret.Data)
}

// credentialsSecret is the name of the storage credentials Secret and the keys it must hold.
func credentialsSecret(storage v1alpha1.StorageSpec) (string, []string) {
	switch {
	case storage.S3 != nil && storage.S3.CredentialsSecret != nil:
		return storage.S3.CredentialsSecret.Name, []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
	case storage.GCS != nil && storage.GCS.CredentialsSecret != nil:
		return storage.GCS.CredentialsSecret.Name, []string{"service-account.json"}
	}
	return "", nil
}

func (r *MetricsClusterReconciler) tenants(ctx context.Context, cluster *v1alpha1.MetricsCluster) ([]v1alpha1.Tenant, error) {
	var tenants v1alpha1.TenantList
	if err := r.Client.List(ctx, &tenants, client.InNamespace(cluster.Namespace)); err != nil {
		return nil, fmt.Errorf("list tenants: %w", err)
	}
	var clusters v1alpha1.MetricsClusterList
	if err := r.Client.List(ctx, &clusters, client.InNamespace(cluster.Namespace)); err != nil {
		return nil, fmt.Errorf("list metrics clusters: %w", err)
	}
	return tenantsOf(cluster, tenants.Items, clusters.Items), nil
}

// ensureSigningKeys creates the cluster's signing key once and reads the key set.
func (r *MetricsClusterReconciler) ensureSigningKeys(ctx context.Context, cluster *v1alpha1.MetricsCluster) (signingKeys, error) {
	var secret corev1.Secret
	key := client.ObjectKey{Namespace: cluster.Namespace, Name: manifests.SigningKeysSecretName(cluster.Name)}
	err := r.Client.Get(ctx, key, &secret)
	if apierrors.IsNotFound(err) {
		fresh, err := newSigningKeysSecret(cluster)
		if err != nil {
			return signingKeys{}, err
		}
		if err := ctrl.SetControllerReference(cluster, fresh, r.Scheme); err != nil {
			return signingKeys{}, err
		}
		// Create, never apply: a second controller racing here must fail rather than replace the key.
		if err := r.Client.Create(ctx, fresh); err != nil {
			return signingKeys{}, fmt.Errorf("create signing keys: %w", err)
		}
		secret = *fresh
	} else if err != nil {
		return signingKeys{}, fmt.Errorf("get signing keys: %w", err)
	}
	keys, err := parseSigningKeys(&secret)
	if err != nil {
		return signingKeys{}, &DegradedError{Reason: v1alpha1.ReasonApplyFailed, Message: err.Error()}
	}
	return keys, nil
}

// reconcileSystemToken keeps the token of the system tenant, the distribution's own telemetry and canary.
func (r *MetricsClusterReconciler) reconcileSystemToken(ctx context.Context, cluster *v1alpha1.MetricsCluster, keys signingKeys) error {
	var existing corev1.Secret
	name := manifests.TenantTokenSecretName(v1alpha1.SystemTenant)
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: cluster.Namespace, Name: name}, &existing); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("get system token: %w", err)
	}
	audience := manifests.TokenAudience(cluster.Namespace, cluster.Name)
	const lifetime = 365 * 24 * time.Hour
	issue, _, _ := tokenDecision(existing.Data[manifests.TenantTokenKey], keys, audience, nil, lifetime, r.now())
	if !issue {
		return nil
	}
	token, _, err := keys.current.Issue(v1alpha1.SystemTenant, audience, r.now(), lifetime)
	if err != nil {
		return err
	}
	applier := apply.Applier{Client: r.Client, Scheme: r.Scheme}
	_, err = applier.Apply(ctx, cluster, tokenSecret(cluster.Namespace, v1alpha1.SystemTenant, token))
	return err
}

func (r *MetricsClusterReconciler) kindExists(gvk schema.GroupVersionKind) bool {
	_, err := r.RESTMapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	return err == nil
}

func (r *MetricsClusterReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// gatewayEndpoint is the URL clients use: the configured hostname, else the Service's cluster DNS name.
func gatewayEndpoint(cluster *v1alpha1.MetricsCluster) string {
	if host := cluster.Spec.Gateway.Hostname; host != "" {
		return "https://" + host
	}
	return fmt.Sprintf("https://%s.%s.svc", manifests.ComponentName(cluster.Name, manifests.ComponentGateway), cluster.Namespace)
}

// DegradedError is a problem the user must fix; it becomes the Degraded condition instead of a retry loop.
type DegradedError struct {
	Reason, Message string
}

func (e *DegradedError) Error() string { return e.Message }

// SetupWithManager reconciles a MetricsCluster when it, anything it owns, a Tenant of its namespace, or a
// Secret of its namespace (its storage credentials may be that Secret) changes.
func (r *MetricsClusterReconciler) SetupWithManager(mgr ctrl.Manager) error {
	clustersOfNamespace := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, obj client.Object) []reconcile.Request {
		var clusters v1alpha1.MetricsClusterList
		if err := r.Client.List(ctx, &clusters, client.InNamespace(obj.GetNamespace())); err != nil {
			return nil
		}
		requests := make([]reconcile.Request, 0, len(clusters.Items))
		for _, c := range clusters.Items {
			requests = append(requests, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&c)})
		}
		return requests
	})
	b := ctrl.NewControllerManagedBy(mgr).
		For(&v1alpha1.MetricsCluster{}).
		Owns(&corev1.ConfigMap{}).
		Owns(&corev1.Service{}).
		Owns(&corev1.ServiceAccount{}).
		Owns(&appsv1.Deployment{}).
		Owns(&appsv1.StatefulSet{}).
		Owns(&policyv1.PodDisruptionBudget{}).
		Owns(&networkingv1.NetworkPolicy{}).
		Owns(&rbacv1.Role{}).
		Owns(&rbacv1.RoleBinding{}).
		Watches(&v1alpha1.Tenant{}, clustersOfNamespace).
		Watches(&corev1.Secret{}, clustersOfNamespace)
	return RolloutPodEvents(b).Complete(r)
}
