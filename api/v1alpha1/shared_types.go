package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
)

// TenantLimits are the per-tenant limits the gateway and Cortex enforce. A MetricsCluster sets the defaults
// for its tenants; a Tenant overrides them field by field. An unset field inherits.
//
// +kubebuilder:validation:XValidation:rule="!has(self.ingestionRate) || !has(self.ingestionBurst) || self.ingestionBurst >= self.ingestionRate",message="ingestionBurst must be at least ingestionRate, so that one second of traffic at the allowed rate fits in a burst",fieldPath=".ingestionBurst"
type TenantLimits struct {
	// IngestionRate is the sustained number of samples per second the tenant may write.
	// +kubebuilder:validation:Minimum=1
	// +optional
	IngestionRate *int64 `json:"ingestionRate,omitempty"`

	// IngestionBurst is the number of samples the tenant may write at once above the sustained rate.
	// +kubebuilder:validation:Minimum=1
	// +optional
	IngestionBurst *int64 `json:"ingestionBurst,omitempty"`

	// MaxActiveSeries caps the series the tenant may keep in the ingesters at once; 0 means no cap.
	// +kubebuilder:validation:Minimum=0
	// +optional
	MaxActiveSeries *int64 `json:"maxActiveSeries,omitempty"`

	// MetricRetentionDays is how long the tenant's samples are kept. It cannot exceed what the cluster's
	// object storage keeps (spec.retention.metricsDays of the MetricsCluster).
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=3650
	// +optional
	MetricRetentionDays *int32 `json:"metricRetentionDays,omitempty"`
}

// ComponentSpec overrides the size preset for one component.
type ComponentSpec struct {
	// Replicas of the component.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// Resources of the component's container; replaces the preset's requests and limits when set.
	// +optional
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`
}
