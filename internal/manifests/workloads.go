package manifests

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path"

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

// Port names of the Cortex containers and Services.
const (
	PortHTTP   = "http"
	PortGRPC   = "grpc"
	PortGossip = "gossip"
)

// Volume names of the Cortex pods.
const (
	volumeData           = "data"
	volumeConfig         = "config"
	volumeRuntime        = "runtime"
	volumeTmp            = "tmp"
	volumeGCSCredentials = "gcs-credentials"
	volumeCortexTLS      = "tls"
	gcsCredentialsKey    = "service-account.json"
)

// Termination grace periods: an ingester (and the single process, which contains one) flushes its head
// block to storage before it exits.
const (
	IngesterTerminationGracePeriodSeconds int64 = 240
	DefaultTerminationGracePeriodSeconds  int64 = 30
)

// runAsUser is the unprivileged user of every container: the Cortex image does not set one, and
// runAsNonRoot refuses an image that would run as root.
const runAsUser int64 = 10001

// stateful says whether a Cortex component keeps data on a persistent volume.
func stateful(component string) bool {
	switch component {
	case TargetAll, ComponentIngester, ComponentStoreGateway, ComponentCompactor:
		return true
	}
	return false
}

// BuildCortexWorkloads are the StatefulSets and Deployments of the cluster's Cortex components: one
// StatefulSet "<cluster>-all" for topology single; for microservices, Deployments for distributor, querier
// and query-frontend and StatefulSets for ingester, store-gateway and compactor.
func BuildCortexWorkloads(opts BuildOptions) []client.Object {
	var objects []client.Object
	for _, component := range cortexComponents(opts) {
		if stateful(component) {
			objects = append(objects, BuildCortexStatefulSet(opts, component))
		} else {
			objects = append(objects, BuildCortexDeployment(opts, component))
		}
	}
	return objects
}

// BuildCortexStatefulSet is the StatefulSet of a stateful component, with a volume claim template mounted at
// DataDir. Ingesters are updated OnDelete: the controller replaces them one at a time, after the previous
// one has flushed and rejoined the ring, which a RollingUpdate cannot wait for.
func BuildCortexStatefulSet(opts BuildOptions, component string) *appsv1.StatefulSet {
	size := sizeOf(opts, component)
	strategy := appsv1.RollingUpdateStatefulSetStrategyType
	if component == ComponentIngester {
		strategy = appsv1.OnDeleteStatefulSetStrategyType
	}
	return buildStatefulSet(opts, component, size, strategy, component == TargetAll, cortexPodTemplate(opts, component, size))
}

// BuildCortexDeployment is the Deployment of a stateless component; its data directory is an emptyDir.
func BuildCortexDeployment(opts BuildOptions, component string) *appsv1.Deployment {
	size := sizeOf(opts, component)
	return buildDeployment(opts, component, size, cortexPodTemplate(opts, component, size))
}

// buildStatefulSet is the StatefulSet of a stateful Cortex or Loki component: pods started in parallel, one
// volume claim template for the data directory. The single process (singleProcess) of a filesystem cluster
// keeps its blocks or chunks on that volume, so it gets spec.storage.filesystem's storage class.
func buildStatefulSet(opts BuildOptions, component string, size componentSize, strategy appsv1.StatefulSetUpdateStrategyType,
	singleProcess bool, template corev1.PodTemplateSpec) *appsv1.StatefulSet {
	claim := corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: volumeData, Labels: Labels(opts.ClusterName, component)},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceStorage: size.Volume},
			},
		},
	}
	if fs := opts.Storage.Filesystem; singleProcess && opts.Storage.Type == v1alpha1.StorageFilesystem && fs != nil {
		claim.Spec.StorageClassName = fs.StorageClassName
	}
	return &appsv1.StatefulSet{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "StatefulSet"},
		ObjectMeta: objectMeta(opts, ComponentName(opts.ClusterName, component), component),
		Spec: appsv1.StatefulSetSpec{
			Replicas:             ptr.To(size.Replicas),
			Selector:             &metav1.LabelSelector{MatchLabels: SelectorLabels(opts.ClusterName, component)},
			ServiceName:          HeadlessServiceName(opts.ClusterName, component),
			PodManagementPolicy:  appsv1.ParallelPodManagement,
			UpdateStrategy:       appsv1.StatefulSetUpdateStrategy{Type: strategy},
			Template:             template,
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{claim},
		},
	}
}

// buildDeployment is the Deployment of a stateless Cortex or Loki component, rolled by Kubernetes.
func buildDeployment(opts BuildOptions, component string, size componentSize, template corev1.PodTemplateSpec) *appsv1.Deployment {
	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: objectMeta(opts, ComponentName(opts.ClusterName, component), component),
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(size.Replicas),
			Selector: &metav1.LabelSelector{MatchLabels: SelectorLabels(opts.ClusterName, component)},
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType},
			Template: template,
		},
	}
}

// restrictedSecurityContext is the container security context of every container the builders make: it
// meets the Pod Security Standard "restricted".
func restrictedSecurityContext() *corev1.SecurityContext {
	return &corev1.SecurityContext{
		RunAsNonRoot:             ptr.To(true),
		ReadOnlyRootFilesystem:   ptr.To(true),
		AllowPrivilegeEscalation: ptr.To(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

// podSecurityContext runs every container as runAsUser, and makes volumes writable for it.
func podSecurityContext() *corev1.PodSecurityContext {
	return &corev1.PodSecurityContext{
		RunAsNonRoot:   ptr.To(true),
		RunAsUser:      ptr.To(runAsUser),
		RunAsGroup:     ptr.To(runAsUser),
		FSGroup:        ptr.To(runAsUser),
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

// mountComponentTLS adds the component certificate (Secret CortexTLSSecretName) to a Cortex or Loki pod,
// mounted at tls.Dir, and its hash to the pod's annotations; with tls nil it adds nothing. Neither Cortex's
// nor Loki's clients re-read the files: a new certificate restarts the pods (ComponentTLS).
func mountComponentTLS(cluster string, tls *ComponentTLS, mounts []corev1.VolumeMount, volumes []corev1.Volume, annotations map[string]string) ([]corev1.VolumeMount, []corev1.Volume) {
	if tls == nil {
		return mounts, volumes
	}
	mounts = append(mounts, corev1.VolumeMount{Name: volumeCortexTLS, MountPath: tls.Dir, ReadOnly: true})
	volumes = append(volumes, corev1.Volume{Name: volumeCortexTLS, VolumeSource: corev1.VolumeSource{
		Secret: &corev1.SecretVolumeSource{
			SecretName: CortexTLSSecretName(cluster),
			Items: []corev1.KeyToPath{
				{Key: corev1.TLSCertKey, Path: corev1.TLSCertKey},
				{Key: corev1.TLSPrivateKeyKey, Path: corev1.TLSPrivateKeyKey},
				{Key: TLSCAKey, Path: TLSCAKey},
			},
		},
	}})
	annotations[TLSHashAnnotation] = tls.Hash
	return mounts, volumes
}

// cortexPodTemplate is the pod of a Cortex component. Its ConfigHashAnnotation changes with the Cortex
// configuration only: the runtime overrides are re-read by Cortex, so a tenant's new limit rolls no pod. Its
// TLSHashAnnotation changes with the component certificate, which Cortex's clients read only at start.
func cortexPodTemplate(opts BuildOptions, component string, size componentSize) corev1.PodTemplateSpec {
	grace := DefaultTerminationGracePeriodSeconds
	if component == ComponentIngester || component == TargetAll {
		grace = IngesterTerminationGracePeriodSeconds
	}
	ports, mounts, volumes := engineFiles(opts, engineLayout{
		HTTPPort: opts.HTTPPort, GRPCPort: opts.GRPCPort, GossipPort: opts.GossipPort,
		ConfigFile: opts.ConfigFile, RuntimeConfigFile: opts.RuntimeConfigFile, DataDir: opts.DataDir,
		ConfigMap: CortexConfigMapName(opts.ClusterName), ConfigKey: CortexConfigKey,
		RuntimeConfigMap: RuntimeConfigMapName(opts.ClusterName), RuntimeConfigKey: RuntimeConfigKey,
		Stateful: stateful(component),
	})
	annotations := map[string]string{ConfigHashAnnotation: ConfigHash(opts.CortexConfig)}
	mounts, volumes = mountComponentTLS(opts.ClusterName, opts.TLS, mounts, volumes, annotations)
	name := component
	if component == TargetAll {
		name = AppCortex
	}
	return withTemplateHash(corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{
			Labels:      Labels(opts.ClusterName, component),
			Annotations: annotations,
		},
		Spec: corev1.PodSpec{
			ServiceAccountName:            CortexServiceAccountName(opts.ClusterName),
			AutomountServiceAccountToken:  ptr.To(false),
			SecurityContext:               podSecurityContext(),
			TerminationGracePeriodSeconds: ptr.To(grace),
			Containers: []corev1.Container{{
				Name:         name,
				Image:        opts.CortexImage,
				Args:         CortexArgs(opts.Options, component),
				Env:          CortexEnv(opts.Options),
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

// withTemplateHash stamps the template with TemplateHashAnnotation.
func withTemplateHash(template corev1.PodTemplateSpec) corev1.PodTemplateSpec {
	template.Annotations[TemplateHashAnnotation] = TemplateHash(template)
	return template
}

// TemplateHash is the value of TemplateHashAnnotation: the first 16 bytes, in hex, of the SHA-256 of the
// template's JSON with TemplateHashAnnotation left out. encoding/json sorts map keys, so it is deterministic.
func TemplateHash(template corev1.PodTemplateSpec) string {
	template = *template.DeepCopy()
	delete(template.Annotations, TemplateHashAnnotation)
	data, err := json.Marshal(template)
	if err != nil {
		// A PodTemplateSpec always marshals; a failure is a programming error.
		panic(fmt.Sprintf("marshal pod template: %v", err))
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:16])
}

// configMapVolume is a volume with one key of a ConfigMap, as file.
func configMapVolume(volume, configMap, key, file string) corev1.Volume {
	return corev1.Volume{Name: volume, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: configMap},
		Items:                []corev1.KeyToPath{{Key: key, Path: file}},
	}}}
}

// BuildCortexServices are, per component, a ClusterIP Service and a headless Service (http and grpc ports),
// and for topology microservices the gossip-ring headless Service, which selects every Cortex pod of the
// cluster and publishes not-ready addresses so that pods find each other before they are ready.
func BuildCortexServices(opts BuildOptions) []client.Object {
	ports := []corev1.ServicePort{
		{Name: PortHTTP, Port: int32(opts.HTTPPort), TargetPort: intstr.FromString(PortHTTP), Protocol: corev1.ProtocolTCP},
		{Name: PortGRPC, Port: int32(opts.GRPCPort), TargetPort: intstr.FromString(PortGRPC), Protocol: corev1.ProtocolTCP},
	}
	var objects []client.Object
	for _, component := range cortexComponents(opts) {
		selector := SelectorLabels(opts.ClusterName, component)
		objects = append(objects, &corev1.Service{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
			ObjectMeta: objectMeta(opts, ComponentName(opts.ClusterName, component), component),
			Spec: corev1.ServiceSpec{
				Type:     corev1.ServiceTypeClusterIP,
				Selector: selector,
				Ports:    ports,
			},
		})
		headless := objectMeta(opts, HeadlessServiceName(opts.ClusterName, component), component)
		headless.Labels[LabelHeadless] = "true"
		objects = append(objects, &corev1.Service{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
			ObjectMeta: headless,
			Spec: corev1.ServiceSpec{
				Type:      corev1.ServiceTypeClusterIP,
				ClusterIP: corev1.ClusterIPNone,
				Selector:  selector,
				Ports:     ports,
				// Queriers find the query-frontends through this Service, and a query-frontend is not ready
				// until a querier has connected: listing only ready ones would deadlock the pair.
				PublishNotReadyAddresses: component == ComponentQueryFrontend,
			},
		})
	}
	if opts.Topology == v1alpha1.TopologyMicroservices {
		meta := objectMeta(opts, GossipRingServiceName(opts.ClusterName), ComponentGossipRing)
		meta.Labels[LabelHeadless] = "true"
		objects = append(objects, &corev1.Service{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
			ObjectMeta: meta,
			Spec: corev1.ServiceSpec{
				Type:                     corev1.ServiceTypeClusterIP,
				ClusterIP:                corev1.ClusterIPNone,
				Selector:                 CortexPodsSelector(opts.ClusterName),
				PublishNotReadyAddresses: true,
				Ports: []corev1.ServicePort{{
					Name: PortGossip, Port: int32(opts.GossipPort), TargetPort: intstr.FromString(PortGossip), Protocol: corev1.ProtocolTCP,
				}},
			},
		})
	}
	return objects
}

// BuildCortexPodDisruptionBudgets allow one pod at a time of every component with more than one replica to
// be evicted.
func BuildCortexPodDisruptionBudgets(opts BuildOptions) []client.Object {
	var objects []client.Object
	for _, component := range cortexComponents(opts) {
		if pdb := podDisruptionBudget(opts, component); pdb != nil {
			objects = append(objects, pdb)
		}
	}
	return objects
}

// podDisruptionBudget is the PodDisruptionBudget of a component, or nil when it runs one replica.
func podDisruptionBudget(opts BuildOptions, component string) *policyv1.PodDisruptionBudget {
	if sizeOf(opts, component).Replicas <= 1 {
		return nil
	}
	return &policyv1.PodDisruptionBudget{
		TypeMeta:   metav1.TypeMeta{APIVersion: "policy/v1", Kind: "PodDisruptionBudget"},
		ObjectMeta: objectMeta(opts, ComponentName(opts.ClusterName, component), component),
		Spec: policyv1.PodDisruptionBudgetSpec{
			MaxUnavailable: ptr.To(intstr.FromInt32(1)),
			Selector:       &metav1.LabelSelector{MatchLabels: SelectorLabels(opts.ClusterName, component)},
		},
	}
}

// BuildCortexNetworkPolicy admits traffic to the Cortex pods of a cluster only from:
//   - the Cortex pods of the same cluster, on every port (gRPC, gossip, HTTP);
//   - the cluster's gateway pods, on the HTTP port;
//   - any pod labelled app.kubernetes.io/name=prometheus, in any namespace, on the HTTP port (scraping).
func BuildCortexNetworkPolicy(opts BuildOptions) client.Object {
	httpPort := []networkingv1.NetworkPolicyPort{{
		Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(intstr.FromInt32(int32(opts.HTTPPort))),
	}}
	return &networkingv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
		ObjectMeta: objectMeta(opts, CortexNetworkPolicyName(opts.ClusterName), ComponentCortexShared),
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: CortexPodsSelector(opts.ClusterName)},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{
				{From: []networkingv1.NetworkPolicyPeer{{
					PodSelector: &metav1.LabelSelector{MatchLabels: CortexPodsSelector(opts.ClusterName)},
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
					// The opstrace controller (chart charts/opstrace, any namespace) reads the ingester ring
					// during upgrades.
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

// engineLayout is what a Cortex or Loki pod takes from its engine's settings: its ports, where its
// configuration files come from and go, and whether its data directory is a volume claim.
type engineLayout struct {
	HTTPPort, GRPCPort, GossipPort                           int
	ConfigFile, RuntimeConfigFile, DataDir                   string
	ConfigMap, ConfigKey, RuntimeConfigMap, RuntimeConfigKey string
	Stateful                                                 bool
}

// engineFiles are the container ports, mounts and volumes of a Cortex or Loki pod: both ConfigMaps, the data
// directory (an emptyDir unless the component is stateful), a bounded /tmp, and the GCS key when the storage
// uses one. Only topology microservices gossips.
func engineFiles(opts BuildOptions, l engineLayout) ([]corev1.ContainerPort, []corev1.VolumeMount, []corev1.Volume) {
	ports := []corev1.ContainerPort{
		{Name: PortHTTP, ContainerPort: int32(l.HTTPPort), Protocol: corev1.ProtocolTCP},
		{Name: PortGRPC, ContainerPort: int32(l.GRPCPort), Protocol: corev1.ProtocolTCP},
	}
	if opts.Topology == v1alpha1.TopologyMicroservices {
		// The single process keeps its rings in memory and does not gossip.
		ports = append(ports, corev1.ContainerPort{Name: PortGossip, ContainerPort: int32(l.GossipPort), Protocol: corev1.ProtocolTCP})
	}
	mounts := []corev1.VolumeMount{
		{Name: volumeConfig, MountPath: path.Dir(l.ConfigFile), ReadOnly: true},
		{Name: volumeRuntime, MountPath: path.Dir(l.RuntimeConfigFile), ReadOnly: true},
		{Name: volumeData, MountPath: l.DataDir},
		{Name: volumeTmp, MountPath: "/tmp"},
	}
	volumes := []corev1.Volume{
		configMapVolume(volumeConfig, l.ConfigMap, l.ConfigKey, path.Base(l.ConfigFile)),
		configMapVolume(volumeRuntime, l.RuntimeConfigMap, l.RuntimeConfigKey, path.Base(l.RuntimeConfigFile)),
	}
	if !l.Stateful {
		volumes = append(volumes, corev1.Volume{Name: volumeData, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
	}
	volumes = append(volumes, corev1.Volume{Name: volumeTmp, VolumeSource: corev1.VolumeSource{
		EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: ptr.To(resource.MustParse("256Mi"))},
	}})
	if gcs := opts.Storage.GCS; opts.Storage.Type == v1alpha1.StorageGCS && gcs != nil && gcs.CredentialsSecret != nil {
		mounts = append(mounts, corev1.VolumeMount{Name: volumeGCSCredentials, MountPath: path.Dir(GCSCredentialsFile), ReadOnly: true})
		volumes = append(volumes, corev1.Volume{Name: volumeGCSCredentials, VolumeSource: corev1.VolumeSource{
			Secret: &corev1.SecretVolumeSource{
				SecretName: gcs.CredentialsSecret.Name,
				Items:      []corev1.KeyToPath{{Key: gcsCredentialsKey, Path: path.Base(GCSCredentialsFile)}},
			},
		}})
	}
	return ports, mounts, volumes
}
