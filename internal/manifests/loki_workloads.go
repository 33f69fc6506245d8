package manifests

import (
	"errors"
	"maps"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
)

// LokiBuildOptions are the Loki part of BuildOptions: the configuration options plus what only the workloads
// need. BuildOptions.Loki is nil when spec.logs is disabled.
type LokiBuildOptions struct {
	LokiOptions

	// Image is the Loki container image, LokiImage(version).
	Image string
	// Config and RuntimeOverrides are the contents of the two Loki ConfigMaps. When nil, BuildAll renders
	// them: LokiConfig(LokiOptions), and LokiRuntimeOverrides with the cluster's defaults and no tenant (the
	// controller passes the rendered overrides of its tenants).
	Config           []byte
	RuntimeOverrides []byte
}

// newLokiBuildOptions are the Loki options of a MetricsCluster as the API server stores it, or nil when its
// logs are off.
func newLokiBuildOptions(mc *v1alpha1.MetricsCluster) *LokiBuildOptions {
	if !mc.Spec.Logs.IsEnabled() {
		return nil
	}
	replication := ReplicationFactor(mc.Spec.Size)
	if mc.Spec.Topology == v1alpha1.TopologySingle {
		replication = 1
	}
	retention := mc.Spec.Retention.LogsDays
	if retention == 0 {
		// The CRD's default, for an object the API server has not defaulted.
		retention = 7
	}
	return &LokiBuildOptions{
		LokiOptions: LokiOptions{
			ClusterName:         mc.Name,
			Namespace:           mc.Namespace,
			Topology:            mc.Spec.Topology,
			Storage:             *mc.Spec.Storage.DeepCopy(),
			Bucket:              mc.Spec.Logs.Storage.Bucket,
			RetentionDays:       retention,
			ReplicationFactor:   replication,
			DataDir:             LokiDataDir,
			ConfigFile:          LokiConfigFile,
			RuntimeConfigFile:   LokiRuntimeConfigFile,
			HTTPPort:            LokiHTTPPort,
			GRPCPort:            LokiGRPCPort,
			GossipPort:          LokiGossipPort,
			DefaultTenantLimits: *mc.Spec.DefaultTenantLimits.DeepCopy(),
		},
		Image: LokiImage(LokiVersion(mc.Spec.Logs)),
	}
}

// LokiVersion is the Loki release a cluster runs: spec.logs.version, or DefaultLokiVersion when empty.
func LokiVersion(logs v1alpha1.LogsSpec) string {
	if logs.Version == "" {
		return DefaultLokiVersion
	}
	return logs.Version
}

// completeLoki checks the Loki options and renders the contents the caller did not give.
func completeLoki(loki *LokiBuildOptions) error {
	var errs []error
	if loki.Image == "" {
		errs = append(errs, errors.New("the Loki image is required"))
	}
	if loki.Config == nil {
		config, err := LokiConfig(loki.LokiOptions)
		if err != nil {
			errs = append(errs, err)
		}
		loki.Config = config
	} else if err := validateLokiOptions(loki.LokiOptions); err != nil {
		errs = append(errs, err)
	}
	if loki.RuntimeOverrides == nil {
		overrides, err := LokiRuntimeOverrides(loki.DefaultTenantLimits, nil)
		if err != nil {
			errs = append(errs, err)
		}
		loki.RuntimeOverrides = overrides
	}
	return errors.Join(errs...)
}

// AppLoki is the app.kubernetes.io/name of every Loki object.
const AppLoki = "loki"

// ComponentLokiShared is the component label of the objects all Loki components share: the ConfigMaps, the
// ServiceAccount and the NetworkPolicy.
const ComponentLokiShared = "loki-shared"

// ComponentLokiGossipRing is the component label of Loki's gossip-ring Service.
const ComponentLokiGossipRing = "loki-gossip-ring"

// LokiPodsSelector selects every Loki pod of a cluster, whatever its component.
func LokiPodsSelector(cluster string) map[string]string {
	return map[string]string{LabelName: AppLoki, LabelInstance: cluster}
}

// lokiComponents are the Loki components of the cluster's topology, in the order of their objects.
func lokiComponents(topology v1alpha1.Topology) []string {
	if topology == v1alpha1.TopologySingle {
		return []string{LokiComponentAll}
	}
	return LokiMicroservicesComponents
}

// LokiComponents are the Loki components of a topology, for the controller's status.
func LokiComponents(topology v1alpha1.Topology) []string {
	return append([]string(nil), lokiComponents(topology)...)
}

// lokiStateful says whether a Loki component keeps data on a persistent volume: the WAL of the ingesters,
// the compactor's work, and everything (chunks too, for filesystem storage) of the single process.
func lokiStateful(component string) bool {
	switch component {
	case LokiComponentAll, LokiComponentIngester, LokiComponentCompactor:
		return true
	}
	return false
}

// LokiPresets is the table of replicas and resources per size and Loki component, like Presets for Cortex.
// The compactor runs one replica in every size: Loki allows one compactor at a time.
//
//	size    component            replicas  cpu   memory  mem limit  volume
//	demo    loki                        1  250m  512Mi   1Gi        10Gi (filesystem.size when set)
//	demo    loki-distributor            1  100m  128Mi   512Mi      -
//	demo    loki-ingester               1  250m  512Mi   1Gi        10Gi
//	demo    loki-querier                1  100m  256Mi   1Gi        -
//	demo    loki-query-frontend         1  100m  128Mi   256Mi      -
//	demo    loki-compactor              1  100m  256Mi   1Gi        10Gi
//	small   loki                        1  500m  1Gi     2Gi        10Gi (filesystem.size when set)
//	small   loki-distributor            2  250m  256Mi   1Gi        -
//	small   loki-ingester               3  500m  1Gi     4Gi        20Gi
//	small   loki-querier                2  250m  512Mi   2Gi        -
//	small   loki-query-frontend         2  100m  128Mi   512Mi      -
//	small   loki-compactor              1  250m  512Mi   2Gi        20Gi
//	medium  loki                        1  1     2Gi     4Gi        10Gi (filesystem.size when set)
//	medium  loki-distributor            3  500m  512Mi   2Gi        -
//	medium  loki-ingester               5  1     2Gi     8Gi        50Gi
//	medium  loki-querier                3  500m  1Gi     4Gi        -
//	medium  loki-query-frontend         2  250m  256Mi   1Gi        -
//	medium  loki-compactor              1  500m  1Gi     4Gi        50Gi
var LokiPresets = map[v1alpha1.SizePreset]map[string]Preset{
	v1alpha1.SizeDemo: {
		LokiComponentAll:           {1, "250m", "512Mi", "1Gi", "10Gi"},
		LokiComponentDistributor:   {1, "100m", "128Mi", "512Mi", ""},
		LokiComponentIngester:      {1, "250m", "512Mi", "1Gi", "10Gi"},
		LokiComponentQuerier:       {1, "100m", "256Mi", "1Gi", ""},
		LokiComponentQueryFrontend: {1, "100m", "128Mi", "256Mi", ""},
		LokiComponentCompactor:     {1, "100m", "256Mi", "1Gi", "10Gi"},
	},
	v1alpha1.SizeSmall: {
		LokiComponentAll:           {1, "500m", "1Gi", "2Gi", "10Gi"},
		LokiComponentDistributor:   {2, "250m", "256Mi", "1Gi", ""},
		LokiComponentIngester:      {3, "500m", "1Gi", "4Gi", "20Gi"},
		LokiComponentQuerier:       {2, "250m", "512Mi", "2Gi", ""},
		LokiComponentQueryFrontend: {2, "100m", "128Mi", "512Mi", ""},
		LokiComponentCompactor:     {1, "250m", "512Mi", "2Gi", "20Gi"},
	},
	v1alpha1.SizeMedium: {
		LokiComponentAll:           {1, "1", "2Gi", "4Gi", "10Gi"},
		LokiComponentDistributor:   {3, "500m", "512Mi", "2Gi", ""},
		LokiComponentIngester:      {5, "1", "2Gi", "8Gi", "50Gi"},
		LokiComponentQuerier:       {3, "500m", "1Gi", "4Gi", ""},
		LokiComponentQueryFrontend: {2, "250m", "256Mi", "1Gi", ""},
		LokiComponentCompactor:     {1, "500m", "1Gi", "4Gi", "50Gi"},
	},
}

// lokiSizeOf is the size of a Loki component. Ingesters run at least the replication factor; the single
// process's volume follows spec.storage.filesystem.size like Cortex's.
func lokiSizeOf(opts BuildOptions, component string) componentSize {
	size := opts.Size
	if size == "" {
		size = v1alpha1.SizeDemo
	}
	preset := LokiPresets[size][component]
	out := componentSize{
		Replicas: preset.Replicas,
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse(preset.CPU),
				corev1.ResourceMemory: resource.MustParse(preset.Memory),
			},
			Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(preset.MemoryLimit)},
		},
	}
	if preset.Volume != "" {
		out.Volume = resource.MustParse(preset.Volume)
	}
	switch component {
	case LokiComponentAll:
		if fs := opts.Storage.Filesystem; opts.Storage.Type == v1alpha1.StorageFilesystem && fs != nil && fs.Size != nil {
			out.Volume = fs.Size.DeepCopy()
		}
	case LokiComponentIngester:
		out.Replicas = max(out.Replicas, int32(opts.Loki.ReplicationFactor))
	}
	return out
}

// BuildLoki are the Loki objects of a cluster whose logs are on (opts.Loki set, contents rendered): the two
// ConfigMaps, the ServiceAccount, the Services, the workloads, the PodDisruptionBudgets and the
// NetworkPolicy.
func BuildLoki(opts BuildOptions) []client.Object {
	if opts.Loki == nil {
		return nil
	}
	objects := []client.Object{
		&corev1.ConfigMap{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
			ObjectMeta: objectMeta(opts, LokiConfigMapName(opts.ClusterName), ComponentLokiShared),
			Data:       map[string]string{LokiConfigKey: string(opts.Loki.Config)},
		},
		&corev1.ConfigMap{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
			ObjectMeta: objectMeta(opts, LokiRuntimeConfigMapName(opts.ClusterName), ComponentLokiShared),
			Data:       map[string]string{LokiRuntimeConfigKey: string(opts.Loki.RuntimeOverrides)},
		},
		buildLokiServiceAccount(opts),
	}
	objects = append(objects, buildLokiServices(opts)...)
	for _, component := range lokiComponents(opts.Topology) {
		if lokiStateful(component) {
			objects = append(objects, buildLokiStatefulSet(opts, component))
		} else {
			objects = append(objects, buildLokiDeployment(opts, component))
		}
	}
	for _, component := range lokiComponents(opts.Topology) {
		if lokiSizeOf(opts, component).Replicas > 1 {
			objects = append(objects, &policyv1.PodDisruptionBudget{
				TypeMeta:   metav1.TypeMeta{APIVersion: "policy/v1", Kind: "PodDisruptionBudget"},
				ObjectMeta: objectMeta(opts, ComponentName(opts.ClusterName, component), component),
				Spec: policyv1.PodDisruptionBudgetSpec{
					MaxUnavailable: ptr.To(intstr.FromInt32(1)),
					Selector:       &metav1.LabelSelector{MatchLabels: SelectorLabels(opts.ClusterName, component)},
				},
			})
		}
	}
	return append(objects, buildLokiNetworkPolicy(opts))
}

// buildLokiStatefulSet is the StatefulSet of a stateful Loki component. Ingesters are updated OnDelete, like
// Cortex's: the controller's upgrade planner (internal/upgrade) replaces them one at a time, each only once
// every Loki ingester is Ready and ACTIVE in the ring as the Loki distributors see it. A RollingUpdate would
// wait for Ready only, and Ready does not say that the distributors see the ingester ACTIVE yet. The compactor
// and the single process roll themselves (RollingUpdate, one replica), once the planner applies their template.
func buildLokiStatefulSet(opts BuildOptions, component string) *appsv1.StatefulSet {
	size := lokiSizeOf(opts, component)
	strategy := appsv1.RollingUpdateStatefulSetStrategyType
	if component == LokiComponentIngester {
		strategy = appsv1.OnDeleteStatefulSetStrategyType
	}
	return buildStatefulSet(opts, component, size, strategy, component == LokiComponentAll, lokiPodTemplate(opts, component, size))
}

// buildLokiDeployment is the Deployment of a stateless Loki component; its data directory (the queriers'
// index cache) is an emptyDir.
func buildLokiDeployment(opts BuildOptions, component string) *appsv1.Deployment {
	size := lokiSizeOf(opts, component)
	return buildDeployment(opts, component, size, lokiPodTemplate(opts, component, size))
}

// lokiPodTemplate is the pod of a Loki component; its container is named after the component. Its
// ConfigHashAnnotation changes with the Loki configuration only: Loki re-reads the runtime overrides itself,
// so a tenant's new limit rolls no pod. Its TLSHashAnnotation changes with the component certificate, which
// Loki's gRPC and memberlist clients read only at start, so a renewal rolls Loki through the upgrade planner
// like a configuration change.
func lokiPodTemplate(opts BuildOptions, component string, size componentSize) corev1.PodTemplateSpec {
	loki := opts.Loki
	grace := DefaultTerminationGracePeriodSeconds
	if component == LokiComponentIngester || component == LokiComponentAll {
		grace = IngesterTerminationGracePeriodSeconds
	}
	ports, mounts, volumes := engineFiles(opts, engineLayout{
		HTTPPort: loki.HTTPPort, GRPCPort: loki.GRPCPort, GossipPort: loki.GossipPort,
		ConfigFile: loki.ConfigFile, RuntimeConfigFile: loki.RuntimeConfigFile, DataDir: loki.DataDir,
		ConfigMap: LokiConfigMapName(opts.ClusterName), ConfigKey: LokiConfigKey,
		RuntimeConfigMap: LokiRuntimeConfigMapName(opts.ClusterName), RuntimeConfigKey: LokiRuntimeConfigKey,
		Stateful: lokiStateful(component),
	})
	annotations := map[string]string{ConfigHashAnnotation: ConfigHash(loki.Config)}
	mounts, volumes = mountComponentTLS(opts.ClusterName, loki.TLS, mounts, volumes, annotations)
	return withTemplateHash(corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{
			Labels:      Labels(opts.ClusterName, component),
			Annotations: annotations,
		},
		Spec: corev1.PodSpec{
			ServiceAccountName:            LokiServiceAccountName(opts.ClusterName),
			AutomountServiceAccountToken:  ptr.To(false),
			SecurityContext:               podSecurityContext(),
			TerminationGracePeriodSeconds: ptr.To(grace),
			Containers: []corev1.Container{{
				Name:         component,
				Image:        loki.Image,
				Args:         LokiArgs(loki.LokiOptions, component),
				Env:          LokiEnv(loki.LokiOptions),
				Ports:        ports,
				Resources:    size.Resources,
				VolumeMounts: mounts,
				ReadinessProbe: &corev1.Probe{
					ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
						Path: "/ready", Port: intstr.FromString(PortHTTP), Scheme: corev1.URISchemeHTTP,
					}},
					InitialDelaySeconds: 15,
					PeriodSeconds:       10,
					TimeoutSeconds:      1,
					FailureThreshold:    3,
				},
				SecurityContext: restrictedSecurityContext(),
			}},
			Volumes: volumes,
		},
	})
}

// buildLokiServices are, per Loki component, a ClusterIP and a headless Service (http and grpc), and for
// topology microservices Loki's gossip-ring headless Service.
func buildLokiServices(opts BuildOptions) []client.Object {
	loki := opts.Loki
	ports := []corev1.ServicePort{
		{Name: PortHTTP, Port: int32(loki.HTTPPort), TargetPort: intstr.FromString(PortHTTP), Protocol: corev1.ProtocolTCP},
		{Name: PortGRPC, Port: int32(loki.GRPCPort), TargetPort: intstr.FromString(PortGRPC), Protocol: corev1.ProtocolTCP},
	}
	var objects []client.Object
	for _, component := range lokiComponents(opts.Topology) {
		selector := SelectorLabels(opts.ClusterName, component)
		objects = append(objects, &corev1.Service{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
			ObjectMeta: objectMeta(opts, ComponentName(opts.ClusterName, component), component),
			Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, Selector: selector, Ports: ports},
		})
		headless := objectMeta(opts, HeadlessServiceName(opts.ClusterName, component), component)
		headless.Labels[LabelHeadless] = "true"
		objects = append(objects, &corev1.Service{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
			ObjectMeta: headless,
			Spec: corev1.ServiceSpec{
				Type: corev1.ServiceTypeClusterIP, ClusterIP: corev1.ClusterIPNone, Selector: selector, Ports: ports,
				// A query-frontend is ready only once a querier has connected, and queriers find it through
				// this Service: publishing only ready addresses would keep both waiting for ever.
				PublishNotReadyAddresses: component == LokiComponentQueryFrontend,
			},
		})
	}
	if opts.Topology == v1alpha1.TopologyMicroservices {
		meta := objectMeta(opts, LokiGossipRingServiceName(opts.ClusterName), ComponentLokiGossipRing)
		meta.Labels[LabelHeadless] = "true"
		objects = append(objects, &corev1.Service{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
			ObjectMeta: meta,
			Spec: corev1.ServiceSpec{
				Type:                     corev1.ServiceTypeClusterIP,
				ClusterIP:                corev1.ClusterIPNone,
				Selector:                 LokiPodsSelector(opts.ClusterName),
				PublishNotReadyAddresses: true,
				Ports: []corev1.ServicePort{{
					Name: PortGossip, Port: int32(loki.GossipPort), TargetPort: intstr.FromString(PortGossip), Protocol: corev1.ProtocolTCP,
				}},
			},
		})
	}
	return objects
}

// buildLokiNetworkPolicy admits traffic to the Loki pods of a cluster only from:
//   - the Loki pods of the same cluster, on every port (gRPC, gossip, HTTP);
//   - the cluster's gateway pods, on the HTTP port (push, queries, tail);
//   - any pod labelled app.kubernetes.io/name=prometheus, in any namespace, on the HTTP port (scraping);
//   - the opstrace controller, on the HTTP port (the ingester ring, during upgrades).
func buildLokiNetworkPolicy(opts BuildOptions) client.Object {
	httpPort := []networkingv1.NetworkPolicyPort{{
		Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(intstr.FromInt32(int32(opts.Loki.HTTPPort))),
	}}
	return &networkingv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
		ObjectMeta: objectMeta(opts, LokiNetworkPolicyName(opts.ClusterName), ComponentLokiShared),
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: LokiPodsSelector(opts.ClusterName)},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{
				{From: []networkingv1.NetworkPolicyPeer{{
					PodSelector: &metav1.LabelSelector{MatchLabels: LokiPodsSelector(opts.ClusterName)},
				}}},
				{
					From: []networkingv1.NetworkPolicyPeer{{
						PodSelector: &metav1.LabelSelector{MatchLabels: GatewayPodsSelector(opts.ClusterName)},
					}},
					Ports: httpPort,
				},
				{
					From: []networkingv1.NetworkPolicyPeer{{
						NamespaceSelector: &metav1.LabelSelector{},
						PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{LabelName: "prometheus"}},
					}},
					Ports: httpPort,
				},
				{
					From: []networkingv1.NetworkPolicyPeer{{
						NamespaceSelector: &metav1.LabelSelector{},
						PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{
							LabelName: "opstrace", LabelComponent: "controller",
						}},
					}},
					Ports: httpPort,
				},
			},
		},
	}
}

// buildLokiServiceAccount is the identity of every Loki pod. Loki never calls the API server, so no token is
// mounted; cloud identities (IRSA, workload identity) come from spec.serviceAccounts.loki.annotations.
func buildLokiServiceAccount(opts BuildOptions) client.Object {
	meta := objectMeta(opts, LokiServiceAccountName(opts.ClusterName), ComponentLokiShared)
	meta.Annotations = maps.Clone(opts.ServiceAccounts.Loki.Annotations)
	return &corev1.ServiceAccount{
		TypeMeta:                     metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta:                   meta,
		AutomountServiceAccountToken: ptr.To(false),
	}
}
