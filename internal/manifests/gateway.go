package manifests

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
)

// Port names of the gateway's container and Services.
const (
	PortHTTPS       = "https"
	PortHTTPMetrics = "http-metrics"
	// GatewayServicePort is the port of the gateway's Service that clients connect to.
	GatewayServicePort = 443
)

// Environment variables of the gateway container, from the downward API.
const (
	PodNamespaceEnv = "POD_NAMESPACE"
)

const volumeTLS = "tls"

// BuildGateway are the gateway's objects: ServiceAccount, Role, RoleBinding, Deployment, Service (and, for
// a LoadBalancer or NodePort Service, a ClusterIP Service for its metrics port), and a PodDisruptionBudget
// when it runs more than one replica.
func BuildGateway(opts BuildOptions) []client.Object {
	objects := []client.Object{
		BuildGatewayServiceAccount(opts),
		BuildGatewayRole(opts),
		BuildGatewayRoleBinding(opts),
		BuildGatewayDeployment(opts),
	}
	objects = append(objects, BuildGatewayServices(opts)...)
	if pdb := podDisruptionBudget(opts, ComponentGateway); pdb != nil {
		objects = append(objects, pdb)
	}
	return objects
}

// BuildGatewayServiceAccount is the gateway's identity. Its token is mounted: the gateway watches its auth
// Secret and the Cortex EndpointSlices through the API server.
func BuildGatewayServiceAccount(opts BuildOptions) client.Object {
	return &corev1.ServiceAccount{
		TypeMeta:                     metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta:                   objectMeta(opts, GatewayServiceAccountName(opts.ClusterName), ComponentGateway),
		AutomountServiceAccountToken: ptr.To(true),
	}
}

// BuildGatewayRole lets the gateway read its one auth Secret (get, and list/watch with a field selector on
// its name) and list/watch EndpointSlices in the namespace.
func BuildGatewayRole(opts BuildOptions) client.Object {
	return &rbacv1.Role{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "Role"},
		ObjectMeta: objectMeta(opts, GatewayRoleName(opts.ClusterName), ComponentGateway),
		Rules: []rbacv1.PolicyRule{
			{
				APIGroups:     []string{""},
				Resources:     []string{"secrets"},
				ResourceNames: []string{GatewayAuthSecretName(opts.ClusterName)},
				Verbs:         []string{"get", "list", "watch"},
			},
			{
				APIGroups: []string{"discovery.k8s.io"},
				Resources: []string{"endpointslices"},
				Verbs:     []string{"list", "watch"},
			},
		},
	}
}

// BuildGatewayRoleBinding grants the gateway's Role to its ServiceAccount.
func BuildGatewayRoleBinding(opts BuildOptions) client.Object {
	return &rbacv1.RoleBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "RoleBinding"},
		ObjectMeta: objectMeta(opts, GatewayRoleName(opts.ClusterName), ComponentGateway),
		RoleRef: rbacv1.RoleRef{
			APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: GatewayRoleName(opts.ClusterName),
		},
		Subjects: []rbacv1.Subject{{
			Kind: rbacv1.ServiceAccountKind, Name: GatewayServiceAccountName(opts.ClusterName), Namespace: opts.Namespace,
		}},
	}
}

// GatewayArgs are the gateway container's args. The Cortex Services it forwards to are the distributor's and
// the query-frontend's, or the single process's for topology single; with logs on, the Loki Services of
// LokiGatewayServices too.
func GatewayArgs(opts BuildOptions) []string {
	distributor, queryFrontend := ComponentDistributor, ComponentQueryFrontend
	if opts.Topology == v1alpha1.TopologySingle {
		distributor, queryFrontend = TargetAll, TargetAll
	}
	args := []string{
		"--audience=" + TokenAudience(opts.Namespace, opts.ClusterName),
		"--namespace=$(" + PodNamespaceEnv + ")",
		"--auth-secret=" + GatewayAuthSecretName(opts.ClusterName),
		"--distributor-service=" + ComponentName(opts.ClusterName, distributor),
		"--query-frontend-service=" + ComponentName(opts.ClusterName, queryFrontend),
		"--tls-cert-file=" + GatewayTLSCertFile,
		"--tls-key-file=" + GatewayTLSKeyFile,
		fmt.Sprintf("--listen-address=%s:%d", PodIPReference, GatewayHTTPSPort),
		fmt.Sprintf("--internal-listen-address=%s:%d", PodIPReference, GatewayInternalPort),
	}
	if opts.Loki != nil {
		// Logs: pushes to the distributor, queries to the query-frontend, tail (a websocket the
		// query-frontend does not proxy) to the querier.
		distributor, queryFrontend, querier := LokiGatewayServices(opts.ClusterName, opts.Topology == v1alpha1.TopologySingle)
		args = append(args,
			"--loki-distributor-service="+distributor,
			"--loki-query-frontend-service="+queryFrontend,
			"--loki-querier-service="+querier,
		)
	}
	return args
}

// BuildGatewayDeployment is the gateway's Deployment: replicas and resources from the size preset or
// spec.components.gateway, the TLS Secret GatewayTLSSecretName mounted at GatewayTLSDir.
func BuildGatewayDeployment(opts BuildOptions) client.Object {
	size := sizeOf(opts, ComponentGateway)
	probe := func(path string) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: path, Port: intstr.FromString(PortHTTPMetrics), Scheme: corev1.URISchemeHTTP,
			}},
			PeriodSeconds:    10,
			TimeoutSeconds:   1,
			FailureThreshold: 3,
		}
	}
	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: objectMeta(opts, ComponentName(opts.ClusterName, ComponentGateway), ComponentGateway),
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(size.Replicas),
			Selector: &metav1.LabelSelector{MatchLabels: GatewayPodsSelector(opts.ClusterName)},
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: Labels(opts.ClusterName, ComponentGateway)},
				Spec: corev1.PodSpec{
					ServiceAccountName:            GatewayServiceAccountName(opts.ClusterName),
					AutomountServiceAccountToken:  ptr.To(true),
					SecurityContext:               podSecurityContext(),
					TerminationGracePeriodSeconds: ptr.To(DefaultTerminationGracePeriodSeconds),
					Containers: []corev1.Container{{
						Name:  ComponentGateway,
						Image: opts.GatewayImage,
						Args:  GatewayArgs(opts),
						Env: []corev1.EnvVar{
							{Name: PodNamespaceEnv, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
							{Name: PodIPEnv, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
						},
						Ports: []corev1.ContainerPort{
							{Name: PortHTTPS, ContainerPort: GatewayHTTPSPort, Protocol: corev1.ProtocolTCP},
							{Name: PortHTTPMetrics, ContainerPort: GatewayInternalPort, Protocol: corev1.ProtocolTCP},
						},
						Resources:       size.Resources,
						VolumeMounts:    []corev1.VolumeMount{{Name: volumeTLS, MountPath: GatewayTLSDir, ReadOnly: true}},
						ReadinessProbe:  probe("/-/ready"),
						LivenessProbe:   probe("/-/healthy"),
						SecurityContext: restrictedSecurityContext(),
					}},
					Volumes: []corev1.Volume{{Name: volumeTLS, VolumeSource: corev1.VolumeSource{
						Secret: &corev1.SecretVolumeSource{SecretName: GatewayTLSSecretName(opts.ClusterName)},
					}}},
				},
			},
		},
	}
}

// BuildGatewayServices is the gateway's Service of type spec.gateway.serviceType: port 443 named https to the
// container's 8443, and the internal port 8081 named http-metrics. A LoadBalancer or NodePort Service would
// expose the internal port outside the Kubernetes cluster, so then it carries https only and a second,
// ClusterIP Service GatewayMetricsServiceName carries http-metrics.
func BuildGatewayServices(opts BuildOptions) []client.Object {
	serviceType := opts.Gateway.ServiceType
	if serviceType == "" {
		serviceType = corev1.ServiceTypeClusterIP
	}
	https := corev1.ServicePort{
		Name: PortHTTPS, Port: GatewayServicePort, TargetPort: intstr.FromString(PortHTTPS), Protocol: corev1.ProtocolTCP,
	}
	metrics := corev1.ServicePort{
		Name: PortHTTPMetrics, Port: GatewayInternalPort, TargetPort: intstr.FromString(PortHTTPMetrics), Protocol: corev1.ProtocolTCP,
	}
	service := &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: objectMeta(opts, ComponentName(opts.ClusterName, ComponentGateway), ComponentGateway),
		Spec: corev1.ServiceSpec{
			Type:     serviceType,
			Selector: GatewayPodsSelector(opts.ClusterName),
			Ports:    []corev1.ServicePort{https, metrics},
		},
	}
	if serviceType == corev1.ServiceTypeClusterIP {
		return []client.Object{service}
	}
	service.Spec.Ports = []corev1.ServicePort{https}
	if serviceType == corev1.ServiceTypeLoadBalancer {
		service.Spec.LoadBalancerSourceRanges = append([]string(nil), opts.Gateway.AllowedSourceRanges...)
	}
	internal := &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: objectMeta(opts, GatewayMetricsServiceName(opts.ClusterName), ComponentGateway),
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: GatewayPodsSelector(opts.ClusterName),
			Ports:    []corev1.ServicePort{metrics},
		},
	}
	return []client.Object{service, internal}
}
