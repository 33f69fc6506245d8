package installer

// The in-cluster part of a cloud install, shared by AWS and GCP: the Helm release of the controller, the
// stored config, the MetricsCluster and its Tenants (kubeStep); what `status` reports about them; and what
// `destroy` removes from the cluster before the cloud resources go.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/release"
	"helm.sh/helm/v3/pkg/storage/driver"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

// CloudConfigMap holds the rendered cluster config (key config.yaml) in the controller namespace, so that
// upgrade, status and destroy need no file.
const CloudConfigMap = "opstrace-cluster-config"

// installerHashAnnotation is the hash of what the installer applied to an object: an object that carries
// the hash of the desired object is as desired, so a rerun of create reads it and writes nothing. Fields
// changed by hand are put back when the config changes, the trade internal/apply makes too.
const installerHashAnnotation = "opstrace.io/installer-hash"

// cloudWorkload is what the Kubernetes objects of a cloud install need from the cloud steps.
type cloudWorkload struct {
	Name    string
	Config  config.Config
	Storage v1alpha1.StorageSpec
	// LogsBucket is Loki's own bucket (spec.logs.storage.bucket).
	LogsBucket string
	// ServiceAccounts gives the Cortex and Loki pods their cloud identity: an IRSA role or a GCP service
	// account each, limited to its own bucket.
	ServiceAccounts v1alpha1.ServiceAccountsSpec
	// StorageClass, when set, is made the cluster's default: the volumes of the ingesters, store-gateways,
	// compactor and Loki use the default class (EKS has none since Kubernetes 1.30).
	StorageClass *storagev1.StorageClass
}

// BuildCloudObjects are the objects the installer applies after Helm installed the controller: the
// stored config, the workload namespace, the MetricsCluster and its Tenants, each annotated with the hash
// of its content. Pure, so that the objects are tested without a cluster.
func BuildCloudObjects(w cloudWorkload, namespace string) []client.Object {
	cfg := w.Config
	objs := []client.Object{
		&corev1.ConfigMap{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
			ObjectMeta: metav1.ObjectMeta{Name: CloudConfigMap, Namespace: ControllerNamespace},
			Data:       map[string]string{"config.yaml": string(config.Render(cfg)), "cluster": w.Name}},
		&corev1.Namespace{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"}, ObjectMeta: metav1.ObjectMeta{Name: namespace}},
		&v1alpha1.MetricsCluster{TypeMeta: metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: "MetricsCluster"},
			ObjectMeta: metav1.ObjectMeta{Name: w.Name, Namespace: namespace},
			Spec: v1alpha1.MetricsClusterSpec{
				Topology:  v1alpha1.TopologyMicroservices,
				Size:      v1alpha1.SizePreset(cfg.Size),
				Storage:   w.Storage,
				Retention: v1alpha1.RetentionSpec{MetricsDays: int32(cfg.MetricRetentionDays), LogsDays: int32(cfg.LogRetentionDays)},
				Gateway: v1alpha1.GatewaySpec{ServiceType: corev1.ServiceTypeLoadBalancer, AllowedSourceRanges: cfg.DataAPIAuthorizedIPRanges,
					Hostname: gatewayHostname(cfg), TLS: gatewayIssuer(cfg)},
				Logs:            v1alpha1.LogsSpec{Storage: v1alpha1.LogsStorageSpec{Bucket: w.LogsBucket}},
				ServiceAccounts: w.ServiceAccounts,
			}},
	}
	for _, tenant := range cfg.Tenants {
		objs = append(objs, &v1alpha1.Tenant{TypeMeta: metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: "Tenant"},
			ObjectMeta: metav1.ObjectMeta{Name: tenant, Namespace: namespace}})
	}
	if w.StorageClass != nil {
		sc := w.StorageClass.DeepCopy()
		sc.TypeMeta = metav1.TypeMeta{APIVersion: "storage.k8s.io/v1", Kind: "StorageClass"}
		sc.Annotations = map[string]string{"storageclass.kubernetes.io/is-default-class": "true"}
		objs = append(objs, sc)
	}
	for _, o := range objs {
		annotations := maps.Clone(o.GetAnnotations())
		if annotations == nil {
			annotations = map[string]string{}
		}
		annotations[installerHashAnnotation] = contentHash(o)
		o.SetAnnotations(annotations)
	}
	return objs
}

// contentHash hashes an object as built, before the hash annotation is added.
func contentHash(v any) string {
	data, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("hash %T: %v", v, err)) // built objects and values always marshal
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:12])
}

// gatewayHostname is the gateway's name with the config's dns: the record the DNS step makes, the name
// the gateway's certificate covers.
func gatewayHostname(cfg config.Config) string {
	if cfg.DNS == nil {
		return ""
	}
	return cloud.GatewayHostname(cfg.DNS.Domain)
}

// controllerValues are the Helm values of a cloud install: the images of the config file.
func controllerValues(cfg config.Config) map[string]any {
	image := func(ref string) map[string]any {
		repo, tag := splitImage(ref)
		return map[string]any{"repository": repo, "tag": tag}
	}
	return map[string]any{"image": image(cfg.ControllerImage), "gatewayImage": image(cfg.GatewayImage)}
}

// splitImage splits REPOSITORY:TAG[@DIGEST] into the repository and TAG[@DIGEST], which the chart's image.tag
// takes as it is; a ':' before the last '/' belongs to a registry's port.
func splitImage(ref string) (repo, tag string) {
	name, digest, pinned := strings.Cut(ref, "@")
	i := strings.LastIndex(name, ":")
	if i < 0 || i < strings.LastIndex(name, "/") {
		repo = name
	} else {
		repo, tag = name[:i], name[i+1:]
	}
	if pinned {
		tag += "@" + digest
	}
	return repo, tag
}

// chartDigest identifies a chart's content: the embedded chart and the chart of a Helm release match when
// their digests do. The CRDs are part of it: InstallController applies them before the release.
func chartDigest(ch *chart.Chart) string {
	files := append(append([]*chart.File(nil), ch.Templates...), ch.Files...)
	sort.Slice(files, func(i, j int) bool { return files[i].Name < files[j].Name })
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00", ch.Metadata.Version, ch.Metadata.AppVersion)
	for _, f := range files {
		fmt.Fprintf(h, "%s\x00%d\x00", f.Name, len(f.Data))
		h.Write(f.Data)
	}
	values, _ := json.Marshal(ch.Values)
	h.Write(values)
	return hex.EncodeToString(h.Sum(nil)[:12])
}

// kubeStep installs the controller with Helm and applies BuildCloudObjects on the cluster that connect
// reaches, then waits until the MetricsCluster is Ready. Observe reads the Helm release and the objects;
// when they match and the MetricsCluster is Ready, there is nothing to do. Destroy deletes the
// MetricsClusters and every LoadBalancer Service first: their load balancers are made by the cloud, not by
// the installer, and would keep the network from being deleted.
type kubeStep struct {
	deps []string
	// connect reaches the cluster's API server; an error of kind plan.NotFound means the cluster does not
	// exist (yet).
	connect func(ctx context.Context) (*rest.Config, error)
	// workload is what the objects need from the cloud steps; plan.NotFound while it does not exist yet.
	workload func(ctx context.Context) (cloudWorkload, error)
	// out receives the progress of the waits; interval is their poll interval (2 s when zero).
	out      io.Writer
	interval time.Duration
	// readyTimeout bounds the wait for the MetricsCluster to be Ready (20 minutes when zero), and
	// drainTimeout the wait for the load balancers to go (10 minutes when zero).
	readyTimeout, drainTimeout time.Duration
}

const kubeStepName = "kubernetes/opstrace"

func (s *kubeStep) Name() string        { return kubeStepName }
func (s *kubeStep) DependsOn() []string { return s.deps }

// kubeState is what Observe found in the cluster.
type kubeState struct {
	// Absent says why there is no cluster to look at yet ("" when there is one).
	Absent string
	// Unreachable is why the API server could not be used: no answer, or the credentials refused ("" when it could).
	Unreachable string
	// Release: "" when the Helm release is as desired, else what differs.
	Release string
	// Objects that are missing or differ, as "Kind namespace/name".
	Objects []string
	// NotReady says what of the MetricsCluster is not ready ("" when Ready).
	NotReady string
	// For destroy: the MetricsClusters and LoadBalancer Services in the cluster, as namespace/name.
	MetricsClusters, LoadBalancers []string
}

func (s *kubeStep) Observe(ctx context.Context) (plan.Observation, error) {
	restConfig, err := s.connect(ctx)
	if plan.Classify(err) == plan.NotFound {
		return plan.Observation{Detail: kubeState{Absent: "the Kubernetes cluster does not exist yet"}}, nil
	}
	if err != nil {
		return plan.Observation{}, err
	}
	var st kubeState
	kube, err := newKubeClient(restConfig)
	if err != nil {
		return plan.Observation{}, err
	}
	// The objects of destroy first: they need only the API server.
	if st.MetricsClusters, st.LoadBalancers, err = inClusterLoadBalancing(ctx, kube); err != nil {
		if isUnreachable(err) || apierrors.IsForbidden(err) {
			return plan.Observation{Exists: true, Detail: kubeState{Unreachable: err.Error()}}, nil
		}
		return plan.Observation{}, err
	}
	w, err := s.workload(ctx)
	if plan.Classify(err) == plan.NotFound {
		st.Absent = "what the objects name does not exist yet: " + err.Error()
		return plan.Observation{Exists: true, Detail: st}, nil
	}
	if err != nil {
		return plan.Observation{}, err
	}
	if st.Release, err = releaseDiff(restConfig, controllerValues(w.Config)); err != nil {
		return plan.Observation{}, err
	}
	for _, desired := range BuildCloudObjects(w, cloud.Namespace) {
		live := &unstructured.Unstructured{}
		live.SetGroupVersionKind(desired.GetObjectKind().GroupVersionKind())
		err := kube.Get(ctx, client.ObjectKeyFromObject(desired), live)
		if err != nil && !apierrors.IsNotFound(err) && !meta.IsNoMatchError(err) {
			return plan.Observation{}, fmt.Errorf("read %s: %w", objectRef(desired), err)
		}
		if err != nil || live.GetAnnotations()[installerHashAnnotation] != desired.GetAnnotations()[installerHashAnnotation] {
			st.Objects = append(st.Objects, objectRef(desired))
		}
	}
	if st.Release == "" && len(st.Objects) == 0 {
		var mc v1alpha1.MetricsCluster
		if err := kube.Get(ctx, client.ObjectKey{Namespace: cloud.Namespace, Name: w.Name}, &mc); err != nil {
			return plan.Observation{}, fmt.Errorf("read MetricsCluster %s: %w", w.Name, err)
		}
		st.NotReady = notReady(&mc)
	}
	return plan.Observation{Exists: true, Detail: st}, nil
}

func objectRef(o client.Object) string {
	kind := o.GetObjectKind().GroupVersionKind().Kind
	if o.GetNamespace() == "" {
		return kind + " " + o.GetName()
	}
	return kind + " " + o.GetNamespace() + "/" + o.GetName()
}

func (s *kubeStep) Plan(obs plan.Observation) plan.Change {
	st := obs.Detail.(kubeState)
	everything := []string{
		"Helm release " + ControllerRelease + " in " + ControllerNamespace + " (controller, CRDs by server-side apply)",
		"ConfigMap " + ControllerNamespace + "/" + CloudConfigMap + " with the rendered config",
		"MetricsCluster and Tenants in namespace " + cloud.Namespace + ", then wait until it is Ready",
	}
	switch {
	case st.Absent != "":
		return plan.Change{Action: plan.Create, Diff: everything, Desired: st}
	case st.Unreachable != "":
		return plan.Change{Action: plan.Update, Diff: append([]string{"the API server could not be used (" + st.Unreachable + "); apply all of:"}, everything...), Desired: st}
	}
	var diff []string
	if st.Release != "" {
		diff = append(diff, "Helm release "+ControllerRelease+": "+st.Release)
	}
	for _, o := range st.Objects {
		diff = append(diff, "apply "+o)
	}
	action := plan.Update
	if st.Release == "not installed" {
		action = plan.Create
	}
	if len(diff) > 0 {
		return plan.Change{Action: action, Diff: append(diff, "then wait until the MetricsCluster is Ready"), Desired: st}
	}
	if st.NotReady != "" {
		return plan.Change{Action: plan.Update, Diff: []string{"wait until the MetricsCluster is Ready (now: " + st.NotReady + ")"}, Desired: st}
	}
	return plan.NoChange()
}

// PlanDestroy deletes what would keep the cloud network from going: the MetricsClusters (with their
// gateways' load balancers) and any other LoadBalancer Service. The rest of the cluster goes with it.
func (s *kubeStep) PlanDestroy(obs plan.Observation) plan.Change {
	st := obs.Detail.(kubeState)
	switch {
	case !obs.Exists:
		return plan.NoChange()
	case st.Unreachable != "":
		return plan.Change{Action: plan.NoOp, Diff: []string{"SKIPPED: " + skippedDrain(st.Unreachable)}}
	case len(st.MetricsClusters) == 0 && len(st.LoadBalancers) == 0:
		return plan.NoChange()
	}
	var diff []string
	for _, mc := range st.MetricsClusters {
		diff = append(diff, "delete MetricsCluster "+mc)
	}
	for _, lb := range st.LoadBalancers {
		diff = append(diff, "delete LoadBalancer Service "+lb)
	}
	diff = append(diff, "wait until the load balancers are gone (the cloud made them, untagged; they would block the network's deletion)")
	return plan.Change{Action: plan.Delete, Diff: diff, Desired: st}
}

// skippedDrain says what destroy could not do for an unreachable cluster, and what it means.
func skippedDrain(why string) string {
	return "the Kubernetes API could not be used (" + why + "): MetricsClusters and LoadBalancer Services were not deleted; " +
		"load balancers and security groups the cluster made may remain and keep the network from being deleted " +
		"(on AWS, aws/load-balancers deletes the classic ones in the cluster's VPC) — " +
		"delete the others in the cloud console (they name the cluster in their tags) and run destroy again"
}

func (s *kubeStep) Apply(ctx context.Context, c plan.Change) error {
	if c.Action == plan.Delete {
		return s.drain(ctx)
	}
	restConfig, err := s.connect(ctx)
	if err != nil {
		return err
	}
	w, err := s.workload(ctx)
	if err != nil {
		return err
	}
	st, _ := c.Desired.(kubeState)
	if st.Release != "" || st.Absent != "" || st.Unreachable != "" {
		if err := withKubeconfigFile(restConfig, func(kubeconfig string) error {
			_, err := InstallController(ctx, kubeconfig, ControllerNamespace, controllerValues(w.Config))
			return err
		}); err != nil {
			return plan.Errorf(kubeKind(err), "install the controller", err)
		}
	}
	kube, err := newKubeClient(restConfig)
	if err != nil {
		return err
	}
	for _, obj := range BuildCloudObjects(w, cloud.Namespace) {
		if err := kube.Patch(ctx, obj, client.Apply, installerFieldOwner, client.ForceOwnership); err != nil {
			return plan.Errorf(kubeKind(err), "apply "+objectRef(obj), err)
		}
	}
	return s.waitReady(ctx, w.Name)
}

func (s *kubeStep) poll() time.Duration {
	if s.interval > 0 {
		return s.interval
	}
	return 2 * time.Second
}

func (s *kubeStep) printf(format string, args ...any) {
	if s.out != nil {
		fmt.Fprintf(s.out, format, args...)
	}
}

// waitReady waits until the MetricsCluster is Ready, printing what is not ready whenever it changes and
// every minute. It connects again every 5 minutes and after an error: cloud API tokens last minutes (15 on
// EKS), the wait may take longer.
func (s *kubeStep) waitReady(ctx context.Context, name string) error {
	timeout := s.readyTimeout
	if timeout <= 0 {
		timeout = 20 * time.Minute
	}
	start := time.Now()
	var last string
	var lastPrint, connected time.Time
	var kube client.Client
	for {
		state := func() string {
			if kube == nil || time.Since(connected) > 5*time.Minute {
				restConfig, err := s.connect(ctx)
				if err == nil {
					kube, err = newKubeClient(restConfig)
				}
				if err != nil {
					kube = nil
					return err.Error()
				}
				connected = time.Now()
			}
			var mc v1alpha1.MetricsCluster
			if err := kube.Get(ctx, client.ObjectKey{Namespace: cloud.Namespace, Name: name}, &mc); err != nil {
				kube = nil
				return err.Error()
			}
			state := notReady(&mc)
			// A public certificate takes cert-manager a DNS01 challenge: say where it stands.
			if applies, ready, detail := gatewayCertificate(ctx, kube, &mc); state != "" && applies && !ready {
				state += "; " + detail
			}
			return state
		}()
		if state == "" {
			s.printf("%-24s MetricsCluster %s/%s is Ready after %s\n", kubeStepName, cloud.Namespace, name, time.Since(start).Round(time.Second))
			return nil
		}
		if state != last || time.Since(lastPrint) >= time.Minute {
			s.printf("%-24s waiting for MetricsCluster %s/%s (%s): %s\n", kubeStepName, cloud.Namespace, name, time.Since(start).Round(time.Second), state)
			last, lastPrint = state, time.Now()
		}
		if time.Since(start) >= timeout {
			return plan.Errorf(plan.Other, "wait for MetricsCluster "+cloud.Namespace+"/"+name,
				fmt.Errorf("not Ready after %s: %s; run create again to keep waiting, and see every component with status", timeout, state))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for MetricsCluster %s/%s: %w (now: %s)", cloud.Namespace, name, ctx.Err(), state)
		case <-time.After(s.poll()):
		}
	}
}

// notReady says what of a MetricsCluster is not ready: every component condition that is not True, and a
// Degraded condition, by type and message. "" when it is Ready.
func notReady(mc *v1alpha1.MetricsCluster) string {
	if meta.IsStatusConditionTrue(mc.Status.Conditions, v1alpha1.ConditionReady) && mc.Status.ObservedGeneration >= mc.Generation {
		return ""
	}
	if len(mc.Status.Conditions) == 0 {
		return "the controller has not reported a status yet (is it running? kubectl -n " + ControllerNamespace + " get pods)"
	}
	if mc.Status.ObservedGeneration < mc.Generation {
		return fmt.Sprintf("the controller has not reported on the latest spec yet (generation %d, status of %d)", mc.Generation, mc.Status.ObservedGeneration)
	}
	var parts []string
	for _, c := range mc.Status.Conditions {
		switch {
		case c.Type == v1alpha1.ConditionDegraded && c.Status == metav1.ConditionTrue:
			parts = append(parts, "Degraded: "+c.Message)
		case c.Type == v1alpha1.ConditionReady, c.Type == v1alpha1.ConditionProgressing, c.Type == v1alpha1.ConditionDegraded:
		case c.Status != metav1.ConditionTrue && strings.HasSuffix(c.Type, "Ready"):
			parts = append(parts, c.Type+": "+c.Message)
		}
	}
	if len(parts) == 0 {
		if ready := meta.FindStatusCondition(mc.Status.Conditions, v1alpha1.ConditionReady); ready != nil {
			parts = append(parts, "Ready: "+ready.Message)
		} else {
			parts = append(parts, "no Ready condition yet")
		}
	}
	return strings.Join(parts, "; ")
}

// drain deletes every MetricsCluster and every LoadBalancer Service, then waits until the Services are
// gone: the cloud's load balancer controller removes a Service's finalizer once its load balancer is deleted.
func (s *kubeStep) drain(ctx context.Context) error {
	restConfig, err := s.connect(ctx)
	if err != nil {
		return err
	}
	kube, err := newKubeClient(restConfig)
	if err != nil {
		return err
	}
	var clusters v1alpha1.MetricsClusterList
	if err := kube.List(ctx, &clusters); err != nil && !meta.IsNoMatchError(err) {
		return plan.Errorf(kubeKind(err), "list MetricsClusters", err)
	}
	for i := range clusters.Items {
		if err := kube.Delete(ctx, &clusters.Items[i]); client.IgnoreNotFound(err) != nil {
			return plan.Errorf(kubeKind(err), "delete MetricsCluster "+clusters.Items[i].Name, err)
		}
		s.printf("%-24s deleted MetricsCluster %s/%s\n", kubeStepName, clusters.Items[i].Namespace, clusters.Items[i].Name)
	}
	timeout := s.drainTimeout
	if timeout <= 0 {
		timeout = 10 * time.Minute
	}
	start := time.Now()
	for {
		var services corev1.ServiceList
		if err := kube.List(ctx, &services); err != nil {
			return plan.Errorf(kubeKind(err), "list Services", err)
		}
		var left []string
		for i := range services.Items {
			svc := &services.Items[i]
			if svc.Spec.Type != corev1.ServiceTypeLoadBalancer {
				continue
			}
			left = append(left, svc.Namespace+"/"+svc.Name)
			if svc.DeletionTimestamp == nil {
				if err := kube.Delete(ctx, svc); client.IgnoreNotFound(err) != nil {
					return plan.Errorf(kubeKind(err), "delete Service "+svc.Namespace+"/"+svc.Name, err)
				}
			}
		}
		if len(left) == 0 {
			s.printf("%-24s no LoadBalancer Service is left (%s)\n", kubeStepName, time.Since(start).Round(time.Second))
			return nil
		}
		if time.Since(start) >= timeout {
			return plan.Errorf(plan.Other, "wait for the load balancers to go",
				fmt.Errorf("LoadBalancer Services still there after %s: %s; their load balancers would keep the network from being deleted: check the cloud's load balancer controller, or delete the load balancers by hand, then run destroy again",
					timeout, strings.Join(left, ", ")))
		}
		s.printf("%-24s waiting for LoadBalancer Services to go (%s): %s\n", kubeStepName, time.Since(start).Round(time.Second), strings.Join(left, ", "))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(s.poll()):
		}
	}
}

// inClusterLoadBalancing lists the MetricsClusters and the LoadBalancer Services, as namespace/name.
func inClusterLoadBalancing(ctx context.Context, kube client.Client) (clusters, loadBalancers []string, err error) {
	var mcs v1alpha1.MetricsClusterList
	if err := kube.List(ctx, &mcs); err != nil && !meta.IsNoMatchError(err) {
		return nil, nil, err
	}
	for _, mc := range mcs.Items {
		clusters = append(clusters, mc.Namespace+"/"+mc.Name)
	}
	var services corev1.ServiceList
	if err := kube.List(ctx, &services); err != nil {
		return nil, nil, err
	}
	for _, svc := range services.Items {
		if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
			loadBalancers = append(loadBalancers, svc.Namespace+"/"+svc.Name)
		}
	}
	return clusters, loadBalancers, nil
}

// isUnreachable says whether err means the API server could not be reached or refused the credentials.
func isUnreachable(err error) bool {
	var netErr net.Error
	var urlErr *url.Error
	return errors.As(err, &netErr) || errors.As(err, &urlErr) || apierrors.IsUnauthorized(err) ||
		apierrors.IsServiceUnavailable(err) || apierrors.IsTimeout(err)
}

// kubeKind classifies an API server error for the runner: a conflict or an unreachable or busy server
// is retried.
func kubeKind(err error) plan.Kind {
	switch {
	case apierrors.IsConflict(err), apierrors.IsServerTimeout(err), apierrors.IsTooManyRequests(err), isUnreachable(err):
		return plan.Conflict
	case apierrors.IsForbidden(err):
		return plan.PermissionDenied
	}
	return plan.Other
}

// releaseDiff compares the controller's Helm release with the embedded chart and, unless nil, the values:
// "" when they match, else what differs.
func releaseDiff(restConfig *rest.Config, values map[string]any) (string, error) {
	rel, err := readRelease(restConfig, ControllerNamespace, ControllerRelease)
	if err != nil || rel == nil {
		return orNotInstalled(err)
	}
	ch, err := LoadChart()
	if err != nil {
		return "", err
	}
	diff := releaseStatus(rel)
	if rel.Chart == nil || chartDigest(rel.Chart) != chartDigest(ch) {
		diff = append(diff, "another chart (upgrade to this CLI's chart)")
	}
	if values != nil && contentHash(rel.Config) != contentHash(values) {
		diff = append(diff, "other values (images)")
	}
	return strings.Join(diff, ", "), nil
}

// readRelease reads the Helm release name of namespace; nil when it is not installed.
func readRelease(restConfig *rest.Config, namespace, name string) (*release.Release, error) {
	var rel *release.Release
	err := withKubeconfigFile(restConfig, func(kubeconfig string) error {
		cfg, err := helmConfigIn(kubeconfig, namespace)
		if err != nil {
			return err
		}
		rel, err = action.NewGet(cfg).Run(name)
		return err
	})
	if errors.Is(err, driver.ErrReleaseNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read Helm release %s: %w", name, err)
	}
	return rel, nil
}

// orNotInstalled is releaseDiff's answer without a release: the error reading it, else "not installed".
func orNotInstalled(err error) (string, error) {
	if err != nil {
		return "", err
	}
	return "not installed", nil
}

// releaseStatus is what is wrong with a release's status: nothing when it is deployed.
func releaseStatus(rel *release.Release) []string {
	if rel.Info != nil && rel.Info.Status == release.StatusDeployed {
		return nil
	}
	status := "unknown"
	if rel.Info != nil {
		status = rel.Info.Status.String()
	}
	return []string{"status " + status}
}

func helmConfig(kubeconfig string) (*action.Configuration, error) {
	return helmConfigIn(kubeconfig, ControllerNamespace)
}

// helmConfigIn is Helm's configuration for the releases of namespace.
func helmConfigIn(kubeconfig, namespace string) (*action.Configuration, error) {
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig, flags.Namespace = &kubeconfig, &namespace
	cfg := new(action.Configuration)
	if err := cfg.Init(flags, namespace, "secret", func(string, ...any) {}); err != nil {
		return nil, fmt.Errorf("helm: %w", err)
	}
	return cfg, nil
}

// withKubeconfigFile writes restConfig as a kubeconfig file (0600, in a private directory removed
// afterwards) for Helm, which reads its credentials from a file.
func withKubeconfigFile(restConfig *rest.Config, fn func(kubeconfig string) error) error {
	dir, err := os.MkdirTemp("", "opstrace-kube-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "kubeconfig")
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["cluster"] = &clientcmdapi.Cluster{Server: restConfig.Host, CertificateAuthorityData: restConfig.CAData,
		CertificateAuthority: restConfig.CAFile, TLSServerName: restConfig.ServerName}
	cfg.AuthInfos["user"] = &clientcmdapi.AuthInfo{Token: restConfig.BearerToken, TokenFile: restConfig.BearerTokenFile,
		ClientCertificateData: restConfig.CertData, ClientKeyData: restConfig.KeyData,
		ClientCertificate: restConfig.CertFile, ClientKey: restConfig.KeyFile}
	cfg.Contexts["cluster"] = &clientcmdapi.Context{Cluster: "cluster", AuthInfo: "user"}
	cfg.CurrentContext = "cluster"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		return err
	}
	return fn(path)
}

func newKubeClient(restConfig *rest.Config) (client.Client, error) {
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(v1alpha1.AddToScheme(scheme))
	c, err := client.New(restConfig, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", restConfig.Host, err)
	}
	return c, nil
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

// readStoredConfig reads the config that create stored in the cluster.
func readStoredConfig(ctx context.Context, kube client.Client, provider string) (config.Config, error) {
	var cm corev1.ConfigMap
	if err := kube.Get(ctx, client.ObjectKey{Namespace: ControllerNamespace, Name: CloudConfigMap}, &cm); err != nil {
		return config.Config{}, fmt.Errorf("read the stored config (ConfigMap %s/%s): %w", ControllerNamespace, CloudConfigMap, err)
	}
	cfg, err := config.Parse([]byte(cm.Data["config.yaml"]), provider)
	if err != nil {
		return config.Config{}, fmt.Errorf("the stored config (ConfigMap %s/%s) does not parse: %w", ControllerNamespace, CloudConfigMap, err)
	}
	return cfg, nil
}

// clusterConfig is the config of an existing cluster: the file when one is given, else the config stored
// in the cluster, else (the cluster unreachable) the defaults for the region. source says which, for the
// output.
func clusterConfig(ctx context.Context, file func() (config.Config, error), connect func(context.Context) (*rest.Config, error),
	provider string, defaults config.Config) (cfg config.Config, source string, err error) {
	if file != nil {
		cfg, err = file()
		return cfg, "the config file", err
	}
	restConfig, err := connect(ctx)
	if err == nil {
		var kube client.Client
		if kube, err = newKubeClient(restConfig); err == nil {
			if cfg, err = readStoredConfig(ctx, kube, provider); err == nil {
				return cfg, "the config stored in the cluster", nil
			}
		}
	}
	return defaults, "the defaults (the stored config could not be read: " + err.Error() + "; pass -c FILE to compare with your config)", nil
}

// kubeStatus reports the in-cluster part: the controller's release, every condition of the MetricsCluster
// and the gateway's /-/ready probed over HTTPS with the cluster's CA. It returns whether all is healthy.
func kubeStatus(ctx context.Context, out io.Writer, restConfig *rest.Config, name string) (bool, error) {
	kube, err := newKubeClient(restConfig)
	if err != nil {
		return false, err
	}
	healthy := true
	row := func(what string, ok bool, detail string) {
		healthy = healthy && ok
		fmt.Fprintf(out, "%-36s %-5t %s\n", what, ok, detail)
	}
	fmt.Fprintf(out, "%-36s %-5s %s\n", "COMPONENT", "OK", "DETAIL")
	// Another chart than this CLI's is not a fault (an older install, a newer CLI); a failed release is.
	if diff, err := releaseDiff(restConfig, nil); err != nil {
		row("helm/"+ControllerRelease, false, err.Error())
	} else {
		row("helm/"+ControllerRelease, diff == "" || diff == "another chart (upgrade to this CLI's chart)", orDash(diff))
	}
	var mc v1alpha1.MetricsCluster
	if err := kube.Get(ctx, client.ObjectKey{Namespace: cloud.Namespace, Name: name}, &mc); err != nil {
		row("metricscluster/"+name, false, err.Error())
		return false, nil
	}
	conditions := slices.Clone(mc.Status.Conditions)
	sort.SliceStable(conditions, func(i, j int) bool { return conditionOrder(conditions[i].Type) < conditionOrder(conditions[j].Type) })
	if len(conditions) == 0 {
		row("metricscluster/"+name, false, "the controller has not reported a status yet")
	}
	for _, c := range conditions {
		ok := c.Status == metav1.ConditionTrue
		if c.Type == v1alpha1.ConditionDegraded || c.Type == v1alpha1.ConditionProgressing {
			ok = c.Status != metav1.ConditionTrue || c.Type == v1alpha1.ConditionProgressing
		}
		if c.Type == v1alpha1.ConditionMonitoring {
			ok = true // optional: prometheus-operator may not be installed
		}
		row("condition/"+c.Type, ok, c.Reason+": "+c.Message)
	}
	row("gateway", true, orDash(mc.Status.GatewayEndpoint))
	if applies, ready, detail := gatewayCertificate(ctx, kube, &mc); applies {
		if diff, err := certManagerReleaseDiff(restConfig, nil); err != nil {
			row("helm/"+CertManagerRelease, false, err.Error())
		} else {
			row("helm/"+CertManagerRelease, diff == "", orDash(diff))
		}
		row("gateway/certificate", ready, detail)
	}
	probe := probeGateway(ctx, kube, &mc)
	row("gateway/-/ready", probe == "ready", probe)
	return healthy, nil
}

// conditionOrder puts Ready, Degraded and Progressing first, then the components.
func conditionOrder(t string) int {
	switch t {
	case v1alpha1.ConditionReady:
		return 0
	case v1alpha1.ConditionDegraded:
		return 1
	case v1alpha1.ConditionProgressing:
		return 2
	}
	return 3
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// probeGateway asks the gateway's /-/ready over HTTPS where verify connects (cloudGateway: the load
// balancer's address, or the configured host name), trusting what verify trusts. It returns "ready" or
// what went wrong.
func probeGateway(ctx context.Context, kube client.Client, mc *v1alpha1.MetricsCluster) string {
	gw, via, err := cloudGateway(ctx, kube, mc)
	if err != nil {
		return err.Error()
	}
	defer gw.Client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, gw.URL+"/-/ready", nil)
	if err != nil {
		return err.Error()
	}
	res, err := gw.Client.Do(req)
	if err != nil {
		return "via " + via + ": " + err.Error()
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(res.Body, 512))
	if res.StatusCode != http.StatusOK {
		return fmt.Sprintf("via %s: %d %s", via, res.StatusCode, strings.TrimSpace(string(body)))
	}
	return "ready"
}

// serviceAccountsFor builds spec.serviceAccounts from one annotation key and the identity of each workload.
func serviceAccountsFor(key, cortex, loki string) v1alpha1.ServiceAccountsSpec {
	return v1alpha1.ServiceAccountsSpec{
		Cortex: v1alpha1.ServiceAccountSettings{Annotations: map[string]string{key: cortex}},
		Loki:   v1alpha1.ServiceAccountSettings{Annotations: map[string]string{key: loki}},
	}
}

// printCloudStatus prints whether each cloud resource of the cluster is as a create would leave it, then the
// cluster's Kubernetes side, and fails when anything is not healthy. provider is aws or gcp.
func printCloudStatus(ctx context.Context, out io.Writer, provider, name string, steps []plan.Step,
	connect func(context.Context) (*rest.Config, error)) error {
	preview, err := plan.Preview(ctx, steps)
	if err != nil {
		return err
	}
	healthy := true
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "RESOURCE\tSTATE")
	for _, p := range preview {
		state := "ok"
		if p.Change.Action != plan.NoOp {
			healthy = false
			state = "needs " + p.Change.Action.String() + ": " + strings.Join(p.Change.Diff, "; ")
		}
		fmt.Fprintf(w, "%s\t%s\n", p.Name, state)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(out)
	restConfig, err := connect(ctx)
	if err != nil {
		fmt.Fprintf(out, "Kubernetes: not reachable: %v\n", err)
		healthy = false
	} else {
		ok, err := kubeStatus(ctx, out, restConfig, name)
		if err != nil {
			return err
		}
		healthy = healthy && ok
	}
	if !healthy {
		return fmt.Errorf("%s cluster %s is not healthy (above); run create %s %s again to converge what it made",
			strings.ToUpper(provider), name, provider, name)
	}
	return nil
}
