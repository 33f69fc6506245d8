package v1alpha1

// LogsSpec runs Loki next to Cortex: every tenant of the cluster gets logs as well as metrics, behind the same
// gateway and token. It is part of the MetricsCluster rather than a kind of its own because the two share
// everything a user decides on (tenants, tokens, limits, gateway, certificates, object storage, topology and
// size); a separate LogsCluster would repeat all of it and have to be kept in step by hand. Logs are on by
// default: set enabled to false for a metrics-only cluster.
//
// Loki uses the same backend as spec.storage (filesystem, S3 or GCS) and the same credentials, with its own
// place in it: its own volume for filesystem; for s3 and gcs the bucket storage.bucket, or, when that is
// unset, the metrics bucket under the key prefix "_logs/" (no Tenant can be named so, so the prefix never
// mixes with a tenant's metric blocks). How long logs are kept is spec.retention.logsDays, next to
// metricsDays, and per tenant the Tenant's limits.logRetentionDays.
type LogsSpec struct {
	// Enabled runs Loki for this cluster. Turning it off removes the Loki workloads; logs already written stay
	// in object storage (and on the volume claims for filesystem).
	// +kubebuilder:default=true
	// +optional
	Enabled *bool `json:"enabled,omitempty"`

	// Version is the Loki release to run, such as v3.7.8. Empty means the version this controller pins; it
	// moves forward when the controller is upgraded.
	// +kubebuilder:validation:XValidation:rule="self.matches('^v[0-9]+\\\\.[0-9]+\\\\.[0-9]+$')",message="logs.version must be a Loki release such as v3.7.8, or empty for the controller's default"
	// +kubebuilder:validation:MaxLength=32
	// +optional
	Version string `json:"version,omitempty"`

	// Storage is where Loki keeps chunks and index within spec.storage's backend. It cannot be changed after
	// creation.
	// +kubebuilder:default={}
	// +optional
	Storage LogsStorageSpec `json:"storage,omitempty"`
}

// LogsStorageSpec places Loki's chunks and index in the backend of spec.storage.
//
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="logs.storage cannot be changed after creation: the logs already stored would be left behind; create a new MetricsCluster to keep logs elsewhere"
type LogsStorageSpec struct {
	// Bucket for log chunks and index, for storage.type s3 or gcs, in the same account or project and with
	// the same credentials as the metrics bucket. When unset, logs go into the metrics bucket under the key
	// prefix "_logs/". A bucket of its own is the better choice for production: its lifecycle and access can
	// be set apart from the metrics.
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$')",message="logs.storage.bucket must be 3 to 63 lowercase letters, digits, '.', '_' (GCS only) or '-', starting and ending with a letter or digit"
	// +kubebuilder:validation:MaxLength=63
	// +optional
	Bucket string `json:"bucket,omitempty"`
}

// IsEnabled says whether Loki runs: enabled unset (an object the API server has not defaulted) means true.
func (l LogsSpec) IsEnabled() bool {
	return l.Enabled == nil || *l.Enabled
}
