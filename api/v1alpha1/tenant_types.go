package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SystemTenant is the tenant of the distribution's own telemetry. No Tenant object may take its name.
const SystemTenant = "system"

// TenantSpec is the desired state of a Tenant.
//
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.clusterName) || has(self.clusterName)",message="clusterName cannot be removed once set: the tenant's data stays in the cluster it was written to",fieldPath=".clusterName"
type TenantSpec struct {
	// ClusterName is the MetricsCluster in this namespace the tenant belongs to. When unset, the tenant
	// belongs to the only MetricsCluster in the namespace. It cannot be changed once set.
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="clusterName cannot be changed: the tenant's data stays in the cluster it was written to; create a new Tenant in the other cluster instead"
	// +kubebuilder:validation:MaxLength=30
	// +optional
	ClusterName string `json:"clusterName,omitempty"`

	// DisplayName is a human-friendly name for dashboards and the CLI.
	// +kubebuilder:validation:MaxLength=256
	// +optional
	DisplayName string `json:"displayName,omitempty"`

	// Limits override the cluster's defaultTenantLimits field by field.
	// +optional
	Limits TenantLimits `json:"limits,omitempty"`

	// Suspended tenants are refused by the gateway (403) until unsuspended; their data is kept.
	// +optional
	Suspended bool `json:"suspended,omitempty"`

	// Tokens configures the bearer tokens that authenticate the tenant at the gateway.
	// +kubebuilder:default={}
	// +optional
	Tokens TokenSpec `json:"tokens,omitempty"`
}

// TokenSpec configures a tenant's bearer tokens.
type TokenSpec struct {
	// LifetimeDays is how long a token issued for this tenant stays valid.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=3650
	// +kubebuilder:default=365
	// +optional
	LifetimeDays int32 `json:"lifetimeDays,omitempty"`

	// RevokedIDs are token IDs (the jti claim) that the gateway refuses from now on, before they expire.
	// +kubebuilder:validation:MaxItems=1000
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=128
	// +listType=set
	// +optional
	RevokedIDs []string `json:"revokedIDs,omitempty"`
}

// TenantStatus is the observed state of a Tenant.
type TenantStatus struct {
	// ObservedGeneration is the generation of the spec the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// ClusterName is the MetricsCluster the tenant was resolved to.
	// +optional
	ClusterName string `json:"clusterName,omitempty"`

	// TokenSecretName is the Secret in this namespace that holds the tenant's current token (key "token").
	// +optional
	TokenSecretName string `json:"tokenSecretName,omitempty"`

	// RemoteWriteURL is where Prometheus sends this tenant's samples, with the token as bearer token.
	// +optional
	RemoteWriteURL string `json:"remoteWriteURL,omitempty"`

	// QueryURL is the Prometheus HTTP API of this tenant: the URL of a Grafana Prometheus data source.
	// +optional
	QueryURL string `json:"queryURL,omitempty"`

	// LogsPushURL is where log shippers (Promtail, Grafana Alloy, Fluent Bit) push this tenant's logs, with
	// the token as bearer token. Empty when the cluster runs no Loki.
	// +optional
	LogsPushURL string `json:"logsPushURL,omitempty"`

	// LogsURL is the Loki HTTP API of this tenant (LogQL queries and tail): the URL of a Grafana Loki data
	// source. Empty when the cluster runs no Loki.
	// +optional
	LogsURL string `json:"logsURL,omitempty"`

	// Conditions: Ready and Degraded.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Tenant is one isolated user of a MetricsCluster: its own series, limits and tokens. The tenant ID is the
// object's name.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:categories=opstrace
// +kubebuilder:printcolumn:name="Cluster",type=string,JSONPath=`.status.clusterName`
// +kubebuilder:printcolumn:name="Suspended",type=boolean,JSONPath=`.spec.suspended`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="metadata.name is the tenant ID: use lowercase letters, digits and '-', starting and ending with a letter or digit (no dots)",fieldPath=".metadata"
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 63",message="metadata.name is the tenant ID and must be at most 63 characters",fieldPath=".metadata"
// +kubebuilder:validation:XValidation:rule="self.metadata.name != 'system'",message="metadata.name 'system' is reserved for the distribution's own telemetry; choose another tenant name",fieldPath=".metadata"
type Tenant struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +kubebuilder:default={}
	Spec   TenantSpec   `json:"spec,omitempty"`
	Status TenantStatus `json:"status,omitempty"`
}

// TenantList is a list of Tenants.
//
// +kubebuilder:object:root=true
type TenantList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Tenant `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Tenant{}, &TenantList{})
}
