// Package manifests holds the pure builders of a MetricsCluster: Options in, configuration and Kubernetes
// objects out. Nothing here talks to an API server, so everything is tested with table tests and golden files.
package manifests

import (
	"fmt"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
)

// DefaultCortexVersion is the Cortex release a MetricsCluster runs when spec.version is empty. It is the one
// place the pinned version lives; hack/install-tool.sh builds the same release for the tests.
const DefaultCortexVersion = "v1.21.1"

// PreviousCortexVersion is the release before DefaultCortexVersion that upgrades are tested from: the newest
// v1.20 the Go module proxy serves (it refuses v1.21.0).
const PreviousCortexVersion = "v1.20.1"

// Cortex components. Each is both a Cortex -target and the suffix of the names of its Kubernetes objects.
const (
	// TargetAll is the one process of topology single: every component below plus ruler and alertmanager.
	TargetAll = "all"

	ComponentDistributor   = "distributor"
	ComponentIngester      = "ingester"
	ComponentQuerier       = "querier"
	ComponentQueryFrontend = "query-frontend"
	ComponentStoreGateway  = "store-gateway"
	ComponentCompactor     = "compactor"
)

// MicroservicesComponents are the Cortex targets of topology microservices, one workload each.
var MicroservicesComponents = []string{
	ComponentDistributor,
	ComponentIngester,
	ComponentQuerier,
	ComponentQueryFrontend,
	ComponentStoreGateway,
	ComponentCompactor,
}

// Ports every Cortex process listens on. The controller sets Options' ports to these; tests pick free ones.
const (
	DefaultHTTPPort   = 8080
	DefaultGRPCPort   = 9095
	DefaultGossipPort = 7946
)

// Paths inside a Cortex container. The workload builder mounts the volumes at these paths.
const (
	// DataDir is the root of everything Cortex writes: a persistent volume for ingesters, compactors,
	// store-gateways and the single process, an emptyDir elsewhere.
	DataDir = "/data"
	// ConfigFile is the rendered CortexConfig, mounted from a ConfigMap.
	ConfigFile = "/etc/cortex/config/cortex.yaml"
	// RuntimeConfigFile is the rendered RuntimeOverrides, mounted from a ConfigMap that Cortex re-reads
	// every RuntimeConfigPeriod, so per-tenant limits change without a restart.
	RuntimeConfigFile = "/etc/cortex/runtime/overrides.yaml"
	// GCSCredentialsFile is where the key of gcs.credentialsSecret (key service-account.json) is mounted.
	GCSCredentialsFile = "/etc/cortex/gcs/service-account.json"
)

// ClusterDomain is the DNS domain of the Kubernetes cluster's Services.
const ClusterDomain = "cluster.local"

// ComponentName is the name of a component's workload and Service, such as "metrics-ingester".
func ComponentName(cluster, component string) string {
	return cluster + "-" + component
}

// HeadlessServiceName is the name of a component's headless Service, which resolves to every pod.
func HeadlessServiceName(cluster, component string) string {
	return ComponentName(cluster, component) + "-headless"
}

// GossipRingServiceName is the headless Service selecting every Cortex pod of a cluster that takes part in
// the memberlist ring; it must publish not-ready addresses, so pods find each other before they are ready.
func GossipRingServiceName(cluster string) string {
	return cluster + "-gossip-ring"
}

// ServiceAddress is host:port of a Service in the cluster's DNS.
func ServiceAddress(service, namespace string, port int) string {
	return fmt.Sprintf("%s.%s.svc.%s:%d", service, namespace, ClusterDomain, port)
}

// ReplicationFactor is how many ingesters receive every sample for a size preset: 1 for demo (no node may
// be lost), 3 for small and medium.
func ReplicationFactor(size v1alpha1.SizePreset) int {
	if size == v1alpha1.SizeDemo || size == "" {
		return 1
	}
	return 3
}

// ComponentGateway is the authenticating HTTPS gateway in front of Cortex (cmd/gateway).
const ComponentGateway = "gateway"

// Ports of the gateway: HTTPS for tenants' traffic, plain HTTP for /metrics and probes inside the cluster.
const (
	GatewayHTTPSPort    = 8443
	GatewayInternalPort = 8081
)

// Objects the controller keeps for a cluster besides the workloads.
func CortexConfigMapName(cluster string) string  { return cluster + "-cortex-config" }
func RuntimeConfigMapName(cluster string) string { return cluster + "-cortex-runtime" }
func CASecretName(cluster string) string         { return cluster + "-ca" }
func GatewayTLSSecretName(cluster string) string { return cluster + "-gateway-tls" }

// SigningKeysSecretName holds the cluster's token signing keys: one PEM per key, under "<key id>.pem", and
// the id of the key that signs new tokens under SigningKeyCurrentKey. Older keys stay to verify old tokens.
func SigningKeysSecretName(cluster string) string { return cluster + "-token-signing-keys" }

const SigningKeyCurrentKey = "current"

// GatewayAuthSecretName is what the gateway watches through the API server: the public key set
// (GatewayAuthKeysKey, a JWKS) and the tenant list (GatewayAuthTenantsKey, gateway.TenantList as JSON).
// Watching instead of mounting makes a new, revoked or deleted tenant count within a second; a mounted
// volume can take a minute to be updated by the kubelet.
func GatewayAuthSecretName(cluster string) string { return cluster + "-gateway-auth" }

const (
	GatewayAuthKeysKey    = "keys.json"
	GatewayAuthTenantsKey = "tenants.json"
)

// TenantTokenSecretName holds a tenant's current token under the key TenantTokenKey.
func TenantTokenSecretName(tenant string) string { return "tenant-" + tenant + "-token" }

const TenantTokenKey = "token"

// TokenAudience is the aud claim of the tokens of a cluster: tokens of another cluster, even one of the same
// name in another namespace, are refused.
func TokenAudience(namespace, cluster string) string { return namespace + "/" + cluster }

// ServiceAccounts: Cortex pods never call the API server (no token is mounted); the gateway watches its auth
// Secret and the Cortex EndpointSlices, so it gets a token and a Role.
func CortexServiceAccountName(cluster string) string  { return cluster + "-cortex" }
func GatewayServiceAccountName(cluster string) string { return cluster + "-gateway" }

// GatewayRoleName names both the gateway's Role and its RoleBinding.
func GatewayRoleName(cluster string) string { return cluster + "-gateway" }

// GatewayMetricsServiceName is the ClusterIP Service of the gateway's internal port when the gateway's own
// Service is a LoadBalancer or NodePort, so /metrics is never exposed outside the Kubernetes cluster.
func GatewayMetricsServiceName(cluster string) string { return cluster + "-gateway-metrics" }

// CortexNetworkPolicyName is the NetworkPolicy that admits traffic to the Cortex pods of a cluster.
func CortexNetworkPolicyName(cluster string) string { return cluster + "-cortex" }

// PrometheusRuleName is the PrometheusRule holding the cluster's alerts.
func PrometheusRuleName(cluster string) string { return cluster + "-alerts" }

// Keys of the ConfigMaps CortexConfigMapName and RuntimeConfigMapName.
const (
	CortexConfigKey  = "cortex.yaml"
	RuntimeConfigKey = "overrides.yaml"
)

// Gateway paths: the TLS Secret GatewayTLSSecretName is mounted at GatewayTLSDir.
const (
	GatewayTLSDir      = "/etc/opstrace/tls"
	GatewayTLSCertFile = GatewayTLSDir + "/tls.crt"
	GatewayTLSKeyFile  = GatewayTLSDir + "/tls.key"
)

// CortexImage is the Cortex container image of a release such as v1.21.1.
func CortexImage(version string) string { return "cortexproject/cortex:" + version }
