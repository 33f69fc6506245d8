package controllers

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/manifests"
)

// setLokiOverrides renders Loki's runtime overrides from the tenants' limits into opts, when logs are on.
// Loki re-reads them itself: a new limit changes the ConfigMap, never a pod template.
func setLokiOverrides(opts *manifests.BuildOptions, defaults v1alpha1.TenantLimits, limits map[string]v1alpha1.TenantLimits) error {
	if opts.Loki == nil {
		return nil
	}
	overrides, err := manifests.LokiRuntimeOverrides(defaults, limits)
	if err != nil {
		return err
	}
	opts.Loki.RuntimeOverrides = overrides
	return nil
}

// removeLoki deletes the Loki objects of a cluster whose logs are off: the server-side apply of the desired
// objects never removes anything. Only objects the cluster controls go; the StatefulSets' volume claims stay,
// like the logs in object storage, so turning logs back on finds them. With nothing to remove it writes
// nothing.
func (r *MetricsClusterReconciler) removeLoki(ctx context.Context, cluster *v1alpha1.MetricsCluster, monitoring bool) error {
	if cluster.Spec.Logs.IsEnabled() {
		return nil
	}
	lists := []client.ObjectList{
		&appsv1.StatefulSetList{}, &appsv1.DeploymentList{}, &corev1.ServiceList{}, &corev1.ConfigMapList{},
		&corev1.ServiceAccountList{}, &policyv1.PodDisruptionBudgetList{}, &networkingv1.NetworkPolicyList{},
	}
	if monitoring {
		monitors := &unstructured.UnstructuredList{}
		monitors.SetGroupVersionKind(serviceMonitorKind.GroupVersion().WithKind(serviceMonitorKind.Kind + "List"))
		lists = append(lists, monitors)
	}
	selector := client.MatchingLabels{manifests.LabelName: manifests.AppLoki, manifests.LabelInstance: cluster.Name}
	for _, list := range lists {
		if err := r.Client.List(ctx, list, client.InNamespace(cluster.Namespace), selector); err != nil {
			return fmt.Errorf("list Loki objects to remove: %w", err)
		}
		items, err := meta.ExtractList(list)
		if err != nil {
			return fmt.Errorf("list Loki objects to remove: %w", err)
		}
		for _, item := range items {
			obj, ok := item.(client.Object)
			if !ok || !metav1.IsControlledBy(obj, cluster) {
				continue
			}
			if err := r.Client.Delete(ctx, obj, client.PropagationPolicy(metav1.DeletePropagationBackground)); client.IgnoreNotFound(err) != nil {
				return fmt.Errorf("remove %T %s of the disabled logs: %w", obj, obj.GetName(), err)
			}
		}
	}
	return nil
}
