package controllers

import (
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/gateway"
	"github.com/opstrace/opstrace/internal/manifests"
	"github.com/opstrace/opstrace/internal/tokens"
)

// gatewayAuthSecret is what the gateway watches: the key set that verifies tokens and every tenant it admits,
// the system tenant included, with its suspension, revocations and ingestion limits (samples per second for
// metrics, bytes per second for logs, resolved as Cortex and Loki resolve them).
func gatewayAuthSecret(cluster *v1alpha1.MetricsCluster, keys tokens.KeySet, tenants []v1alpha1.Tenant) (*corev1.Secret, error) {
	defaults := cluster.Spec.DefaultTenantLimits
	list := gateway.TenantList{Tenants: map[string]gateway.TenantPolicy{}}
	policy := func(limits v1alpha1.TenantLimits) gateway.TenantPolicy {
		rate, burst := manifests.IngestionLimits(defaults, limits)
		logRate, logBurst := manifests.LogIngestionLimits(defaults, limits)
		return gateway.TenantPolicy{IngestionRate: rate, IngestionBurst: burst, LogIngestionRate: logRate, LogIngestionBurst: logBurst}
	}
	list.Tenants[v1alpha1.SystemTenant] = policy(v1alpha1.TenantLimits{})
	for _, t := range tenants {
		p := policy(t.Spec.Limits)
		p.Suspended, p.RevokedIDs = t.Spec.Suspended, t.Spec.Tokens.RevokedIDs
		list.Tenants[t.Name] = p
	}
	tenantsJSON, err := json.Marshal(list) // map keys are sorted: the same tenants give the same bytes
	if err != nil {
		return nil, fmt.Errorf("encode tenant list: %w", err)
	}
	keysJSON, err := keys.MarshalJWKS()
	if err != nil {
		return nil, err
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: manifests.GatewayAuthSecretName(cluster.Name), Namespace: cluster.Namespace},
		Type:       corev1.SecretTypeOpaque,
		Data: map[string][]byte{
			manifests.GatewayAuthKeysKey:    keysJSON,
			manifests.GatewayAuthTenantsKey: tenantsJSON,
		},
	}, nil
}

// tenantsOf are the tenants of a namespace that resolve to cluster.
func tenantsOf(cluster *v1alpha1.MetricsCluster, tenants []v1alpha1.Tenant, clusters []v1alpha1.MetricsCluster) []v1alpha1.Tenant {
	var members []v1alpha1.Tenant
	for i := range tenants {
		if picked, _, _ := pickCluster(&tenants[i], clusters); picked != nil && picked.Name == cluster.Name {
			members = append(members, tenants[i])
		}
	}
	return members
}
