package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Topology is how the Cortex processes of a MetricsCluster are laid out.
// +kubebuilder:validation:Enum=single;microservices
type Topology string

const (
	// TopologySingle runs one Cortex process with target=all: for small and local installs.
	TopologySingle Topology = "single"
	// TopologyMicroservices runs distributor, ingester, querier, query-frontend, store-gateway and compactor
	// as separate workloads that scale independently.
	TopologyMicroservices Topology = "microservices"
)

// SizePreset picks replicas and resources for every component at once.
// +kubebuilder:validation:Enum=demo;small;medium
type SizePreset string

const (
	// SizeDemo is the smallest footprint, with replication factor 1: data survives no node loss.
	SizeDemo SizePreset = "demo"
	// SizeSmall replicates every sample to three ingesters.
	SizeSmall SizePreset = "small"
	// SizeMedium is small with more replicas and resources.
	SizeMedium SizePreset = "medium"
)

// StorageType is the object storage backend for metric blocks (and, once enabled, log chunks).
// +kubebuilder:validation:Enum=filesystem;s3;gcs
type StorageType string

const (
	// StorageFilesystem keeps blocks on a persistent volume of the single Cortex process.
	StorageFilesystem StorageType = "filesystem"
	// StorageS3 keeps blocks in an S3 (or S3-compatible, such as MinIO) bucket.
	StorageS3 StorageType = "s3"
	// StorageGCS keeps blocks in a Google Cloud Storage bucket.
	StorageGCS StorageType = "gcs"
)

// MetricsClusterSpec is the desired state of a MetricsCluster.
//
// +kubebuilder:validation:XValidation:rule="self.storage.type != 'filesystem' || self.topology == 'single'",message="storage.type filesystem works only with topology single: the components of topology microservices share blocks through object storage; use s3 or gcs",fieldPath=".storage.type"
// +kubebuilder:validation:XValidation:rule="self.topology != 'single' || !has(self.components) || !(has(self.components.distributor) || has(self.components.ingester) || has(self.components.querier) || has(self.components.queryFrontend) || has(self.components.storeGateway) || has(self.components.compactor))",message="components: topology single runs one Cortex process, so only components.all and components.gateway apply; set topology microservices to size distributor, ingester, querier, queryFrontend, storeGateway and compactor separately",fieldPath=".components"
// +kubebuilder:validation:XValidation:rule="self.topology != 'microservices' || !has(self.components) || !has(self.components.all)",message="components.all applies only to topology single; with topology microservices size each component (distributor, ingester, querier, queryFrontend, storeGateway, compactor) instead",fieldPath=".components.all"
// +kubebuilder:validation:XValidation:rule="self.topology != 'microservices' || self.size == 'demo' || !has(self.components) || !has(self.components.ingester) || !has(self.components.ingester.replicas) || self.components.ingester.replicas >= 3",message="components.ingester.replicas must be at least 3 for size small and medium: every sample is written to 3 ingesters",fieldPath=".components.ingester.replicas"
// +kubebuilder:validation:XValidation:rule="!has(self.logs) || !has(self.logs.storage) || !has(self.logs.storage.bucket) || self.storage.type != 'filesystem'",message="logs.storage.bucket applies only to storage.type s3 or gcs: with filesystem storage Loki keeps its logs on its own volume; remove logs.storage.bucket",fieldPath=".logs.storage.bucket"
// +kubebuilder:validation:XValidation:rule="!has(self.logs) || !has(self.logs.storage) || !has(self.logs.storage.bucket) || !(self.storage.type == 's3' && has(self.storage.s3) && self.storage.s3.bucket == self.logs.storage.bucket) && !(self.storage.type == 'gcs' && has(self.storage.gcs) && self.storage.gcs.bucket == self.logs.storage.bucket)",message="logs.storage.bucket must differ from the metrics bucket: Loki and Cortex would both write tenant directories at its root; name another bucket, or leave logs.storage.bucket unset to keep logs under the _logs/ prefix of the metrics bucket",fieldPath=".logs.storage.bucket"
// +kubebuilder:validation:XValidation:rule="!has(self.logs) || !has(self.logs.storage) || !has(self.logs.storage.bucket) || self.storage.type != 's3' || !self.logs.storage.bucket.contains('_')",message="logs.storage.bucket must not contain '_' for storage.type s3: S3 bucket names are lowercase letters, digits, '.' and '-'",fieldPath=".logs.storage.bucket"
type MetricsClusterSpec struct {
	// Version is the Cortex release to run, such as v1.21.1. Empty means the version this controller pins;
	// it moves forward when the controller is upgraded.
	// +kubebuilder:validation:XValidation:rule="self.matches('^v[0-9]+\\\\.[0-9]+\\\\.[0-9]+$')",message="version must be a Cortex release such as v1.21.1, or empty for the controller's default"
	// +kubebuilder:validation:MaxLength=32
	// +optional
	Version string `json:"version,omitempty"`

	// Topology is single (one Cortex process, target=all) or microservices (one workload per component).
	// +kubebuilder:default=single
	// +optional
	Topology Topology `json:"topology,omitempty"`

	// Size picks replicas and resources for every component: demo, small or medium.
	// +kubebuilder:default=demo
	// +optional
	Size SizePreset `json:"size,omitempty"`

	// Components overrides the size preset for individual components.
	// +optional
	Components *ComponentOverrides `json:"components,omitempty"`

	// Storage is where metric blocks (and, with spec.logs, log chunks and index) are kept. It cannot be changed
	// after creation.
	Storage StorageSpec `json:"storage"`

	// Retention is how long metrics and logs are kept.
	// +kubebuilder:default={}
	// +optional
	Retention RetentionSpec `json:"retention,omitempty"`

	// TLS configures the certificates of the gateway and of the traffic between components.
	// +optional
	TLS TLSSpec `json:"tls,omitempty"`

	// Gateway configures how the cluster's one HTTPS endpoint is exposed.
	// +kubebuilder:default={}
	// +optional
	Gateway GatewaySpec `json:"gateway,omitempty"`

	// DefaultTenantLimits apply to every tenant of this cluster that does not override them.
	// +optional
	DefaultTenantLimits TenantLimits `json:"defaultTenantLimits,omitempty"`

	// Logs runs Loki next to Cortex, for every tenant, behind the same gateway; on unless enabled is false.
	// +kubebuilder:default={}
	// +optional
	Logs LogsSpec `json:"logs,omitempty"`

	// ServiceAccounts annotates the ServiceAccounts of the pods that read and write object storage, to give
	// them a cloud identity instead of a credentials Secret: an IAM role on EKS (eks.amazonaws.com/role-arn)
	// or a Google service account on GKE (iam.gke.io/gcp-service-account). Cortex and Loki have a
	// ServiceAccount each, so that each identity can be limited to its own bucket.
	// +optional
	ServiceAccounts ServiceAccountsSpec `json:"serviceAccounts,omitempty"`
}

// ServiceAccountsSpec is added to the ServiceAccounts the controller makes for a MetricsCluster.
type ServiceAccountsSpec struct {
	// Cortex is added to the ServiceAccount of every Cortex pod, named <cluster>-cortex.
	// +optional
	Cortex ServiceAccountSettings `json:"cortex,omitempty"`

	// Loki is added to the ServiceAccount of every Loki pod, named <cluster>-loki.
	// +optional
	Loki ServiceAccountSettings `json:"loki,omitempty"`
}

// ServiceAccountSettings are added to one ServiceAccount.
type ServiceAccountSettings struct {
	// Annotations set on the ServiceAccount, such as
	// eks.amazonaws.com/role-arn: arn:aws:iam::111122223333:role/opstrace/prod-cortex. The controller owns
	// them: an annotation removed here is removed from the ServiceAccount. Pods pick up a changed identity
	// when they restart.
	// +kubebuilder:validation:MaxProperties=32
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`
}

// ComponentOverrides sizes individual components, overriding the size preset.
//
// +kubebuilder:validation:XValidation:rule="!has(self.all) || !has(self.all.replicas) || self.all.replicas == 1",message="all.replicas must be 1: topology single runs exactly one Cortex process; set topology microservices to scale out",fieldPath=".all.replicas"
type ComponentOverrides struct {
	// All is the one Cortex process of topology single.
	// +optional
	All *ComponentSpec `json:"all,omitempty"`
	// +optional
	Distributor *ComponentSpec `json:"distributor,omitempty"`
	// +optional
	Ingester *ComponentSpec `json:"ingester,omitempty"`
	// +optional
	Querier *ComponentSpec `json:"querier,omitempty"`
	// +optional
	QueryFrontend *ComponentSpec `json:"queryFrontend,omitempty"`
	// +optional
	StoreGateway *ComponentSpec `json:"storeGateway,omitempty"`
	// +optional
	Compactor *ComponentSpec `json:"compactor,omitempty"`
	// Gateway is the authenticating HTTPS gateway in front of Cortex.
	// +optional
	Gateway *ComponentSpec `json:"gateway,omitempty"`
}

// StorageSpec selects the object storage backend; exactly the settings of the chosen type may be given.
//
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="storage cannot be changed after creation: the metrics already stored would be left behind; create a new MetricsCluster to use other storage"
// +kubebuilder:validation:XValidation:rule="self.type != 's3' || has(self.s3)",message="storage.s3 is required when storage.type is s3: set at least s3.bucket and s3.region (or s3.endpoint for an S3-compatible store)",fieldPath=".s3"
// +kubebuilder:validation:XValidation:rule="self.type != 'gcs' || has(self.gcs)",message="storage.gcs is required when storage.type is gcs: set at least gcs.bucket",fieldPath=".gcs"
// +kubebuilder:validation:XValidation:rule="self.type == 's3' || !has(self.s3)",messageExpression="'storage.s3 does not apply to storage.type ' + self.type + ': remove s3, or set type: s3'",fieldPath=".s3"
// +kubebuilder:validation:XValidation:rule="self.type == 'gcs' || !has(self.gcs)",messageExpression="'storage.gcs does not apply to storage.type ' + self.type + ': remove gcs, or set type: gcs'",fieldPath=".gcs"
// +kubebuilder:validation:XValidation:rule="self.type == 'filesystem' || !has(self.filesystem)",messageExpression="'storage.filesystem does not apply to storage.type ' + self.type + ': remove filesystem, or set type: filesystem'",fieldPath=".filesystem"
type StorageSpec struct {
	// Type is filesystem, s3 or gcs.
	Type StorageType `json:"type"`

	// Filesystem settings, for type filesystem.
	// +optional
	Filesystem *FilesystemStorage `json:"filesystem,omitempty"`

	// S3 settings, for type s3.
	// +optional
	S3 *S3Storage `json:"s3,omitempty"`

	// GCS settings, for type gcs.
	// +optional
	GCS *GCSStorage `json:"gcs,omitempty"`
}

// FilesystemStorage keeps blocks on a persistent volume.
type FilesystemStorage struct {
	// Size of the volume; 10Gi when unset.
	// +optional
	Size *resource.Quantity `json:"size,omitempty"`

	// StorageClassName of the volume; the cluster's default class when unset.
	// +optional
	StorageClassName *string `json:"storageClassName,omitempty"`
}

// S3Storage is an S3 bucket, or a bucket of an S3-compatible store such as MinIO.
//
// +kubebuilder:validation:XValidation:rule="has(self.region) || has(self.endpoint)",message="s3.region is required for AWS S3 (such as us-east-1); for an S3-compatible store set s3.endpoint instead",fieldPath=".region"
// +kubebuilder:validation:XValidation:rule="!has(self.insecure) || !self.insecure || has(self.endpoint)",message="s3.insecure (plain HTTP) needs a custom s3.endpoint such as minio.storage.svc:9000; AWS S3 is always reached over HTTPS",fieldPath=".insecure"
type S3Storage struct {
	// Bucket for metric blocks.
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$')",message="s3.bucket must be 3 to 63 lowercase letters, digits, '.' or '-', starting and ending with a letter or digit"
	// +kubebuilder:validation:MaxLength=63
	Bucket string `json:"bucket"`

	// Region of the bucket, such as us-east-1.
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9-]+$')",message="s3.region must be a region name such as us-east-1"
	// +kubebuilder:validation:MaxLength=32
	// +optional
	Region string `json:"region,omitempty"`

	// Endpoint of an S3-compatible store as host[:port], without a scheme; AWS S3 when unset.
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-zA-Z0-9.-]+(:[0-9]{1,5})?$')",message="s3.endpoint must be host[:port] without a scheme, such as minio.storage.svc:9000; set s3.insecure: true for plain HTTP"
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Endpoint string `json:"endpoint,omitempty"`

	// Insecure talks plain HTTP to the endpoint. Only for a custom endpoint.
	// +optional
	Insecure bool `json:"insecure,omitempty"`

	// CredentialsSecret names a Secret in the cluster's namespace with the keys AWS_ACCESS_KEY_ID and
	// AWS_SECRET_ACCESS_KEY. When unset, the pods' own identity is used (IAM roles for service accounts).
	// +optional
	CredentialsSecret *SecretReference `json:"credentialsSecret,omitempty"`
}

// GCSStorage is a Google Cloud Storage bucket.
//
// +kubebuilder:validation:XValidation:rule="!has(self.insecure) || !self.insecure || has(self.endpoint)",message="gcs.insecure (plain HTTP) needs a custom gcs.endpoint such as an emulator's host:port; Google Cloud Storage is always reached over HTTPS",fieldPath=".insecure"
type GCSStorage struct {
	// Bucket for metric blocks.
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$')",message="gcs.bucket must be 3 to 63 lowercase letters, digits, '.', '_' or '-', starting and ending with a letter or digit"
	// +kubebuilder:validation:MaxLength=63
	Bucket string `json:"bucket"`

	// Endpoint of a GCS-compatible server as host[:port], without a scheme, such as an emulator; Google
	// Cloud Storage when unset.
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-zA-Z0-9.-]+(:[0-9]{1,5})?$')",message="gcs.endpoint must be host[:port] without a scheme, such as fake-gcs.storage.svc:4443; set gcs.insecure: true for plain HTTP"
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Endpoint string `json:"endpoint,omitempty"`

	// Insecure talks plain HTTP to the endpoint. Only for a custom endpoint.
	// +optional
	Insecure bool `json:"insecure,omitempty"`

	// CredentialsSecret names a Secret in the cluster's namespace with a service account key under the key
	// service-account.json. When unset, the pods' own identity is used (GKE workload identity).
	// +optional
	CredentialsSecret *SecretReference `json:"credentialsSecret,omitempty"`
}

// SecretReference names a Secret in the same namespace.
type SecretReference struct {
	// Name of the Secret.
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="credentialsSecret.name must be the name of a Secret: lowercase letters, digits, '-' and '.'"
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// RetentionSpec says how long data is kept.
type RetentionSpec struct {
	// MetricsDays is how long metric samples are kept, in days.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=3650
	// +kubebuilder:default=30
	// +optional
	MetricsDays int32 `json:"metricsDays,omitempty"`

	// LogsDays is how long log lines are kept, in days (Loki's compactor deletes older ones), for tenants
	// without limits.logRetentionDays.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=3650
	// +kubebuilder:default=7
	// +optional
	LogsDays int32 `json:"logsDays,omitempty"`
}

// TLSSpec selects who issues the cluster's certificates.
type TLSSpec struct {
	// IssuerRef is a cert-manager issuer that issues the certificates: the components' and, unless
	// gateway.tls.issuerRef is set, the gateway's. It must sign cluster-internal names (*.svc) and write
	// ca.crt, as a CA issuer does; a public ACME issuer such as Let's Encrypt cannot, so set that one as
	// gateway.tls.issuerRef instead. When unset, the controller runs a built-in certificate authority and
	// renews its certificates itself.
	// +optional
	IssuerRef *IssuerReference `json:"issuerRef,omitempty"`
}

// GatewayTLSSpec selects who issues the gateway's certificate, apart from the components'.
type GatewayTLSSpec struct {
	// IssuerRef is a cert-manager issuer, such as an ACME (Let's Encrypt) ClusterIssuer, that issues the
	// gateway's certificate for gateway.hostname alone: public certificate authorities do not issue for
	// cluster-internal names, so in-cluster clients reach the gateway by that hostname too. The
	// components' certificates stay with spec.tls (the built-in CA, or spec.tls.issuerRef).
	// +optional
	IssuerRef *IssuerReference `json:"issuerRef,omitempty"`
}

// IssuerReference names a cert-manager Issuer or ClusterIssuer.
type IssuerReference struct {
	// Name of the issuer.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// Kind is Issuer (in the cluster's namespace) or ClusterIssuer.
	// +kubebuilder:validation:Enum=Issuer;ClusterIssuer
	// +kubebuilder:default=Issuer
	// +optional
	Kind string `json:"kind,omitempty"`

	// Group of the issuer's API.
	// +kubebuilder:default=cert-manager.io
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Group string `json:"group,omitempty"`
}

// GatewaySpec exposes the gateway, the cluster's one HTTPS endpoint for every tenant.
//
// +kubebuilder:validation:XValidation:rule="!has(self.allowedSourceRanges) || self.serviceType == 'LoadBalancer'",message="gateway.allowedSourceRanges applies only to gateway.serviceType LoadBalancer",fieldPath=".allowedSourceRanges"
// +kubebuilder:validation:XValidation:rule="!has(self.tls) || !has(self.tls.issuerRef) || (has(self.hostname) && size(self.hostname) > 0)",message="gateway.tls.issuerRef issues the gateway's certificate for gateway.hostname only: set gateway.hostname to the name clients use, such as metrics.example.com, or remove gateway.tls.issuerRef",fieldPath=".tls.issuerRef"
type GatewaySpec struct {
	// ServiceType of the gateway's Service: ClusterIP, NodePort or LoadBalancer.
	// +kubebuilder:validation:Enum=ClusterIP;NodePort;LoadBalancer
	// +kubebuilder:default=ClusterIP
	// +optional
	ServiceType corev1.ServiceType `json:"serviceType,omitempty"`

	// Hostname clients use to reach the gateway; the gateway certificate covers it.
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="gateway.hostname must be a lowercase DNS name such as metrics.example.com, without scheme or port"
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Hostname string `json:"hostname,omitempty"`

	// AllowedSourceRanges limits which client networks reach a LoadBalancer gateway, as CIDRs.
	// +kubebuilder:validation:XValidation:rule="self.all(c, isCIDR(c))",message="gateway.allowedSourceRanges entries must be CIDRs such as 203.0.113.0/24"
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=64
	// +listType=set
	// +optional
	AllowedSourceRanges []string `json:"allowedSourceRanges,omitempty"`

	// TLS selects who issues the gateway's certificate; unset, spec.tls does.
	// +optional
	TLS *GatewayTLSSpec `json:"tls,omitempty"`
}

// MetricsClusterStatus is the observed state of a MetricsCluster.
type MetricsClusterStatus struct {
	// ObservedGeneration is the generation of the spec the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Version is the Cortex release every component runs; it changes only when all of them run it.
	// +optional
	Version string `json:"version,omitempty"`

	// LogsVersion is the Loki release every Loki component runs; it changes only when all of them run it.
	// Empty while logs are off.
	// +optional
	LogsVersion string `json:"logsVersion,omitempty"`

	// ControllerVersion is the release of the controller that wrote this status: after a controller upgrade,
	// the sign that the new controller has reconciled the cluster.
	// +optional
	ControllerVersion string `json:"controllerVersion,omitempty"`

	// GatewayEndpoint is the URL clients send metrics and logs to and query: the URL of a Grafana Prometheus
	// or Loki data source.
	// +optional
	GatewayEndpoint string `json:"gatewayEndpoint,omitempty"`

	// Conditions: Ready, Progressing, Degraded and one per component, Loki's included (LokiReady, or
	// LokiDistributorReady, LokiIngesterReady, ... for topology microservices).
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// MetricsCluster is a multi-tenant Cortex metrics store, with Loki for logs, behind an authenticating HTTPS
// gateway.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=mc,categories=opstrace
// +kubebuilder:printcolumn:name="Topology",type=string,JSONPath=`.spec.topology`
// +kubebuilder:printcolumn:name="Version",type=string,JSONPath=`.status.version`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Endpoint",type=string,JSONPath=`.status.gatewayEndpoint`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",message="metadata.name must start with a lowercase letter and contain only lowercase letters, digits and '-': it prefixes the names of the cluster's Services",fieldPath=".metadata"
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 30",message="metadata.name must be at most 30 characters: it prefixes the names of the cluster's workloads, which Kubernetes limits in length",fieldPath=".metadata"
type MetricsCluster struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   MetricsClusterSpec   `json:"spec"`
	Status MetricsClusterStatus `json:"status,omitempty"`
}

// MetricsClusterList is a list of MetricsClusters.
//
// +kubebuilder:object:root=true
type MetricsClusterList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MetricsCluster `json:"items"`
}

func init() {
	SchemeBuilder.Register(&MetricsCluster{}, &MetricsClusterList{})
}
