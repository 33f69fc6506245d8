package e2e

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/manifests"
	"github.com/opstrace/opstrace/internal/remotewrite"
	"github.com/opstrace/opstrace/internal/testenv"
	"github.com/opstrace/opstrace/internal/upgrade"
)

// TestUpgrade upgrades Cortex in place from manifests.PreviousCortexVersion to DefaultCortexVersion on one
// local cluster, in both topologies, and reads back every sample written.
//
// The host's gateway port leads to MetricsCluster NAME of namespace opstrace, which create local makes with
// topology single and filesystem storage, both immutable: each subtest replaces it with the cluster it needs.
func TestUpgrade(t *testing.T) {
	if _, err := exec.LookPath("bwrap"); err != nil {
		t.Skip("bwrap not installed: apt-get install bubblewrap")
	}
	from, to := manifests.PreviousCortexVersion, manifests.DefaultCortexVersion
	if err := upgrade.CheckEngineChange(from, to); err != nil {
		t.Fatalf("the skew policy refuses the tested upgrade %s → %s: %v", from, to, err)
	}
	for _, b := range []string{"minio", "cortex-" + from} {
		if _, err := os.Stat(filepath.Join(testenv.RepoRoot(), "bin", b)); err != nil {
			t.Fatalf("bin/%s missing: run `make test-tools` (make test does); it stands for an image of this test", b)
		}
	}
	c, took := createLocalCluster(t, "upgrade")
	t.Logf("create local → ready: %s", took.Round(time.Second))
	u := &upgradeCluster{c: c, kube: c.clientset(t), crc: c.controllerClient(t), ns: "opstrace", from: from, to: to}
	t.Run("single topology keeps every sample", u.testSingle)
	t.Run("microservices under load, controller killed", u.testMicroservices)
}

type upgradeCluster struct {
	c        *localCluster
	kube     *kubernetes.Clientset
	crc      client.Client
	ns       string
	from, to string
}

// replace deletes MetricsCluster NAME and what it leaves behind (pods, volume claims, the gateway's
// certificate), creates it anew with spec, and waits until it runs version from everywhere. It returns the
// gateway's tenant token for tenant default.
func (u *upgradeCluster) replace(t *testing.T, spec v1alpha1.MetricsClusterSpec) string {
	t.Helper()
	ctx := context.Background()
	c, kube, ns := u.c, u.kube, u.ns
	if out, err := c.kubectl("", "delete", "metricscluster", c.name, "-n", ns, "--ignore-not-found"); err != nil {
		t.Fatalf("delete MetricsCluster %s: %v\n%s", c.name, err, out)
	}
	instance := manifests.LabelInstance + "=" + c.name
	eventually(t, 3*time.Minute, "the garbage collector and the node agent removing the previous cluster", func() error {
		pods, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: instance})
		if err != nil {
			return err
		}
		cms, err := kube.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{LabelSelector: instance})
		if err != nil {
			return err
		}
		_, caErr := kube.CoreV1().Secrets(ns).Get(ctx, manifests.GatewayTLSSecretName(c.name), metav1.GetOptions{})
		if n := len(pods.Items) + len(cms.Items); n > 0 || !apierrors.IsNotFound(caErr) {
			return fmt.Errorf("%d pods, %d config maps left; gateway certificate: %v", len(pods.Items), len(cms.Items), caErr)
		}
		return nil
	})
	// Volumes outlive their StatefulSets; a new cluster must not start on the data of another version.
	if out, err := c.kubectl("", "delete", "pvc", "-n", ns, "-l", instance, "--wait=true"); err != nil {
		t.Fatalf("delete the previous cluster's volume claims: %v\n%s", err, out)
	}
	created := time.Now()
	spec.Version = u.from
	spec.Gateway = v1alpha1.GatewaySpec{Hostname: "localhost"}
	// Metrics only: Loki would double the pods on the one node, and its rollout is not under test.
	spec.Logs = v1alpha1.LogsSpec{Enabled: ptr(false)}
	if err := u.crc.Create(ctx, &v1alpha1.MetricsCluster{ObjectMeta: metav1.ObjectMeta{Name: c.name, Namespace: ns}, Spec: spec}); err != nil {
		t.Fatalf("create MetricsCluster %s: %v", c.name, err)
	}
	waitRolledOut(t, u.crc, c.name, ns, u.from, 8*time.Minute)
	t.Logf("topology %s, size %s, Cortex %s: ready after %s", spec.Topology, spec.Size, u.from, time.Since(created).Round(time.Second))
	c.trustGatewayCA(t, kube, ns)
	return c.waitToken(t, kube, ns, "default")
}

// testSingle: `opstrace upgrade local` after the engine version moved keeps every sample written before
// (the WAL and blocks on the single process's volume), and the writes during the restart are retried.
func (u *upgradeCluster) testSingle(t *testing.T) {
	c := u.c
	token := u.replace(t, v1alpha1.MetricsClusterSpec{Topology: v1alpha1.TopologySingle, Size: v1alpha1.SizeDemo,
		Storage: v1alpha1.StorageSpec{Type: v1alpha1.StorageFilesystem}})
	load := startLoad(c, token, 10, 250*time.Millisecond)
	t.Cleanup(load.stop)
	load.waitAcknowledged(t, 20)
	start := time.Now()
	patchSpec(t, u.crc, c.name, u.ns, func(s *v1alpha1.MetricsClusterSpec) { s.Version = u.to })
	out, err := c.opstrace("upgrade", "local", c.name)
	if err != nil || !strings.Contains(out, "verified local cluster") {
		t.Fatalf("opstrace upgrade local: %v\n%s", err, out)
	}
	waitRolledOut(t, u.crc, c.name, u.ns, u.to, time.Minute)
	took := time.Since(start)
	load.waitAcknowledged(t, load.batches()+8) // writes go on after the restart
	load.stop()
	if load.err != nil {
		t.Fatalf("load: %v", load.err)
	}
	written, missing, read := load.readBack(t)
	t.Logf("single topology %s → %s with opstrace upgrade local: %s; samples written (acknowledged) %d, read back %d, lost %d; "+
		"requests %d, failed attempts %d (each retried until acknowledged): %s",
		u.from, u.to, took.Round(time.Second), written, read, missing, load.requests, load.failedAttempts, load.failureSummary())
	if written == 0 || missing != 0 {
		t.Fatalf("%d of %d acknowledged samples are not readable after the upgrade", missing, written)
	}
}

// testMicroservices is the no-loss proof under load: the microservices topology, size small (three
// ingesters, replication factor 3), blocks in a real MinIO running as a pod. While a client writes a bounded,
// continuous remote-write load through the gateway on 127.0.0.1 (retrying failed requests, as Prometheus
// does, and counting them), spec.version moves on; in the middle of the ingester phase the controller is
// killed (SIGKILL). The rollout must resume and finish, having replaced every pod of every Cortex component
// in the planner's order with at most one ingester unavailable; then the gateway is restarted. Every sample
// acknowledged must read back.
func (u *upgradeCluster) testMicroservices(t *testing.T) {
	c, kube, crc, ns, from, to := u.c, u.kube, u.crc, u.ns, u.from, u.to
	const bucket = "cortex-blocks"
	accessKey, secretKey := "opstrace", randomHex(16)
	deployMinIO(t, kube, ns, bucket, accessKey, secretKey)

	token := u.replace(t, v1alpha1.MetricsClusterSpec{
		Topology: v1alpha1.TopologyMicroservices,
		Size:     v1alpha1.SizeSmall,
		Storage: v1alpha1.StorageSpec{Type: v1alpha1.StorageS3, S3: &v1alpha1.S3Storage{
			Bucket: bucket, Endpoint: "minio." + ns + ".svc:9000", Insecure: true,
			CredentialsSecret: &v1alpha1.SecretReference{Name: "minio-credentials"},
		}},
	})

	recorder := recordRollout(t, kube, ns, c.name)
	load := startLoad(c, token, 10, 250*time.Millisecond)
	t.Cleanup(load.stop)
	load.waitAcknowledged(t, 20)

	// The upgrade, with the controller killed in the middle of the ingester phase.
	upgradeStart := time.Now()
	patchSpec(t, crc, c.name, ns, func(s *v1alpha1.MetricsClusterSpec) { s.Version = to })
	midIngesters := fmt.Sprintf("ingesters 1/%d at %s", manifests.Presets[v1alpha1.SizeSmall][manifests.ComponentIngester].Replicas, to)
	waitProgress(t, crc, c.name, ns, midIngesters, 8*time.Minute)
	kill := c.killController(t, kube)
	waitRolledOut(t, crc, c.name, ns, to, 10*time.Minute)
	upgradeTook := time.Since(upgradeStart)
	resumed := kill.newLeader(t)
	t.Logf("upgrade %s → %s under load: %s; controller killed at %q (%s after the upgrade began): a new leader in %s, "+
		"next rollout step %s after the kill", from, to, upgradeTook.Round(time.Second), midIngesters,
		kill.at.Sub(upgradeStart).Round(time.Second), resumed.Round(100*time.Millisecond),
		recorder.firstDeletionAfter(kill.at).Sub(kill.at).Round(100*time.Millisecond))
	recorder.check(t, "upgrade", upgradeStart, time.Now())
	if old := recorder.survivors(); len(old) > 0 {
		t.Errorf("pods from before the upgrade still run: %v", old)
	}
	for _, p := range listPods(t, kube, ns, manifests.LabelName+"="+manifests.AppCortex) {
		if image := p.Spec.Containers[0].Image; image != manifests.CortexImage(to) {
			t.Errorf("after the upgrade pod %s runs %s", p.Name, image)
		}
	}

	// The version change replaced every pod of every Cortex component (recorder.check); the gateway, which
	// is no part of the plan, restarts by its own Deployment.
	restartStart := time.Now()
	if out, err := c.kubectl("", "rollout", "restart", "deployment", manifests.ComponentName(c.name, manifests.ComponentGateway), "-n", ns); err != nil {
		t.Fatalf("restart the gateway: %v\n%s", err, out)
	}
	if out, err := c.kubectl("", "rollout", "status", "deployment", manifests.ComponentName(c.name, manifests.ComponentGateway), "-n", ns, "--timeout=3m"); err != nil {
		t.Fatalf("gateway restart: %v\n%s", err, out)
	}
	t.Logf("gateway restarted under load: %s", time.Since(restartStart).Round(time.Second))

	load.stop()
	if load.err != nil {
		t.Fatalf("load: %v", load.err)
	}
	written, missing, read := load.readBack(t)
	t.Logf("samples written (acknowledged) %d, read back %d, lost %d; requests %d, failed attempts %d (each retried until acknowledged): %s",
		written, read, missing, load.requests, load.failedAttempts, load.failureSummary())
	if written == 0 || missing != 0 {
		t.Fatalf("%d of %d acknowledged samples are not readable after the upgrade and restarts", missing, written)
	}
}

// controllerClient is a controller-runtime client of the cluster, for MetricsClusters.
func (c *localCluster) controllerClient(tb testing.TB) client.Client {
	tb.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		tb.Fatal(err)
	}
	ctrllog.SetLogger(logr.Discard())
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		tb.Fatal(err)
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		tb.Fatal(err)
	}
	crc, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		tb.Fatal(err)
	}
	return crc
}

// trustGatewayCA points the test's HTTP client at the CA of the gateway certificate the controller made for
// the cluster now named c.name (a recreated cluster has a new CA).
func (c *localCluster) trustGatewayCA(t *testing.T, kube *kubernetes.Clientset, ns string) {
	t.Helper()
	var ca []byte
	eventually(t, time.Minute, "the gateway's CA", func() error {
		s, err := kube.CoreV1().Secrets(ns).Get(context.Background(), manifests.GatewayTLSSecretName(c.name), metav1.GetOptions{})
		if err != nil {
			return err
		}
		ca = s.Data["ca.crt"]
		if len(ca) == 0 {
			return fmt.Errorf("secret %s has no ca.crt", s.Name)
		}
		return nil
	})
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		t.Fatal("the gateway CA holds no certificate")
	}
	c.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// waitToken waits until the gateway accepts the tenant's token (the Tenant controller re-issues it for a
// recreated cluster's keys) and returns it.
func (c *localCluster) waitToken(t *testing.T, kube *kubernetes.Clientset, ns, tenant string) string {
	t.Helper()
	var token string
	probe := []remotewrite.Series{{Labels: map[string]string{"__name__": "upgrade_probe"},
		Samples: []remotewrite.Sample{{Value: 1, TimestampMsec: time.Now().UnixMilli()}}}}
	eventually(t, 2*time.Minute, "a write with tenant "+tenant+"'s token accepted by the gateway", func() error {
		s, err := kube.CoreV1().Secrets(ns).Get(context.Background(), manifests.TenantTokenSecretName(tenant), metav1.GetOptions{})
		if err != nil {
			return err
		}
		token = string(s.Data[manifests.TenantTokenKey])
		probe[0].Samples[0].TimestampMsec = time.Now().UnixMilli()
		if code, body := c.push(token, probe); code != http.StatusOK {
			return fmt.Errorf("push: %d %s", code, body)
		}
		return nil
	})
	return token
}

// deployMinIO runs MinIO (image minio/minio, bin/minio on the local cluster) with Service minio on port
// 9000, its root credentials in Secret minio-credentials under the keys Cortex reads, and bucket: MinIO
// serves the top-level directories of its drive as buckets, and an init container makes the bucket's.
func deployMinIO(t *testing.T, kube *kubernetes.Clientset, ns, bucket, accessKey, secretKey string) {
	t.Helper()
	ctx := context.Background()
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "minio-credentials", Namespace: ns},
		StringData: map[string]string{"AWS_ACCESS_KEY_ID": accessKey, "AWS_SECRET_ACCESS_KEY": secretKey},
	}
	if _, err := kube.CoreV1().Secrets(ns).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app": "minio"}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "minio", Namespace: ns},
		Spec: corev1.ServiceSpec{Selector: labels,
			Ports: []corev1.ServicePort{{Name: "s3", Port: 9000, TargetPort: intstr.FromInt32(9000)}}},
	}
	if _, err := kube.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	fromSecret := func(name, key string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: secret.Name}, Key: key}}}
	}
	data := []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
	deployment := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "minio", Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					InitContainers: []corev1.Container{{
						Name: "bucket", Image: "minio/minio", Command: []string{"/bin/mkdir", "-p", "/data/" + bucket}, VolumeMounts: data,
					}},
					Containers: []corev1.Container{{
						Name: "minio", Image: "minio/minio",
						// MinIO refuses to bind an address that is on none of its network interfaces, and the local
						// cluster routes pod addresses to lo (AnyIP) without listing them on it: bind every
						// address. Nothing else on the local cluster listens on 9000 and 9001.
						Args: []string{"server", "/data", "--address", ":9000", "--console-address", ":9001"},
						Env: []corev1.EnvVar{
							fromSecret("MINIO_ROOT_USER", "AWS_ACCESS_KEY_ID"),
							fromSecret("MINIO_ROOT_PASSWORD", "AWS_SECRET_ACCESS_KEY"),
							{Name: "MINIO_BROWSER", Value: "off"},
						},
						Ports:        []corev1.ContainerPort{{Name: "s3", ContainerPort: 9000}},
						VolumeMounts: data,
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/minio/health/ready", Port: intstr.FromInt32(9000)}},
							PeriodSeconds: 1,
						},
					}},
					Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
				},
			},
		},
	}
	if _, err := kube.AppsV1().Deployments(ns).Create(ctx, deployment, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitDeployment(t, kube, ns, "minio", 1)
}

// patchSpec changes the cluster's spec, retrying on conflicts with the controller's status writes.
func patchSpec(t *testing.T, crc client.Client, name, ns string, edit func(*v1alpha1.MetricsClusterSpec)) {
	t.Helper()
	eventually(t, 30*time.Second, "a spec update of MetricsCluster "+name, func() error {
		var mc v1alpha1.MetricsCluster
		if err := crc.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &mc); err != nil {
			return err
		}
		edit(&mc.Spec)
		return crc.Update(context.Background(), &mc)
	})
}

// waitRolledOut waits until the controller has seen the latest spec and reports every component at
// version: status.version, Ready, not Progressing.
func waitRolledOut(t *testing.T, crc client.Client, name, ns, version string, timeout time.Duration) {
	t.Helper()
	last := ""
	eventually(t, timeout, fmt.Sprintf("MetricsCluster %s rolled out at %s", name, version), func() error {
		var mc v1alpha1.MetricsCluster
		if err := crc.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &mc); err != nil {
			return err
		}
		progressing := meta.FindStatusCondition(mc.Status.Conditions, v1alpha1.ConditionProgressing)
		ready := meta.FindStatusCondition(mc.Status.Conditions, v1alpha1.ConditionReady)
		degraded := meta.FindStatusCondition(mc.Status.Conditions, v1alpha1.ConditionDegraded)
		state := fmt.Sprintf("generation %d observed %d, version %q, progressing %s, ready %s, degraded %s",
			mc.Generation, mc.Status.ObservedGeneration, mc.Status.Version, conditionString(progressing), conditionString(ready), conditionString(degraded))
		if state != last {
			t.Logf("  %s", state)
			last = state
		}
		if mc.Status.ObservedGeneration != mc.Generation || mc.Status.Version != version ||
			progressing == nil || progressing.Status != metav1.ConditionFalse || ready == nil || ready.Status != metav1.ConditionTrue {
			return fmt.Errorf("%s", state)
		}
		return nil
	})
}

// waitProgress waits until the Progressing condition's message is message.
func waitProgress(t *testing.T, crc client.Client, name, ns, message string, timeout time.Duration) {
	t.Helper()
	last := ""
	eventually(t, timeout, fmt.Sprintf("MetricsCluster %s progressing: %s", name, message), func() error {
		var mc v1alpha1.MetricsCluster
		if err := crc.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &mc); err != nil {
			return err
		}
		p := meta.FindStatusCondition(mc.Status.Conditions, v1alpha1.ConditionProgressing)
		if got := conditionString(p); got != last {
			t.Logf("  progressing %s", got)
			last = got
		}
		if p == nil || p.Message != message {
			return fmt.Errorf("progressing %s", conditionString(p))
		}
		return nil
	})
}

func conditionString(c *metav1.Condition) string {
	if c == nil {
		return "-"
	}
	if c.Message == "" {
		return string(c.Status)
	}
	return fmt.Sprintf("%s (%s: %s)", c.Status, c.Reason, c.Message)
}

// controllerKill is a SIGKILL of the controller's process, and the leader-election lease it held.
type controllerKill struct {
	kube   *kubernetes.Clientset
	at     time.Time
	holder string
}

// killController SIGKILLs the sandbox of the controller's pod, as a crash would: no lease is released, no
// work is finished. The node agent restarts the container.
func (c *localCluster) killController(t *testing.T, kube *kubernetes.Clientset) controllerKill {
	t.Helper()
	ctx := context.Background()
	lease, err := kube.CoordinationV1().Leases(controllerNamespace).Get(ctx, controllerLease, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the controller's lease: %v", err)
	}
	pods := listPods(t, kube, controllerNamespace, "app.kubernetes.io/component=controller")
	if len(pods) != 1 {
		t.Fatalf("%d controller pods, want 1", len(pods))
	}
	pids := sandboxPIDs(string(pods[0].UID))
	if len(pids) == 0 {
		t.Fatalf("no process of the controller's pod %s found", pods[0].Name)
	}
	for _, pid := range pids {
		n, _ := strconv.Atoi(pid)
		_ = syscall.Kill(n, syscall.SIGKILL)
	}
	t.Logf("killed the controller (pod %s, processes %v)", pods[0].Name, pids)
	return controllerKill{kube: kube, at: time.Now(), holder: deref(lease.Spec.HolderIdentity)}
}

const (
	controllerNamespace = "opstrace-system"
	controllerLease     = "opstrace-controller.opstrace.io"
)

// newLeader is how long after the kill a new controller process held the lease.
func (k controllerKill) newLeader(t *testing.T) time.Duration {
	t.Helper()
	lease, err := k.kube.CoordinationV1().Leases(controllerNamespace).Get(context.Background(), controllerLease, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if deref(lease.Spec.HolderIdentity) == k.holder || lease.Spec.AcquireTime == nil {
		t.Fatalf("the lease is still held by the killed controller %s", k.holder)
	}
	return lease.Spec.AcquireTime.Sub(k.at)
}

// rolloutRecorder watches the cluster's Cortex pods and records when each began to terminate, and how many
// ingesters were unavailable (not Ready, terminating or missing) at once.
type rolloutRecorder struct {
	mu       sync.Mutex
	initial  map[string]string // uid → name of the pods when recording began
	pods     map[string]*corev1.Pod
	replicas int
	events   []podDeletion
	worst    []unavailableAt
}

type podDeletion struct {
	at        time.Time
	pod       string
	component string
}

type unavailableAt struct {
	at   time.Time
	pods []string
}

func recordRollout(t *testing.T, kube *kubernetes.Clientset, ns, cluster string) *rolloutRecorder {
	t.Helper()
	selector := fmt.Sprintf("%s=%s,%s=%s,%s=%s", manifests.LabelName, manifests.AppCortex, manifests.LabelInstance, cluster,
		manifests.LabelManagedBy, manifests.ManagedBy)
	list, err := kube.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	r := &rolloutRecorder{pods: map[string]*corev1.Pod{}, initial: map[string]string{},
		replicas: int(manifests.Presets[v1alpha1.SizeSmall][manifests.ComponentIngester].Replicas)}
	for i := range list.Items {
		r.pods[list.Items[i].Name] = &list.Items[i]
		r.initial[string(list.Items[i].UID)] = list.Items[i].Name
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w, err := kube.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{LabelSelector: selector, ResourceVersion: list.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer w.Stop()
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			r.observe(ev.Type, p)
		}
	}()
	return r
}

func (r *rolloutRecorder) observe(kind watch.EventType, p *corev1.Pod) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old, known := r.pods[p.Name]
	oldUID := known && old.UID == p.UID
	began := (kind == watch.Deleted && (!oldUID || old.DeletionTimestamp == nil)) ||
		(p.DeletionTimestamp != nil && (!oldUID || old.DeletionTimestamp == nil))
	if began {
		r.events = append(r.events, podDeletion{at: time.Now(), pod: p.Name, component: p.Labels[manifests.LabelComponent]})
	}
	if kind == watch.Deleted {
		delete(r.pods, p.Name)
	} else {
		r.pods[p.Name] = p
	}
	var down []string
	for i := range r.replicas {
		name := manifests.ComponentName(p.Labels[manifests.LabelInstance], manifests.ComponentIngester) + "-" + strconv.Itoa(i)
		q, ok := r.pods[name]
		switch {
		case !ok:
			down = append(down, name+" missing")
		case q.DeletionTimestamp != nil:
			down = append(down, name+" terminating")
		case !podReady(q):
			down = append(down, name+" not ready")
		}
	}
	if len(down) > 0 {
		r.worst = append(r.worst, unavailableAt{at: time.Now(), pods: down})
	}
}

// survivors are the pods running now that already ran when recording began.
func (r *rolloutRecorder) survivors() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, p := range r.pods {
		if _, ok := r.initial[string(p.UID)]; ok {
			out = append(out, p.Name)
		}
	}
	sort.Strings(out)
	return out
}

// firstDeletionAfter is when the first pod began to terminate after t; t when none did.
func (r *rolloutRecorder) firstDeletionAfter(t time.Time) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.events {
		if e.at.After(t) {
			return e.at
		}
	}
	return t
}

// check asserts what the rollout between from and to did: every Cortex component's pods replaced in the
// planner's order (a component starts only after the previous one), ingesters from the highest ordinal
// down, and never more than one ingester unavailable at once.
func (r *rolloutRecorder) check(t *testing.T, what string, from, to time.Time) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	var components, ingesters []string
	for _, e := range r.events {
		if e.at.Before(from) || e.at.After(to) {
			continue
		}
		if len(components) == 0 || components[len(components)-1] != e.component {
			components = append(components, e.component)
		}
		if e.component == manifests.ComponentIngester {
			ingesters = append(ingesters, e.pod)
		}
	}
	t.Logf("%s: pods replaced by component, in order: %v; ingesters in order: %v", what, components, ingesters)
	if want := upgrade.Order(v1alpha1.TopologyMicroservices); !slices.Equal(components, want) {
		t.Errorf("%s: components replaced in the order %v, want %v", what, components, want)
	}
	if len(ingesters) != r.replicas || !sort.SliceIsSorted(ingesters, func(i, j int) bool { return ingesters[i] > ingesters[j] }) {
		t.Errorf("%s: ingesters replaced %v, want each once, highest ordinal first", what, ingesters)
	}
	for _, u := range r.worst {
		if !u.at.Before(from) && !u.at.After(to) && len(u.pods) > 1 {
			t.Errorf("%s: %d ingesters unavailable at once at %s: %v", what, len(u.pods), u.at.Format(time.TimeOnly), u.pods)
			break
		}
	}
}

// load is a remote-write client like one Prometheus shard: one request in flight, a batch of one sample per
// series every interval, and a failed request retried (with backoff) until it is acknowledged, never dropped.
type load struct {
	c        *localCluster
	token    string
	series   int
	interval time.Duration
	run      string

	mu             sync.Mutex
	written        [][]remotewrite.Sample // acknowledged samples by series
	requests       int
	failedAttempts int
	failures       map[string]int
	err            error

	quit     chan struct{}
	finished chan struct{}
	once     sync.Once
}

func startLoad(c *localCluster, token string, series int, interval time.Duration) *load {
	l := &load{c: c, token: token, series: series, interval: interval, run: randomHex(4),
		written: make([][]remotewrite.Sample, series), failures: map[string]int{},
		quit: make(chan struct{}), finished: make(chan struct{})}
	go l.loop()
	return l
}

func (l *load) loop() {
	defer close(l.finished)
	tick := time.NewTicker(l.interval)
	defer tick.Stop()
	for seq := 1; ; seq++ {
		select {
		case <-l.quit:
			return
		case <-tick.C:
		}
		sample := remotewrite.Sample{Value: float64(seq), TimestampMsec: time.Now().UnixMilli()}
		batch := make([]remotewrite.Series, l.series)
		for i := range batch {
			batch[i] = remotewrite.Series{
				Labels:  map[string]string{"__name__": "upgrade_load", "run": l.run, "series": strconv.Itoa(i)},
				Samples: []remotewrite.Sample{sample},
			}
		}
		if err := l.send(batch); err != nil {
			l.mu.Lock()
			l.err = err
			l.mu.Unlock()
			return
		}
		l.mu.Lock()
		for i := range batch {
			l.written[i] = append(l.written[i], sample)
		}
		l.mu.Unlock()
	}
}

// send retries the batch until the gateway acknowledges it, as Prometheus does: on connection errors, 5xx
// and 429. Any other answer is an error Prometheus would drop the samples for.
func (l *load) send(batch []remotewrite.Series) error {
	backoff := 50 * time.Millisecond
	deadline := time.Now().Add(3 * time.Minute)
	for {
		code, body := l.c.push(l.token, batch)
		l.mu.Lock()
		l.requests++
		if code != http.StatusOK {
			l.failedAttempts++
			reason := strconv.Itoa(code)
			if code == 0 {
				reason = "connection"
			}
			l.failures[reason]++
		}
		l.mu.Unlock()
		switch {
		case code == http.StatusOK:
			return nil
		case code != 0 && code != http.StatusTooManyRequests && code < 500:
			return fmt.Errorf("the gateway refused a batch with %d, which Prometheus would drop: %s", code, body)
		case time.Now().After(deadline):
			return fmt.Errorf("a batch was not acknowledged within 3 minutes of retries; last answer %d %s", code, body)
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, time.Second)
	}
}

// waitAcknowledged waits until n batches are acknowledged.
func (l *load) waitAcknowledged(t *testing.T, n int) {
	t.Helper()
	eventually(t, time.Minute, fmt.Sprintf("%d batches of the load acknowledged", n), func() error {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.err != nil {
			t.Fatalf("load: %v", l.err)
		}
		if len(l.written[0]) < n {
			return fmt.Errorf("%d batches", len(l.written[0]))
		}
		return nil
	})
}

// batches is how many batches were acknowledged so far.
func (l *load) batches() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.written[0])
}

func (l *load) stop() {
	l.once.Do(func() { close(l.quit) })
	<-l.finished
}

func (l *load) failureSummary() string {
	if len(l.failures) == 0 {
		return "none"
	}
	var parts []string
	for reason, n := range l.failures {
		parts = append(parts, fmt.Sprintf("%s ×%d", reason, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// readBack reads every series of the load through the gateway (query-frontend, queriers, ingesters and
// store-gateways) with a range selector covering the whole load, and counts the acknowledged samples that
// are missing. A read may briefly miss data while the last restarted pods join; it is retried for a minute
// before samples count as lost.
func (l *load) readBack(t *testing.T) (written, missing, read int) {
	t.Helper()
	var first, last int64 = math.MaxInt64, 0
	for _, samples := range l.written {
		written += len(samples)
		for _, s := range samples {
			first, last = min(first, s.TimestampMsec), max(last, s.TimestampMsec)
		}
	}
	if written == 0 {
		return 0, 0, 0
	}
	at := time.UnixMilli(last).Truncate(time.Second).Add(time.Second)
	window := at.Sub(time.UnixMilli(first)) + 10*time.Second
	promql := fmt.Sprintf(`upgrade_load{run=%q}[%ds]`, l.run, int(window.Seconds()))
	deadline := time.Now().Add(time.Minute)
	for {
		got, err := l.c.queryMatrix(l.token, promql, at)
		missing, read = 0, 0
		if err == nil {
			for i, samples := range l.written {
				have := map[int64]float64{}
				for _, s := range got[strconv.Itoa(i)] {
					have[s.TimestampMsec] = s.Value
					read++
				}
				for _, s := range samples {
					if v, ok := have[s.TimestampMsec]; !ok || v != s.Value {
						missing++
					}
				}
			}
			if missing == 0 {
				return written, 0, read
			}
		}
		if time.Now().After(deadline) {
			if err != nil {
				t.Fatalf("read back: %v", err)
			}
			return written, missing, read
		}
		time.Sleep(2 * time.Second)
	}
}

// queryMatrix runs an instant query with a range selector and returns the samples by the "series" label.
func (c *localCluster) queryMatrix(token, promql string, at time.Time) (map[string][]remotewrite.Sample, error) {
	params := url.Values{"query": {promql}, "time": {strconv.FormatInt(at.Unix(), 10)}}
	req, _ := http.NewRequest("GET", c.gatewayURL+"/api/v1/query?"+params.Encode(), nil)
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := c.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("query %s: %d %s", promql, res.StatusCode, raw)
	}
	var body struct {
		Data struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Values [][2]any          `json:"values"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(raw, &body); err != nil || body.Data.ResultType != "matrix" {
		return nil, fmt.Errorf("query %s: not a matrix: %.300s", promql, raw)
	}
	out := map[string][]remotewrite.Sample{}
	for _, r := range body.Data.Result {
		for _, v := range r.Values {
			ts, _ := v[0].(float64)
			s, _ := v[1].(string)
			value, err := strconv.ParseFloat(s, 64)
			if err != nil {
				return nil, fmt.Errorf("query %s: value %v", promql, v)
			}
			out[r.Metric["series"]] = append(out[r.Metric["series"]], remotewrite.Sample{
				Value: value, TimestampMsec: int64(math.Round(ts * 1000))})
		}
	}
	return out, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
