package manifests

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
)

// BuildOptions is everything the Kubernetes objects of a MetricsCluster depend on: the Cortex Options plus
// what only the workloads need. NewBuildOptions fills it from a MetricsCluster.
type BuildOptions struct {
	Options

	// CortexImage is the Cortex container image, CortexImage(version).
	CortexImage string
	// GatewayImage is the gateway's container image, such as opstrace/opstrace-gateway:dev.
	GatewayImage string
	// Components is spec.components: per-component replicas and resources replacing the size preset.
	Components *v1alpha1.ComponentOverrides
	// Gateway is spec.gateway: how the gateway's Service is exposed.
	Gateway v1alpha1.GatewaySpec

	// CortexConfig and RuntimeOverrides are the contents of the two ConfigMaps. When nil, BuildAll renders
	// them: CortexConfig(Options), and RuntimeOverrides with the cluster's defaults and no tenant (the
	// controller passes the rendered overrides of its tenants).
	CortexConfig     []byte
	RuntimeOverrides []byte

	// MonitoringCRDs says whether the monitoring.coreos.com CRDs (ServiceMonitor, PrometheusRule) exist;
	// without them no monitoring object is built.
	MonitoringCRDs bool

	// Loki is spec.logs: nil when logs are off, and then no Loki object is built.
	Loki *LokiBuildOptions

	// ServiceAccounts is spec.serviceAccounts: annotations (cloud identities) of the Cortex and Loki
	// ServiceAccounts.
	ServiceAccounts v1alpha1.ServiceAccountsSpec
}

// NewBuildOptions are the BuildOptions of a MetricsCluster as the API server stores it (CRD defaults
// applied), with the paths and ports of names.go. The config contents are left for BuildAll to render.
func NewBuildOptions(mc *v1alpha1.MetricsCluster, gatewayImage string, monitoringCRDs bool) BuildOptions {
	version := mc.Spec.Version
	if version == "" {
		version = DefaultCortexVersion
	}
	replication := ReplicationFactor(mc.Spec.Size)
	if mc.Spec.Topology == v1alpha1.TopologySingle {
		// One ingester: a higher factor would fail every write.
		replication = 1
	}
	return BuildOptions{
		Options: Options{
			ClusterName:          mc.Name,
			Namespace:            mc.Namespace,
			Topology:             mc.Spec.Topology,
			Size:                 mc.Spec.Size,
			Storage:              *mc.Spec.Storage.DeepCopy(),
			MetricsRetentionDays: mc.Spec.Retention.MetricsDays,
			ReplicationFactor:    replication,
			DataDir:              DataDir,
			ConfigFile:           ConfigFile,
			RuntimeConfigFile:    RuntimeConfigFile,
			HTTPPort:             DefaultHTTPPort,
			GRPCPort:             DefaultGRPCPort,
			GossipPort:           DefaultGossipPort,
			DefaultTenantLimits:  *mc.Spec.DefaultTenantLimits.DeepCopy(),
		},
		CortexImage:     CortexImage(version),
		GatewayImage:    gatewayImage,
		Components:      mc.Spec.Components.DeepCopy(),
		Gateway:         *mc.Spec.Gateway.DeepCopy(),
		MonitoringCRDs:  monitoringCRDs,
		Loki:            newLokiBuildOptions(mc),
		ServiceAccounts: *mc.Spec.ServiceAccounts.DeepCopy(),
	}
}

// BuildAll returns every object of a MetricsCluster, in the same order for the same options: the
// ConfigMaps, the Cortex ServiceAccount, Services, workloads, PodDisruptionBudgets and NetworkPolicy, the
// Loki objects (BuildLoki, when opts.Loki is set), the gateway's objects, then (with MonitoringCRDs) the
// ServiceMonitors and the PrometheusRule. Every object is
// in opts.Namespace and has no owner reference: the controller sets it.
func BuildAll(opts BuildOptions) ([]client.Object, error) {
	opts, err := complete(opts)
	if err != nil {
		return nil, err
	}
	var objects []client.Object
	objects = append(objects, BuildConfigMaps(opts)...)
	objects = append(objects, BuildCortexServiceAccount(opts))
	objects = append(objects, BuildCortexServices(opts)...)
	objects = append(objects, BuildCortexWorkloads(opts)...)
	objects = append(objects, BuildCortexPodDisruptionBudgets(opts)...)
	objects = append(objects, BuildCortexNetworkPolicy(opts))
	objects = append(objects, BuildLoki(opts)...)
	objects = append(objects, BuildGateway(opts)...)
	if opts.MonitoringCRDs {
		objects = append(objects, BuildMonitoring(opts)...)
	}
	return objects, nil
}

// complete checks opts and renders the configuration contents the caller did not give.
func complete(opts BuildOptions) (BuildOptions, error) {
	var errs []error
	if opts.CortexImage == "" {
		errs = append(errs, errors.New("the Cortex image is required"))
	}
	if opts.GatewayImage == "" {
		errs = append(errs, errors.New("the gateway image is required"))
	}
	if opts.Size != "" {
		if _, ok := Presets[opts.Size]; !ok {
			errs = append(errs, fmt.Errorf("size %q is not demo, small or medium", opts.Size))
		}
	}
	if opts.CortexConfig == nil {
		config, err := CortexConfig(opts.Options)
		if err != nil {
			errs = append(errs, err)
		}
		opts.CortexConfig = config
	} else if err := validateOptions(opts.Options); err != nil {
		errs = append(errs, err)
	}
	if opts.RuntimeOverrides == nil {
		overrides, err := RuntimeOverrides(opts.DefaultTenantLimits, nil)
		if err != nil {
			errs = append(errs, err)
		}
		opts.RuntimeOverrides = overrides
	}
	if opts.Loki != nil {
		// A copy: the caller's options keep their nil contents.
		loki := *opts.Loki
		// Loki presents the same component certificate as Cortex.
		loki.TLS = opts.TLS
		if err := completeLoki(&loki); err != nil {
			errs = append(errs, err)
		}
		opts.Loki = &loki
	}
	if len(errs) > 0 {
		return opts, fmt.Errorf("build objects of MetricsCluster %s/%s: %w", opts.Namespace, opts.ClusterName, errors.Join(errs...))
	}
	return opts, nil
}

// ConfigHash is the value of ConfigHashAnnotation: the hex SHA-256 of the Cortex configuration.
func ConfigHash(cortexConfig []byte) string {
	sum := sha256.Sum256(cortexConfig)
	return hex.EncodeToString(sum[:])
}

// objectMeta is the metadata of an object of a component.
func objectMeta(opts BuildOptions, name, component string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: opts.Namespace, Labels: Labels(opts.ClusterName, component)}
}

// cortexComponents are the Cortex components of the cluster's topology, in the order of their objects.
func cortexComponents(opts BuildOptions) []string {
	if opts.Topology == v1alpha1.TopologySingle {
		return []string{TargetAll}
	}
	return MicroservicesComponents
}

// BuildConfigMaps are the Cortex configuration (key CortexConfigKey) and the runtime overrides (key
// RuntimeConfigKey). opts must hold both contents (BuildAll renders missing ones).
func BuildConfigMaps(opts BuildOptions) []client.Object {
	return []client.Object{
		&corev1.ConfigMap{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
			ObjectMeta: objectMeta(opts, CortexConfigMapName(opts.ClusterName), ComponentCortexShared),
			Data:       map[string]string{CortexConfigKey: string(opts.CortexConfig)},
		},
		&corev1.ConfigMap{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
			ObjectMeta: objectMeta(opts, RuntimeConfigMapName(opts.ClusterName), ComponentCortexShared),
			Data:       map[string]string{RuntimeConfigKey: string(opts.RuntimeOverrides)},
		},
	}
}

// BuildCortexServiceAccount is the identity of every Cortex pod. Cortex never calls the API server, so no
// token is mounted; cloud identities (IRSA, workload identity) annotate this ServiceAccount.
func BuildCortexServiceAccount(opts BuildOptions) client.Object {
	meta := objectMeta(opts, CortexServiceAccountName(opts.ClusterName), ComponentCortexShared)
	meta.Annotations = maps.Clone(opts.ServiceAccounts.Cortex.Annotations)
	return &corev1.ServiceAccount{
		TypeMeta:                     metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta:                   meta,
		AutomountServiceAccountToken: ptr.To(false),
	}
}
