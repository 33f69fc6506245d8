package installer

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/installer/plan"
	"github.com/opstrace/opstrace/internal/manifests"
	"github.com/opstrace/opstrace/internal/version"
)

// CloudConfigMap holds the rendered cluster config (key config.yaml) in the controller namespace, so that
// upgrade and status need no file.
const CloudConfigMap = "opstrace-cluster-config"

// cloudWorkload is what the Kubernetes objects of a cloud install need from the cloud steps.
type cloudWorkload struct {
	Name    string
	Config  config.Config
	Storage v1alpha1.StorageSpec
	// ServiceAccountAnnotations go on the Cortex service account: the IRSA role or the GCP service account.
	ServiceAccountAnnotations map[string]string
}

// BuildCloudObjects are the objects the installer applies after Helm installed the controller: the
// stored config, the workload namespace, the Cortex service account's cloud identity, the MetricsCluster
// and its Tenants. Pure, so that the objects are tested without a cluster.
func BuildCloudObjects(w cloudWorkload, namespace string) []client.Object {
	cfg := w.Config
	objs := []client.Object{
		&corev1.ConfigMap{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
			ObjectMeta: metav1.ObjectMeta{Name: CloudConfigMap, Namespace: ControllerNamespace},
			Data:       map[string]string{"config.yaml": string(config.Render(cfg)), "cluster": w.Name}},
		&corev1.Namespace{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"}, ObjectMeta: metav1.ObjectMeta{Name: namespace}},
		// Only the annotations: the controller owns the rest of this ServiceAccount through its own field manager.
		&corev1.ServiceAccount{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
			ObjectMeta: metav1.ObjectMeta{Name: manifests.CortexServiceAccountName(w.Name), Namespace: namespace,
				Annotations: w.ServiceAccountAnnotations}},
		&v1alpha1.MetricsCluster{TypeMeta: metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: "MetricsCluster"},
			ObjectMeta: metav1.ObjectMeta{Name: w.Name, Namespace: namespace},
			Spec: v1alpha1.MetricsClusterSpec{
				Topology:  v1alpha1.TopologyMicroservices,
				Size:      v1alpha1.SizePreset(cfg.Size),
				Storage:   w.Storage,
				Retention: v1alpha1.RetentionSpec{MetricsDays: int32(cfg.MetricRetentionDays), LogsDays: int32(cfg.LogRetentionDays)},
				Gateway: v1alpha1.GatewaySpec{ServiceType: corev1.ServiceTypeLoadBalancer, AllowedSourceRanges: cfg.DataAPIAuthorizedIPRanges,
					Hostname: gatewayHostname(cfg)},
			}},
	}
	for _, tenant := range cfg.Tenants {
		objs = append(objs, &v1alpha1.Tenant{TypeMeta: metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: "Tenant"},
			ObjectMeta: metav1.ObjectMeta{Name: tenant, Namespace: namespace}})
	}
	return objs
}

func gatewayHostname(cfg config.Config) string {
	if cfg.DNS == nil {
		return ""
	}
	return "metrics." + cfg.DNS.Domain
}

// kubeStep installs the controller with Helm and applies BuildCloudObjects, on the cluster a kubeconfig
// reaches. It has no cheap observation, so it plans an apply every run; every part of it is idempotent
// (Helm upgrade, server-side apply).
type kubeStep struct {
	deps       []string
	kubeconfig func(ctx context.Context) (string, error)
	workload   func(ctx context.Context) (cloudWorkload, error)
}

func (s *kubeStep) Name() string        { return "kubernetes/opstrace" }
func (s *kubeStep) DependsOn() []string { return s.deps }

func (s *kubeStep) Observe(context.Context) (plan.Observation, error) { return plan.Observation{}, nil }

func (s *kubeStep) Plan(obs plan.Observation) plan.Change {
	if obs.Exists { // reversed: destroy leaves in-cluster objects to the deletion of the cluster
		return plan.NoChange()
	}
	return plan.Change{Action: plan.Create, Diff: []string{
		"Helm release " + ControllerRelease + " (controller " + version.Version + ", CRDs by server-side apply)",
		"ConfigMap " + ControllerNamespace + "/" + CloudConfigMap + " with the rendered config",
		"MetricsCluster and Tenants in namespace " + LocalNamespace,
	}}
}

func (s *kubeStep) PlanDestroy(plan.Observation) plan.Change { return plan.NoChange() }

func (s *kubeStep) Apply(ctx context.Context, c plan.Change) error {
	kubeconfig, err := s.kubeconfig(ctx)
	if err != nil {
		return err
	}
	w, err := s.workload(ctx)
	if err != nil {
		return err
	}
	values := map[string]any{"image": map[string]any{"tag": version.Version}, "gatewayImage": map[string]any{"tag": version.Version}}
	if _, err := InstallController(ctx, kubeconfig, ControllerNamespace, values); err != nil {
		return fmt.Errorf("install the controller: %w", err)
	}
	kube, err := kubeClient(kubeconfig)
	if err != nil {
		return err
	}
	for _, obj := range BuildCloudObjects(w, LocalNamespace) {
		if err := kube.Patch(ctx, obj, client.Apply, installerFieldOwner, client.ForceOwnership); err != nil {
			return fmt.Errorf("apply %s %s: %w", obj.GetObjectKind().GroupVersionKind().Kind, obj.GetName(), err)
		}
	}
	return nil
}

func kubeClient(kubeconfig string) (client.Client, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(v1alpha1.AddToScheme(scheme))
	return client.New(cfg, client.Options{Scheme: scheme})
}

// writeExecKubeconfig writes a kubeconfig (0600) whose user runs command to get a token, as
// `aws eks update-kubeconfig` and `gcloud container clusters get-credentials` do.
func writeExecKubeconfig(path, name, server string, ca []byte, command string, args []string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Exec: &clientcmdapi.ExecConfig{
		APIVersion: "client.authentication.k8s.io/v1beta1", Command: command, Args: args, InteractiveMode: clientcmdapi.NeverExecInteractiveMode}}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	cfg.CurrentContext = name
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}
