package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
)

// TenantLimits are the per-tenant limits the gateway, Cortex and Loki enforce. A MetricsCluster sets the defaults
// for its tenants; a Tenant overrides them field by field. An unset field inherits.
//
// +kubebuilder:validation:XValidation:rule="!has(self.ingestionRate) || !has(self.ingestionBurst) || self.ingestionBurst >= self.ingestionRate",message="ingestionBurst must be at least ingestionRate, so that one second of traffic at the allowed rate fits in a burst",fieldPath=".ingestionBurst"
// +kubebuilder:validation:XValidation:rule="!has(self.logIngestionRate) || !has(self.logIngestionBurst) || self.logIngestionBurst >= self.logIngestionRate",message="logIngestionBurst must be at least logIngestionRate (both in bytes), so that one second of logs at the allowed rate fits in a burst",fieldPath=".logIngestionBurst"
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

	// LogIngestionRate is the sustained rate of log data the tenant may push, in bytes per second of
	// uncompressed log lines and labels (4194304 is 4 MiB/s). The gateway enforces it on the push body and Loki
	// on what it stores (Loki's ingestion_rate_mb, in MiB).
	// +kubebuilder:validation:Minimum=1
	// +optional
	LogIngestionRate *int64 `json:"logIngestionRate,omitempty"`

	// LogIngestionBurst is the most log data the tenant may push at once, in bytes; no single push may be
	// larger (Loki's ingestion_burst_size_mb, in MiB).
	// +kubebuilder:validation:Minimum=1
	// +optional
	LogIngestionBurst *int64 `json:"logIngestionBurst,omitempty"`

	// LogRetentionDays is how long the tenant's log lines are kept; spec.retention.logsDays of the
	// MetricsCluster when unset.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=3650
	// +optional
	LogRetentionDays *int32 `json:"logRetentionDays,omitempty"`
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
