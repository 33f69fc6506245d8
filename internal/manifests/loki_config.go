package manifests

import (
	"bytes"
	"errors"
	"fmt"
	"path"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
)

// LokiOptions is everything the Loki configuration of a MetricsCluster depends on. NewBuildOptions fills it
// from spec.logs, spec.storage, spec.retention and the constants of loki_names.go; tests pick free ports and
// a temporary data directory.
type LokiOptions struct {
	ClusterName string
	Namespace   string
	Topology    v1alpha1.Topology
	// Storage is spec.storage: Loki uses the same backend and credentials as Cortex.
	Storage v1alpha1.StorageSpec
	// Bucket is spec.logs.storage.bucket; empty keeps logs in the metrics bucket under LokiLogsPrefix.
	Bucket string
	// RetentionDays is spec.retention.logsDays.
	RetentionDays int32
	// ReplicationFactor is how many ingesters receive every log stream (1 for topology single).
	ReplicationFactor int

	// DataDir is the absolute directory every Loki directory lives under (LokiDataDir in production).
	DataDir string
	// ConfigFile and RuntimeConfigFile are where the container finds LokiConfig's and LokiRuntimeOverrides'
	// output (LokiConfigFile and LokiRuntimeConfigFile in production).
	ConfigFile        string
	RuntimeConfigFile string

	HTTPPort   int
	GRPCPort   int
	GossipPort int

	// DefaultTenantLimits is spec.defaultTenantLimits: the limits of tenants not in the runtime overrides.
	DefaultTenantLimits v1alpha1.TenantLimits

	// TLS is the component certificate, the same one Cortex presents (ComponentTLS): BuildAll sets it from
	// BuildOptions.TLS. Left nil (as some tests do), Loki talks plain gRPC and gossip.
	TLS *ComponentTLS
}

var (
	lokiTemplate          = parseTemplate("loki.yaml.tmpl")
	lokiOverridesTemplate = parseTemplate("loki-overrides.yaml.tmpl")
)

type lokiDirs struct {
	WAL            string
	ShutdownMarker string
	ActiveIndex    string
	IndexCache     string
	Compactor      string
	RulerScratch   string
	RulerStorage   string
}

type lokiS3Data struct {
	BucketName     string
	Endpoint       string
	Region         string
	Insecure       bool
	ForcePathStyle bool
}

// lokiTLSData are the component certificate's files and the name each Loki client expects on its peer's
// certificate: the Service in front of the peer, as for Cortex (tlsServerName).
type lokiTLSData struct {
	tlsFiles
	Ingester      string
	QueryFrontend string
	Compactor     string
	GossipRing    string
	All           string
}

// lokiTLSServerName is the name a Loki client expects on the certificate of the component it dials.
func lokiTLSServerName(opts LokiOptions, component string) string {
	if opts.Topology == v1alpha1.TopologySingle {
		component = LokiComponentAll
	}
	return ComponentName(opts.ClusterName, component) + "." + opts.Namespace + ".svc"
}

type lokiTemplateData struct {
	LokiVersion          string
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
	CompactorAddress     string
	Backend              string
	Filesystem           *filesystemData
	S3                   *lokiS3Data
	GCS                  *gcsData
	ObjectPrefix         string
	Dirs                 lokiDirs
	RuntimeConfigFile    string
	RuntimeConfigPeriod  string
	Limits               resolvedLokiLimits
	RetentionPeriod      string
	TLS                  *lokiTLSData
}

// LokiConfig renders the Loki configuration file shared by every Loki process of the cluster. It holds no
// secret; addresses are ${POD_IP}, expanded by Loki (-config.expand-env=true, see LokiArgs).
//
// What Loki needs at start: DataDir must exist and be writable (Loki creates the WAL, index, cache,
// compactor, chunks and ruler directories under it itself); the runtime overrides file must exist and parse
// (Loki refuses to start otherwise); POD_IP must be set in its environment.
func LokiConfig(opts LokiOptions) ([]byte, error) {
	if err := validateLokiOptions(opts); err != nil {
		return nil, err
	}
	single := opts.Topology == v1alpha1.TopologySingle
	data := lokiTemplateData{
		LokiVersion:       DefaultLokiVersion,
		ClusterName:       opts.ClusterName,
		Topology:          opts.Topology,
		Single:            single,
		HTTPPort:          opts.HTTPPort,
		GRPCPort:          opts.GRPCPort,
		GossipPort:        opts.GossipPort,
		ReplicationFactor: opts.ReplicationFactor,
		Backend:           string(opts.Storage.Type),
		Dirs: lokiDirs{
			WAL:            path.Join(opts.DataDir, "wal"),
			ShutdownMarker: path.Join(opts.DataDir, "shutdown-marker"),
			ActiveIndex:    path.Join(opts.DataDir, "tsdb-index"),
			IndexCache:     path.Join(opts.DataDir, "tsdb-cache"),
			Compactor:      path.Join(opts.DataDir, "compactor"),
			RulerScratch:   path.Join(opts.DataDir, "ruler"),
			RulerStorage:   path.Join(opts.DataDir, "rules"),
		},
		RuntimeConfigFile:   opts.RuntimeConfigFile,
		RuntimeConfigPeriod: RuntimeConfigPeriod,
		Limits:              resolveLokiLimits(opts.DefaultTenantLimits, v1alpha1.TenantLimits{}),
		RetentionPeriod:     days(opts.RetentionDays),
	}
	if single {
		data.KVStore = "inmemory"
	} else {
		data.KVStore = "memberlist"
		data.GossipJoinAddress = "dns+" + ServiceAddress(LokiGossipRingServiceName(opts.ClusterName), opts.Namespace, opts.GossipPort)
		data.QueryFrontendAddress = ServiceAddress(HeadlessServiceName(opts.ClusterName, LokiComponentQueryFrontend), opts.Namespace, opts.GRPCPort)
		data.CompactorAddress = ServiceAddress(ComponentName(opts.ClusterName, LokiComponentCompactor), opts.Namespace, opts.GRPCPort)
	}
	if opts.TLS != nil {
		data.TLS = &lokiTLSData{
			tlsFiles:      componentTLSFiles(opts.TLS),
			Ingester:      lokiTLSServerName(opts, LokiComponentIngester),
			QueryFrontend: lokiTLSServerName(opts, LokiComponentQueryFrontend),
			Compactor:     lokiTLSServerName(opts, LokiComponentCompactor),
			GossipRing:    LokiGossipRingServiceName(opts.ClusterName) + "." + opts.Namespace + ".svc",
			All:           lokiTLSServerName(opts, LokiComponentAll),
		}
	}
	bucket := func(metrics string) string {
		if opts.Bucket != "" {
			return opts.Bucket
		}
		data.ObjectPrefix = LokiLogsPrefix
		return metrics
	}
	switch opts.Storage.Type {
	case v1alpha1.StorageFilesystem:
		data.Filesystem = &filesystemData{Dir: path.Join(opts.DataDir, "chunks")}
	case v1alpha1.StorageS3:
		s3 := opts.Storage.S3
		data.S3 = &lokiS3Data{BucketName: bucket(s3.Bucket), Endpoint: s3.Endpoint, Region: s3.Region,
			Insecure: s3.Insecure, ForcePathStyle: s3.Endpoint != ""}
		if s3.Endpoint == "" {
			data.S3.Endpoint = fmt.Sprintf("s3.%s.amazonaws.com", s3.Region)
		}
	case v1alpha1.StorageGCS:
		data.GCS = &gcsData{BucketName: bucket(opts.Storage.GCS.Bucket)}
	}

	var out bytes.Buffer
	if err := lokiTemplate.Execute(&out, data); err != nil {
		return nil, fmt.Errorf("render Loki configuration: %w", err)
	}
	var parsed map[string]any
	if err := yaml.Unmarshal(out.Bytes(), &parsed); err != nil {
		return nil, fmt.Errorf("rendered Loki configuration is not valid YAML: %w", err)
	}
	return out.Bytes(), nil
}

// validateLokiOptions reports every missing or inconsistent option at once; the CRD already rejects what a
// user could get wrong, so an error here is a bug in the caller.
func validateLokiOptions(opts LokiOptions) error {
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
	if opts.RetentionDays < 1 {
		errs = append(errs, fmt.Errorf("logs retention of %d days must be at least 1 day", opts.RetentionDays))
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
		if opts.Bucket != "" {
			errs = append(errs, errors.New("a logs bucket does not apply to filesystem storage"))
		}
	case v1alpha1.StorageS3:
		if opts.Storage.S3 == nil || opts.Storage.S3.Bucket == "" {
			errs = append(errs, errors.New("storage type s3 needs s3.bucket"))
		} else if opts.Storage.S3.Region == "" && opts.Storage.S3.Endpoint == "" {
			errs = append(errs, errors.New("storage type s3 needs s3.region or s3.endpoint"))
		} else if opts.Bucket == opts.Storage.S3.Bucket {
			errs = append(errs, errors.New("the logs bucket must differ from the metrics bucket"))
		}
	case v1alpha1.StorageGCS:
		if opts.Storage.GCS == nil || opts.Storage.GCS.Bucket == "" {
			errs = append(errs, errors.New("storage type gcs needs gcs.bucket"))
		} else if opts.Bucket == opts.Storage.GCS.Bucket {
			errs = append(errs, errors.New("the logs bucket must differ from the metrics bucket"))
		}
	default:
		errs = append(errs, fmt.Errorf("storage type %q is not filesystem, s3 or gcs", opts.Storage.Type))
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid Loki options: %w", errors.Join(errs...))
	}
	return nil
}

// LokiArgs are the container args of a Loki process of component (LokiComponentAll or a LokiComponent*
// constant). The configuration refers to ${POD_IP}, which -config.expand-env=true replaces with the PodIPEnv
// variable that LokiEnv defines; tests set it to 127.0.0.1.
func LokiArgs(opts LokiOptions, component string) []string {
	return []string{
		"-config.file=" + opts.ConfigFile,
		"-config.expand-env=true",
		"-target=" + LokiTarget(component),
	}
}

// LokiEnv are the environment variables of every Loki container: the same as Cortex's (the pod IP and the
// storage credentials of spec.storage, which Loki reads the same way).
func LokiEnv(opts LokiOptions) []corev1.EnvVar {
	return CortexEnv(Options{Storage: opts.Storage})
}

// Built-in log limits, for fields that neither the Tenant nor the cluster's defaultTenantLimits set: Loki's own
// defaults (4 MiB/s, bursts of 6 MiB).
const (
	BuiltinLogIngestionRate  int64 = 4 << 20
	BuiltinLogIngestionBurst int64 = 6 << 20
)

// bytesPerMiB is Loki's "MB": limits in bytes are written as ingestion_rate_mb = bytes / bytesPerMiB.
const bytesPerMiB = 1 << 20

// resolvedLokiLimits are one tenant's Loki limits, named after Loki v3.7's keys in pkg/validation/limits.go.
// The rates are formatted MiB (shortest exact decimal); an empty retention period means the cluster's.
type resolvedLokiLimits struct {
	IngestionRateMB      string
	IngestionBurstSizeMB string
	RetentionPeriod      string
}

// LogIngestionLimits are a tenant's log ingestion rate and burst in bytes, resolved as LokiRuntimeOverrides
// resolves them (tenant, else defaults, else Builtin*; the burst raised to the rate), so the gateway refuses
// what Loki would.
func LogIngestionLimits(defaults, tenant v1alpha1.TenantLimits) (rate, burst int64) {
	rate = first(tenant.LogIngestionRate, defaults.LogIngestionRate, BuiltinLogIngestionRate)
	burst = first(tenant.LogIngestionBurst, defaults.LogIngestionBurst, BuiltinLogIngestionBurst)
	return rate, max(burst, rate)
}

func resolveLokiLimits(defaults, tenant v1alpha1.TenantLimits) resolvedLokiLimits {
	rate, burst := LogIngestionLimits(defaults, tenant)
	limits := resolvedLokiLimits{IngestionRateMB: mebibytes(rate), IngestionBurstSizeMB: mebibytes(burst)}
	if retention := first(tenant.LogRetentionDays, defaults.LogRetentionDays, 0); retention > 0 {
		limits.RetentionPeriod = days(retention)
	}
	return limits
}

// mebibytes writes bytes in Loki's MB unit. Loki multiplies back by 1048576: a whole number of bytes that is
// not a whole number of MiB survives as a decimal (float64 holds every int64 rate a tenant could need).
func mebibytes(bytes int64) string {
	return strconv.FormatFloat(float64(bytes)/bytesPerMiB, 'f', -1, 64)
}

// LokiRuntimeOverrides renders Loki's runtime configuration: one entry per tenant with every limit resolved,
// tenants sorted by ID. Loki re-reads it every RuntimeConfigPeriod, so a new limit restarts nothing.
func LokiRuntimeOverrides(defaults v1alpha1.TenantLimits, tenants map[string]v1alpha1.TenantLimits) ([]byte, error) {
	return renderOverrides("Loki", lokiOverridesTemplate, defaults, tenants, resolveLokiLimits)
}
