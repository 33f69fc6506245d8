package manifests

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"sort"
	"text/template"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
)

// Options is everything the Cortex configuration of a MetricsCluster depends on. The controller gathers it
// from the MetricsCluster (after the API server has applied the CRD defaults) and the constants of names.go.
type Options struct {
	// ClusterName and Namespace of the MetricsCluster; they name the Services the components find each
	// other through.
	ClusterName string
	Namespace   string

	// Topology is single (one process, target all) or microservices (one workload per component).
	Topology v1alpha1.Topology
	// Size is the size preset; the workload builders read it, the configuration does not.
	Size v1alpha1.SizePreset
	// Storage is where blocks are kept.
	Storage v1alpha1.StorageSpec
	// MetricsRetentionDays is spec.retention.metricsDays: blocks older than this are deleted.
	MetricsRetentionDays int32
	// ReplicationFactor is how many ingesters (and store-gateways) hold every series: ReplicationFactor(size).
	ReplicationFactor int

	// DataDir is the absolute directory every Cortex directory lives under (DataDir in production).
	DataDir string
	// ConfigFile is where the container finds CortexConfig's output (ConfigFile in production).
	ConfigFile string
	// RuntimeConfigFile is where the container finds RuntimeOverrides' output (RuntimeConfigFile in
	// production).
	RuntimeConfigFile string

	// HTTPPort, GRPCPort and GossipPort are where every process listens (DefaultHTTPPort, DefaultGRPCPort
	// and DefaultGossipPort in production).
	HTTPPort   int
	GRPCPort   int
	GossipPort int

	// DefaultTenantLimits is spec.defaultTenantLimits: the limits of tenants that are not in the runtime
	// overrides, such as the system tenant. Unset fields take the Builtin* constants.
	DefaultTenantLimits v1alpha1.TenantLimits

	// TLS is the component certificate. The controller always sets it; left nil (as some tests do), the
	// components talk plain gRPC and gossip.
	TLS *ComponentTLS
}

// ComponentTLS is the certificate every Cortex process of a cluster presents, as server and as client, on
// its gRPC port and on the memberlist gossip port. The HTTP port stays plain: the gateway, the readiness
// probes, Prometheus scrapes and the controller's ring reader use it, and the NetworkPolicy admits only
// those and the cluster's own components to it.
type ComponentTLS struct {
	// Dir is where the Secret CortexTLSSecretName is mounted: tls.crt, tls.key and ca.crt (CortexTLSDir in
	// production).
	Dir string
	// Hash identifies the certificate and CA in the Secret; the pod templates carry it in TLSHashAnnotation.
	// Cortex's gRPC and memberlist clients read their certificate and CA only at start (only the gRPC server
	// reloads its certificate on each handshake), so a renewed certificate must restart the pods: the
	// changed annotation rolls them in the upgrade planner's order, like a configuration change.
	Hash string
}

// The component certificate: the Secret the controller keeps (or has cert-manager keep), where the pods
// mount it, and the annotation that restarts them when it changes.
const (
	CortexTLSDir      = "/etc/cortex/tls"
	TLSHashAnnotation = "opstrace.io/tls-hash"
	// TLSCAKey is the key of the CA bundle in a TLS Secret, next to tls.crt and tls.key; cert-manager writes
	// the same key.
	TLSCAKey = "ca.crt"
)

// CortexTLSSecretName is the kubernetes.io/tls Secret holding the component certificate (tls.crt, tls.key)
// and the CA that signed it (ca.crt).
func CortexTLSSecretName(cluster string) string { return cluster + "-cortex-tls" }

// CortexServices are the names of the Cortex Services of a topology that the component certificate must
// cover: each component's Service, and the headless Services (each component's and, for microservices, the
// gossip ring's), whose pods also have per-pod names.
func CortexServices(cluster string, topology v1alpha1.Topology) (services, headless []string) {
	components := MicroservicesComponents
	if topology == v1alpha1.TopologySingle {
		components = []string{TargetAll}
	}
	return componentServices(cluster, topology, components, GossipRingServiceName(cluster))
}

// componentServices are the Service and headless Service names of components, and for microservices the
// gossip ring's headless Service.
func componentServices(cluster string, topology v1alpha1.Topology, components []string, gossipRing string) (services, headless []string) {
	for _, component := range components {
		services = append(services, ComponentName(cluster, component))
		headless = append(headless, HeadlessServiceName(cluster, component))
	}
	if topology == v1alpha1.TopologyMicroservices {
		headless = append(headless, gossipRing)
	}
	return services, headless
}

// tlsServerName is the name a client expects on the certificate of the component it dials. Clients dial pod
// IPs (from the rings, or a headless Service resolved to every pod), which no certificate can name in
// advance, so each checks the name of the Service in front of its peer. Every component presents the same
// certificate: the check proves the peer is a component of this cluster, signed by its CA, not which one.
func tlsServerName(opts Options, component string) string {
	if opts.Topology == v1alpha1.TopologySingle {
		component = TargetAll
	}
	return ComponentName(opts.ClusterName, component) + "." + opts.Namespace + ".svc"
}

// RuntimeConfigPeriod is how often Cortex re-reads the runtime overrides file.
const RuntimeConfigPeriod = "10s"

// PodIPEnv is the environment variable holding the pod's IP (from the downward API); PodIPReference is how
// container args refer to it, which the kubelet expands before starting the container.
const (
	PodIPEnv       = "POD_IP"
	PodIPReference = "$(" + PodIPEnv + ")"
)

//go:embed templates/*.yaml.tmpl
var templates embed.FS

var (
	cortexTemplate    = parseTemplate("cortex.yaml.tmpl")
	overridesTemplate = parseTemplate("overrides.yaml.tmpl")
)

func parseTemplate(name string) *template.Template {
	return template.Must(template.New(name).
		Funcs(template.FuncMap{"quote": quote}).
		Option("missingkey=error").
		ParseFS(templates, "templates/"+name))
}

// quote writes s as a YAML double-quoted scalar: JSON strings are valid YAML.
func quote(s string) (string, error) {
	b, err := json.Marshal(s)
	return string(b), err
}

// cortexDirs are the directories Cortex writes, each under Options.DataDir.
type cortexDirs struct {
	TSDB                string
	BucketStoreSync     string
	Compactor           string
	IngesterTokensFile  string
	RulerScratch        string
	RulerStorage        string
	AlertmanagerData    string
	AlertmanagerStorage string
}

type filesystemData struct{ Dir string }

type s3Data struct {
	BucketName string
	Endpoint   string
	Region     string
	Insecure   bool
}

type gcsData struct{ BucketName string }

// tlsFiles are where a container finds the component certificate, its key and the CA.
type tlsFiles struct{ CertFile, KeyFile, CAFile string }

func componentTLSFiles(tls *ComponentTLS) tlsFiles {
	return tlsFiles{
		CertFile: path.Join(tls.Dir, corev1.TLSCertKey),
		KeyFile:  path.Join(tls.Dir, corev1.TLSPrivateKeyKey),
		CAFile:   path.Join(tls.Dir, TLSCAKey),
	}
}

// tlsData are the component certificate's files and the name each client expects on its peer's certificate.
type tlsData struct {
	tlsFiles
	Ingester      string
	StoreGateway  string
	QueryFrontend string
	GossipRing    string
	All           string
}

// cortexTemplateData is what the template sees: every decision is made here, the template only prints.
type cortexTemplateData struct {
	CortexVersion        string
	ClusterName          string
	Topology             v1alpha1.Topology
	Single               bool
	HTTPPort             int
	GRPCPort             int
	GossipPort           int
	ReplicationFactor    int
	KVStore              string
	GossipJoinAddress    string
	QueryFrontendAddress string
	Backend              string
	Filesystem           *filesystemData
	S3                   *s3Data
	GCS                  *gcsData
	TLS                  *tlsData
	Dirs                 cortexDirs
	RuntimeConfigFile    string
	RuntimeConfigPeriod  string
	Limits               resolvedLimits
	RetentionPeriod      string
}

// CortexConfig renders the Cortex configuration file shared by every process of the cluster. It holds no
// secret and no listen address: see CortexEnv and CortexArgs.
func CortexConfig(opts Options) ([]byte, error) {
	if err := validateOptions(opts); err != nil {
		return nil, err
	}
	single := opts.Topology == v1alpha1.TopologySingle
	data := cortexTemplateData{
		CortexVersion:     DefaultCortexVersion,
		ClusterName:       opts.ClusterName,
		Topology:          opts.Topology,
		Single:            single,
		HTTPPort:          opts.HTTPPort,
		GRPCPort:          opts.GRPCPort,
		GossipPort:        opts.GossipPort,
		ReplicationFactor: opts.ReplicationFactor,
		Backend:           string(opts.Storage.Type),
		Dirs: cortexDirs{
			TSDB:                path.Join(opts.DataDir, "tsdb"),
			BucketStoreSync:     path.Join(opts.DataDir, "tsdb-sync"),
			Compactor:           path.Join(opts.DataDir, "compactor"),
			IngesterTokensFile:  path.Join(opts.DataDir, "ingester-tokens"),
			RulerScratch:        path.Join(opts.DataDir, "ruler"),
			RulerStorage:        path.Join(opts.DataDir, "rules"),
			AlertmanagerData:    path.Join(opts.DataDir, "alertmanager"),
			AlertmanagerStorage: path.Join(opts.DataDir, "alertmanager-configs"),
		},
		RuntimeConfigFile:   opts.RuntimeConfigFile,
		RuntimeConfigPeriod: RuntimeConfigPeriod,
		Limits:              resolveLimits(opts.DefaultTenantLimits, v1alpha1.TenantLimits{}),
		RetentionPeriod:     days(opts.MetricsRetentionDays),
	}
	if single {
		// One process: the rings live in its memory and nothing gossips.
		data.KVStore = "inmemory"
	} else {
		data.KVStore = "memberlist"
		data.GossipJoinAddress = "dns+" + ServiceAddress(GossipRingServiceName(opts.ClusterName), opts.Namespace, opts.GossipPort)
		data.QueryFrontendAddress = ServiceAddress(HeadlessServiceName(opts.ClusterName, ComponentQueryFrontend), opts.Namespace, opts.GRPCPort)
	}
	switch opts.Storage.Type {
	case v1alpha1.StorageFilesystem:
		data.Filesystem = &filesystemData{Dir: path.Join(opts.DataDir, "blocks")}
	case v1alpha1.StorageS3:
		s3 := opts.Storage.S3
		data.S3 = &s3Data{BucketName: s3.Bucket, Endpoint: s3.Endpoint, Region: s3.Region, Insecure: s3.Insecure}
		if s3.Endpoint == "" {
			// Cortex has no default endpoint: AWS S3 is named by region.
			data.S3.Endpoint = fmt.Sprintf("s3.%s.amazonaws.com", s3.Region)
		}
	case v1alpha1.StorageGCS:
		data.GCS = &gcsData{BucketName: opts.Storage.GCS.Bucket}
	}

	if opts.TLS != nil {
		data.TLS = &tlsData{
			tlsFiles:      componentTLSFiles(opts.TLS),
			Ingester:      tlsServerName(opts, ComponentIngester),
			StoreGateway:  tlsServerName(opts, ComponentStoreGateway),
			QueryFrontend: tlsServerName(opts, ComponentQueryFrontend),
			GossipRing:    GossipRingServiceName(opts.ClusterName) + "." + opts.Namespace + ".svc",
			All:           tlsServerName(opts, TargetAll),
		}
	}

	var out bytes.Buffer
	if err := cortexTemplate.Execute(&out, data); err != nil {
		return nil, fmt.Errorf("render Cortex configuration: %w", err)
	}
	// A template mistake must not reach a ConfigMap: Cortex would refuse to start on every pod.
	var parsed map[string]any
	if err := yaml.Unmarshal(out.Bytes(), &parsed); err != nil {
		return nil, fmt.Errorf("rendered Cortex configuration is not valid YAML: %w", err)
	}
	return out.Bytes(), nil
}

// validateOptions reports every missing or inconsistent option at once. The CRD's validation already
// rejects what a user could get wrong, so an error here is a bug in the caller.
func validateOptions(opts Options) error {
	var errs []error
	if opts.ClusterName == "" || opts.Namespace == "" {
		errs = append(errs, errors.New("cluster name and namespace are required"))
	}
	if opts.Topology != v1alpha1.TopologySingle && opts.Topology != v1alpha1.TopologyMicroservices {
		errs = append(errs, fmt.Errorf("topology %q is neither single nor microservices", opts.Topology))
	}
	if opts.ReplicationFactor < 1 {
		errs = append(errs, fmt.Errorf("replication factor %d must be at least 1", opts.ReplicationFactor))
	}
	if opts.MetricsRetentionDays < 1 {
		errs = append(errs, fmt.Errorf("metrics retention of %d days must be at least 1 day", opts.MetricsRetentionDays))
	}
	errs = append(errs, pathErrors(opts.DataDir, opts.ConfigFile, opts.RuntimeConfigFile, opts.TLS)...)
	for _, port := range []struct {
		name   string
		number int
	}{{"HTTP", opts.HTTPPort}, {"gRPC", opts.GRPCPort}, {"gossip", opts.GossipPort}} {
		if port.number < 1 || port.number > 65535 {
			errs = append(errs, fmt.Errorf("%s port %d is not a port number", port.name, port.number))
		}
	}
	switch opts.Storage.Type {
	case v1alpha1.StorageFilesystem:
		if opts.Topology != v1alpha1.TopologySingle {
			errs = append(errs, errors.New("filesystem storage works only with topology single"))
		}
	case v1alpha1.StorageS3:
		if opts.Storage.S3 == nil || opts.Storage.S3.Bucket == "" {
			errs = append(errs, errors.New("storage type s3 needs s3.bucket"))
		} else if opts.Storage.S3.Region == "" && opts.Storage.S3.Endpoint == "" {
			errs = append(errs, errors.New("storage type s3 needs s3.region or s3.endpoint"))
		}
	case v1alpha1.StorageGCS:
		if opts.Storage.GCS == nil || opts.Storage.GCS.Bucket == "" {
			errs = append(errs, errors.New("storage type gcs needs gcs.bucket"))
		}
	default:
		errs = append(errs, fmt.Errorf("storage type %q is not filesystem, s3 or gcs", opts.Storage.Type))
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid Cortex options: %w", errors.Join(errs...))
	}
	return nil
}

// pathErrors reports each directory and file a Cortex or Loki process is given that is not an absolute path.
func pathErrors(dataDir, configFile, runtimeConfigFile string, tls *ComponentTLS) []error {
	files := []struct{ name, path string }{
		{"data directory", dataDir}, {"config file", configFile}, {"runtime config file", runtimeConfigFile},
	}
	if tls != nil {
		files = append(files, struct{ name, path string }{"TLS directory", tls.Dir})
	}
	var errs []error
	for _, file := range files {
		if !path.IsAbs(file.path) {
			errs = append(errs, fmt.Errorf("%s %q must be an absolute path", file.name, file.path))
		}
	}
	return errs
}

// CortexArgs are the container args of a Cortex process running target (TargetAll or a Component*
// constant). Every listen and advertised address is the pod's IP, written as PodIPReference for the kubelet
// to expand from the PodIPEnv variable that CortexEnv defines; tests replace it with 127.0.0.1.
func CortexArgs(opts Options, target string) []string {
	args := []string{
		"-config.file=" + opts.ConfigFile,
		"-target=" + target,
		"-server.http-listen-address=" + PodIPReference,
		"-server.grpc-listen-address=" + PodIPReference,
		"-memberlist.bind-addr=" + PodIPReference,
		// What each ring advertises; Cortex would otherwise look for an eth0 or en0 interface.
		"-ingester.lifecycler.addr=" + PodIPReference,
		"-distributor.ring.instance-addr=" + PodIPReference,
		"-store-gateway.sharding-ring.instance-addr=" + PodIPReference,
		"-compactor.ring.instance-addr=" + PodIPReference,
		"-ruler.ring.instance-addr=" + PodIPReference,
		"-alertmanager.sharding-ring.instance-addr=" + PodIPReference,
	}
	if opts.Topology == v1alpha1.TopologySingle {
		// Left empty, Cortex points the single process's querier worker and store-gateway client at
		// 127.0.0.1, where gRPC does not listen: the process would never become ready.
		self := fmt.Sprintf("%s:%d", PodIPReference, opts.GRPCPort)
		args = append(args, "-querier.frontend-address="+self, "-querier.store-gateway-addresses="+self)
	}
	return args
}

// CortexEnv are the environment variables of every Cortex container: the pod IP that CortexArgs refers to,
// and the storage credentials, which stay out of the configuration file.
//
//   - s3 with credentialsSecret: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from the Secret's keys of the
//     same names. Without it, Cortex uses the pod's identity (IAM roles for service accounts).
//   - gcs with credentialsSecret: GOOGLE_APPLICATION_CREDENTIALS=GCSCredentialsFile; the workload mounts the
//     Secret's key service-account.json there. Without it, Cortex uses the pod's identity (workload identity).
//   - gcs with endpoint: STORAGE_EMULATOR_HOST, since Cortex's GCS client has no endpoint setting. The Google
//     client then sends no credentials, as an emulator expects.
func CortexEnv(opts Options) []corev1.EnvVar {
	env := []corev1.EnvVar{{
		Name:      PodIPEnv,
		ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}},
	}}
	switch opts.Storage.Type {
	case v1alpha1.StorageS3:
		if s3 := opts.Storage.S3; s3 != nil && s3.CredentialsSecret != nil {
			for _, key := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} {
				env = append(env, corev1.EnvVar{Name: key, ValueFrom: &corev1.EnvVarSource{
					SecretKeyRef: &corev1.SecretKeySelector{
						LocalObjectReference: corev1.LocalObjectReference{Name: s3.CredentialsSecret.Name},
						Key:                  key,
					},
				}})
			}
		}
	case v1alpha1.StorageGCS:
		gcs := opts.Storage.GCS
		if gcs == nil {
			break
		}
		if gcs.CredentialsSecret != nil {
			env = append(env, corev1.EnvVar{Name: "GOOGLE_APPLICATION_CREDENTIALS", Value: GCSCredentialsFile})
		}
		if gcs.Endpoint != "" {
			scheme := "https://"
			if gcs.Insecure {
				scheme = "http://"
			}
			env = append(env, corev1.EnvVar{Name: "STORAGE_EMULATOR_HOST", Value: scheme + gcs.Endpoint})
		}
	}
	return env
}

// Built-in tenant limits, for fields that neither the Tenant nor the cluster's defaultTenantLimits set. The
// rate and burst are Cortex's own defaults; the series cap keeps one tenant from exhausting the ingesters'
// memory (Cortex's default is no cap). Retention has no built-in value: a tenant without one keeps the
// cluster's spec.retention.metricsDays, which CortexConfig sets for every tenant.
const (
	BuiltinIngestionRate   int64 = 25000
	BuiltinIngestionBurst  int64 = 50000
	BuiltinMaxActiveSeries int64 = 150000
)

// resolvedLimits are one tenant's limits, named after Cortex v1.21's keys in pkg/util/validation/limits.go
// (the templates write those keys). An empty retention period means the cluster's.
type resolvedLimits struct {
	IngestionRate                  int64
	IngestionBurstSize             int64
	MaxGlobalSeriesPerUser         int64
	CompactorBlocksRetentionPeriod string
}

// resolveLimits takes each field from tenant, else from defaults, else from the Builtin* constants. The burst
// is raised to the rate when inheritance leaves it below (a tenant raising only its rate): the API requires
// one second at the allowed rate to fit in a burst, and Cortex rejects any push larger than the burst.
func resolveLimits(defaults, tenant v1alpha1.TenantLimits) resolvedLimits {
	limits := resolvedLimits{
		IngestionRate:          first(tenant.IngestionRate, defaults.IngestionRate, BuiltinIngestionRate),
		IngestionBurstSize:     first(tenant.IngestionBurst, defaults.IngestionBurst, BuiltinIngestionBurst),
		MaxGlobalSeriesPerUser: first(tenant.MaxActiveSeries, defaults.MaxActiveSeries, BuiltinMaxActiveSeries),
	}
	limits.IngestionBurstSize = max(limits.IngestionBurstSize, limits.IngestionRate)
	if retention := first(tenant.MetricRetentionDays, defaults.MetricRetentionDays, 0); retention > 0 {
		limits.CompactorBlocksRetentionPeriod = days(retention)
	}
	return limits
}

// first is the first set value, else builtin.
func first[T any](tenant, defaults *T, builtin T) T {
	if tenant != nil {
		return *tenant
	}
	if defaults != nil {
		return *defaults
	}
	return builtin
}

// days is a retention in Cortex's duration syntax, which counts days with "d".
func days(n int32) string {
	return fmt.Sprintf("%dd", n)
}

// RuntimeOverrides renders Cortex's runtime configuration: one entry per tenant with every limit resolved
// (tenant, else defaults, else Builtin*), tenants sorted by ID. Cortex re-reads it every RuntimeConfigPeriod.
func RuntimeOverrides(defaults v1alpha1.TenantLimits, tenants map[string]v1alpha1.TenantLimits) ([]byte, error) {
	return renderOverrides("Cortex", overridesTemplate, defaults, tenants, resolveLimits)
}

// renderOverrides renders an engine's runtime overrides template with one entry per tenant, sorted by ID, each
// with its limits resolved by resolve, and checks that the result is YAML.
func renderOverrides[L any](engine string, tmpl *template.Template, defaults v1alpha1.TenantLimits,
	tenants map[string]v1alpha1.TenantLimits, resolve func(defaults, tenant v1alpha1.TenantLimits) L) ([]byte, error) {
	type tenantData struct {
		ID     string
		Limits L
	}
	ids := make([]string, 0, len(tenants))
	for id := range tenants {
		if id == "" {
			return nil, errors.New("a tenant has an empty ID")
		}
		ids = append(ids, id)
	}
	sort.Strings(ids)
	data := struct {
		Period  string
		Tenants []tenantData
	}{Period: RuntimeConfigPeriod}
	for _, id := range ids {
		data.Tenants = append(data.Tenants, tenantData{ID: id, Limits: resolve(defaults, tenants[id])})
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, data); err != nil {
		return nil, fmt.Errorf("render %s runtime overrides: %w", engine, err)
	}
	var parsed map[string]any
	if err := yaml.Unmarshal(out.Bytes(), &parsed); err != nil {
		return nil, fmt.Errorf("rendered %s runtime overrides are not valid YAML: %w", engine, err)
	}
	return out.Bytes(), nil
}

// IngestionLimits are a tenant's ingestion rate and burst in samples per second, resolved as RuntimeOverrides
// resolves them, so the gateway refuses exactly what Cortex would.
func IngestionLimits(defaults, tenant v1alpha1.TenantLimits) (rate, burst int64) {
	limits := resolveLimits(defaults, tenant)
	return limits.IngestionRate, limits.IngestionBurstSize
}
