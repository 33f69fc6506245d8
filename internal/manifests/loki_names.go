package manifests

import (
	"strings"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
)

// DefaultLokiVersion is the Loki release a MetricsCluster runs when spec.logs.version is empty. It is the one
// place the pinned version lives; LOKI_VERSION in the Makefile builds the same release for the tests.
const DefaultLokiVersion = "v3.7.8"

// LokiImage is the Loki container image of a release such as v3.7.8.
func LokiImage(version string) string { return "grafana/loki:" + version }

// Loki components. Each is the app.kubernetes.io/component label and the suffix of the names of its
// Kubernetes objects; the "loki-" prefix keeps them apart from the Cortex components of the same cluster,
// whose labels and names are the bare targets. LokiTarget gives the -target each runs.
const (
	// LokiComponentAll is the one Loki process of topology single (target all).
	LokiComponentAll           = "loki"
	LokiComponentDistributor   = "loki-distributor"
	LokiComponentIngester      = "loki-ingester"
	LokiComponentQuerier       = "loki-querier"
	LokiComponentQueryFrontend = "loki-query-frontend"
	LokiComponentCompactor     = "loki-compactor"
)

// LokiMicroservicesComponents are the Loki components of topology microservices, one workload each.
var LokiMicroservicesComponents = []string{
	LokiComponentDistributor,
	LokiComponentIngester,
	LokiComponentQuerier,
	LokiComponentQueryFrontend,
	LokiComponentCompactor,
}

// IsLokiComponent says whether a component label belongs to Loki.
func IsLokiComponent(component string) bool {
	return component == LokiComponentAll || strings.HasPrefix(component, LokiComponentAll+"-")
}

// LokiTarget is the Loki -target of a Loki component: all, distributor, ingester, ...
func LokiTarget(component string) string {
	if component == LokiComponentAll {
		return TargetAll
	}
	return strings.TrimPrefix(component, LokiComponentAll+"-")
}

// Ports every Loki process listens on (Loki's own defaults). Each pod has its own IP, so they may equal
// Cortex's.
const (
	LokiHTTPPort   = 3100
	LokiGRPCPort   = 9095
	LokiGossipPort = 7946
)

// Paths inside a Loki container. The workload builder mounts the volumes at these paths.
const (
	// LokiDataDir holds the WAL, the TSDB index being built, the compactor's work and, for filesystem
	// storage, the chunks: a persistent volume for ingesters, the compactor and the single process.
	LokiDataDir = "/data"
	// LokiConfigFile is the rendered LokiConfig, mounted from a ConfigMap.
	LokiConfigFile = "/etc/loki/config/loki.yaml"
	// LokiRuntimeConfigFile is the rendered LokiRuntimeOverrides, re-read every RuntimeConfigPeriod.
	LokiRuntimeConfigFile = "/etc/loki/runtime/overrides.yaml"
)

// LokiLogsPrefix is where Loki keeps chunks and index in the metrics bucket when spec.logs.storage.bucket is
// unset. Tenant IDs cannot contain '_', so no Cortex tenant directory can be named so.
const LokiLogsPrefix = "_logs/"

// Objects the controller keeps for Loki besides the workloads.
func LokiConfigMapName(cluster string) string        { return cluster + "-loki-config" }
func LokiRuntimeConfigMapName(cluster string) string { return cluster + "-loki-runtime" }
func LokiServiceAccountName(cluster string) string   { return cluster + "-loki" }
func LokiNetworkPolicyName(cluster string) string    { return cluster + "-loki" }

// LokiGossipRingServiceName is the headless Service selecting every Loki pod of a cluster, for Loki's own
// memberlist ring; it publishes not-ready addresses, so pods find each other before they are ready.
func LokiGossipRingServiceName(cluster string) string { return cluster + "-loki-gossip-ring" }

// Keys of the ConfigMaps LokiConfigMapName and LokiRuntimeConfigMapName.
const (
	LokiConfigKey        = "loki.yaml"
	LokiRuntimeConfigKey = "overrides.yaml"
)

// LokiGatewayServices are the Services the gateway sends logs traffic to: pushes to the distributor, queries
// to the query-frontend, tail (a websocket the query-frontend does not proxy) to the querier; for topology
// single, all three are the one Loki process.
func LokiGatewayServices(cluster string, single bool) (distributor, queryFrontend, querier string) {
	if single {
		all := ComponentName(cluster, LokiComponentAll)
		return all, all, all
	}
	return ComponentName(cluster, LokiComponentDistributor), ComponentName(cluster, LokiComponentQueryFrontend),
		ComponentName(cluster, LokiComponentQuerier)
}

// LokiServices are the names of the Loki Services of a topology that the component certificate must cover,
// as CortexServices are Cortex's: Loki's components present the same certificate.
func LokiServices(cluster string, topology v1alpha1.Topology) (services, headless []string) {
	return componentServices(cluster, topology, lokiComponents(topology), LokiGossipRingServiceName(cluster))
}

// ComponentServices are the Services of Cortex and Loki that the component certificate must cover, whether
// logs are on or not: turning logs on or off then reissues no certificate and restarts no Cortex pod.
func ComponentServices(cluster string, topology v1alpha1.Topology) (services, headless []string) {
	services, headless = CortexServices(cluster, topology)
	lokiServices, lokiHeadless := LokiServices(cluster, topology)
	return append(services, lokiServices...), append(headless, lokiHeadless...)
}
