package installer

// The Kubernetes step of a cloud install against the real test API server (envtest: kube-apiserver and etcd,
// no controller, no kubelet): Helm installs the chart, the objects go in by server-side apply, a rerun reads
// and writes nothing, the wait for Ready names what is not ready, destroy deletes the MetricsCluster and
// waits for the LoadBalancer Services, status reports every condition and probes a real HTTPS server.

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/certs"
	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/installer/plan"
	"github.com/opstrace/opstrace/internal/manifests"
	"github.com/opstrace/opstrace/internal/testenv"
)

// syncBuffer is the step's output, written by the step while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startCloudEnv starts the API server with the project's CRDs only: the installer never touches the
// cert-manager and prometheus-operator kinds, and their CRDs triple the start-up time on a loaded machine.
func startCloudEnv(t *testing.T) *testenv.Env {
	t.Helper()
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	return env
}

func runSteps(t *testing.T, steps ...plan.Step) (plan.Report, error) {
	t.Helper()
	return plan.Run(context.Background(), steps, plan.Options{Concurrency: 1, Rand: func() float64 { return 0.5 }})
}

func previewOne(t *testing.T, s plan.Step) plan.Change {
	t.Helper()
	p, err := plan.Preview(context.Background(), []plan.Step{s})
	if err != nil {
		t.Fatal(err)
	}
	return p[0].Change
}

// setConditions writes the MetricsCluster's status as the controller would.
func setConditions(t *testing.T, env *testenv.Env, name string, conditions ...metav1.Condition) {
	t.Helper()
	ctx := context.Background()
	var mc v1alpha1.MetricsCluster
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: cloud.Namespace, Name: name}, &mc); err != nil {
		t.Fatal(err)
	}
	mc.Status.ObservedGeneration = mc.Generation
	mc.Status.Conditions = nil
	for _, c := range conditions {
		c.ObservedGeneration = mc.Generation
		meta.SetStatusCondition(&mc.Status.Conditions, c)
	}
	if err := env.Client.Status().Update(ctx, &mc); err != nil {
		t.Fatal(err)
	}
}

func condition(kind string, ok bool, message string) metav1.Condition {
	status, reason := metav1.ConditionFalse, v1alpha1.ReasonNotReady
	if ok {
		status, reason = metav1.ConditionTrue, v1alpha1.ReasonReady
	}
	return metav1.Condition{Type: kind, Status: status, Reason: reason, Message: message}
}

func TestKubeStepOnARealAPIServer(t *testing.T) {
	env := startCloudEnv(t)
	ctx := context.Background()
	cfg, err := config.Parse([]byte("tenants: [team-a, team-b]\nmetric_retention_days: 90\ncontroller_image: registry.example.com:5000/opstrace/opstrace-controller:v9.9.9\n"), config.ProviderAWS)
	if err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	step := &kubeStep{
		connect:      func(context.Context) (*rest.Config, error) { return env.Config, nil },
		workload:     func(context.Context) (cloudWorkload, error) { return testWorkload(cfg), nil },
		out:          &out,
		interval:     50 * time.Millisecond,
		readyTimeout: 2 * time.Second,
	}

	// Nothing there yet: the plan is to create all of it.
	if c := previewOne(t, step); c.Action != plan.Create || !strings.Contains(strings.Join(c.Diff, "\n"), "Helm release opstrace: not installed") {
		t.Fatalf("first plan: %s %q", c.Action, c.Diff)
	}

	// No controller runs here: the wait for Ready ends at its deadline, saying what is not ready.
	_, err = runSteps(t, step)
	if err == nil || !strings.Contains(err.Error(), "not Ready after 2s") || !strings.Contains(err.Error(), "the controller has not reported a status yet") {
		t.Fatalf("create without a controller: %v", err)
	}

	t.Run("installed objects", func(t *testing.T) {
		var mc v1alpha1.MetricsCluster
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: "opstrace", Name: "prod"}, &mc); err != nil {
			t.Fatal(err)
		}
		// The API server defaulted and validated what the installer sent; the identity field is in the CRD.
		if mc.Spec.Storage.S3.Bucket != "opstrace-prod-metrics" || mc.Spec.Logs.Storage.Bucket != "opstrace-prod-logs" ||
			mc.Spec.Retention.MetricsDays != 90 || !mc.Spec.Logs.IsEnabled() ||
			mc.Spec.ServiceAccounts.Cortex.Annotations[awsRoleAnnotation] != testCortexRole ||
			mc.Spec.ServiceAccounts.Loki.Annotations[awsRoleAnnotation] != testLokiRole {
			t.Errorf("stored MetricsCluster spec %+v", mc.Spec)
		}
		managers := map[string]bool{}
		for _, f := range mc.ManagedFields {
			managers[f.Manager] = true
		}
		if !managers[string(installerFieldOwner)] {
			t.Errorf("MetricsCluster not applied by the installer's field manager: %v", managers)
		}
		for _, tenant := range []string{"team-a", "team-b"} {
			if err := env.Client.Get(ctx, client.ObjectKey{Namespace: "opstrace", Name: tenant}, &v1alpha1.Tenant{}); err != nil {
				t.Errorf("tenant %s: %v", tenant, err)
			}
		}
		kube, err := newKubeClient(env.Config)
		if err != nil {
			t.Fatal(err)
		}
		stored, err := readStoredConfig(ctx, kube, config.ProviderAWS)
		if err != nil || string(config.Render(stored)) != string(config.Render(cfg)) {
			t.Errorf("stored config: %v\n%s", err, config.Render(stored))
		}
		// status and destroy without -c: the stored config; the cluster unreachable: the defaults, and why.
		defaults := config.Defaults(config.ProviderAWS)
		got, source, err := clusterConfig(ctx, nil, step.connect, config.ProviderAWS, defaults)
		if err != nil || source != "the config stored in the cluster" || got.MetricRetentionDays != 90 {
			t.Errorf("config of a reachable cluster: %q %v", source, err)
		}
		unreachable := func(context.Context) (*rest.Config, error) { return nil, errors.New("EKS cluster prod: not found") }
		got, source, err = clusterConfig(ctx, nil, unreachable, config.ProviderAWS, defaults)
		if err != nil || got.MetricRetentionDays != config.DefaultMetricRetentionDays ||
			source != "the defaults (the stored config could not be read: EKS cluster prod: not found; pass -c FILE to compare with your config)" {
			t.Errorf("config of an unreachable cluster: %q %v", source, err)
		}
		var sc storagev1.StorageClass
		if err := env.Client.Get(ctx, client.ObjectKey{Name: "opstrace-gp3"}, &sc); err != nil || sc.Provisioner != "ebs.csi.aws.com" ||
			sc.Annotations["storageclass.kubernetes.io/is-default-class"] != "true" {
			t.Errorf("default StorageClass: %v %+v", err, sc.ObjectMeta)
		}
		var deployment appsv1.Deployment
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ControllerNamespace, Name: "opstrace-controller"}, &deployment); err != nil {
			t.Fatal(err)
		}
		if image := deployment.Spec.Template.Spec.Containers[0].Image; image != "registry.example.com:5000/opstrace/opstrace-controller:v9.9.9" {
			t.Errorf("controller image %s, want controller_image of the config", image)
		}
	})

	// Everything applied, the MetricsCluster not ready: the plan is only to wait, and says for what.
	setConditions(t, env, "prod",
		condition(v1alpha1.ConditionReady, false, "2 components are not ready"),
		condition("DistributorReady", true, "3/3 ready"),
		condition("IngesterReady", false, "1/3 ready"),
		condition("LokiIngesterReady", false, "0/3 ready"))
	c := previewOne(t, step)
	if c.Action != plan.Update || len(c.Diff) != 1 || c.Diff[0] != "wait until the MetricsCluster is Ready (now: IngesterReady: 1/3 ready; LokiIngesterReady: 0/3 ready)" {
		t.Fatalf("plan while not ready: %s %q", c.Action, c.Diff)
	}

	// The controller reports Ready while create waits: create ends, after printing what it waited for.
	step.readyTimeout = time.Minute
	go func() {
		time.Sleep(500 * time.Millisecond)
		setConditions(t, env, "prod", condition(v1alpha1.ConditionReady, true, "every component is ready"))
	}()
	revisionBefore := releaseRevision(t, env)
	if _, err := runSteps(t, step); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.Contains(got, "waiting for MetricsCluster opstrace/prod") || !strings.Contains(got, "IngesterReady: 1/3 ready") ||
		!strings.Contains(got, "MetricsCluster opstrace/prod is Ready after") {
		t.Errorf("progress:\n%s", got)
	}
	if releaseRevision(t, env) != revisionBefore {
		t.Error("waiting upgraded the Helm release")
	}

	// A rerun reads the release and the objects, finds them as desired, and writes nothing.
	versions := resourceVersions(t, env)
	rep, err := runSteps(t, step)
	if err != nil || rep.Steps[0].Action != plan.NoOp {
		t.Fatalf("rerun: %v %+v", err, rep.Steps)
	}
	if got := resourceVersions(t, env); got != versions || releaseRevision(t, env) != revisionBefore {
		t.Errorf("rerun wrote: %s → %s", versions, got)
	}

	// A changed config changes the stored config and the MetricsCluster, not the release.
	cfg.MetricRetentionDays = 120
	c = previewOne(t, step)
	if c.Action != plan.Update || strings.Join(c.Diff, "; ") != "apply ConfigMap opstrace-system/opstrace-cluster-config; apply MetricsCluster opstrace/prod; then wait until the MetricsCluster is Ready" {
		t.Fatalf("plan after a config change: %s %q", c.Action, c.Diff)
	}
	// Another controller image: the release.
	cfg.MetricRetentionDays = 90
	cfg.ControllerImage = "registry.example.com:5000/opstrace/opstrace-controller:v9.9.10"
	if c = previewOne(t, step); strings.Join(c.Diff, "; ") != "Helm release opstrace: other values (images); apply ConfigMap opstrace-system/opstrace-cluster-config; then wait until the MetricsCluster is Ready" {
		t.Fatalf("plan after an image change: %q", c.Diff)
	}
	cfg.ControllerImage = "registry.example.com:5000/opstrace/opstrace-controller:v9.9.9"

	t.Run("status", func(t *testing.T) { testKubeStatus(t, env) })
	t.Run("destroy", func(t *testing.T) { testDestroyDrainsLoadBalancers(t, env, step, &out) })
}

func releaseRevision(t *testing.T, env *testenv.Env) int {
	t.Helper()
	var secrets corev1.SecretList
	if err := env.Client.List(context.Background(), &secrets, client.InNamespace(ControllerNamespace), client.MatchingLabels{"owner": "helm", "name": ControllerRelease}); err != nil {
		t.Fatal(err)
	}
	return len(secrets.Items)
}

// resourceVersions of every object the step writes, as one string.
func resourceVersions(t *testing.T, env *testenv.Env) string {
	t.Helper()
	ctx := context.Background()
	var parts []string
	for _, o := range []client.Object{&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ControllerNamespace, Name: CloudConfigMap}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "opstrace"}},
		&v1alpha1.MetricsCluster{ObjectMeta: metav1.ObjectMeta{Namespace: "opstrace", Name: "prod"}},
		&v1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Namespace: "opstrace", Name: "team-a"}},
		&v1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Namespace: "opstrace", Name: "team-b"}},
		&storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "opstrace-gp3"}},
	} {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(o), o); err != nil {
			t.Fatal(err)
		}
		parts = append(parts, o.GetName()+"@"+o.GetResourceVersion())
	}
	return strings.Join(parts, " ")
}

// status: every condition, and the gateway's /-/ready through the load balancer's address with the
// cluster's CA, against a real HTTPS server on 127.0.0.1.
func testKubeStatus(t *testing.T, env *testenv.Env) {
	ctx := context.Background()
	ca, err := certs.NewCA("opstrace test CA", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	serving, err := certs.IssueServing(ca, []string{"prod-gateway.opstrace.svc"}, nil, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tlsPair(serving)
	if err != nil {
		t.Fatal(err)
	}
	var ready sync.Mutex
	readyStatus := http.StatusServiceUnavailable
	server := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ready.Lock()
		defer ready.Unlock()
		if r.URL.Path != "/-/ready" || r.Host != "prod-gateway.opstrace.svc" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(readyStatus)
		_, _ = w.Write([]byte("waiting for the TLS certificate\n"))
	}))
	server.Listener, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server.TLS = pair
	server.StartTLS()
	t.Cleanup(server.Close)
	port := server.Listener.Addr().(*net.TCPAddr).Port

	if err := env.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "opstrace", Name: manifests.GatewayTLSSecretName("prod")},
		Data: map[string][]byte{"ca.crt": ca.CertPEM}}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "opstrace", Name: "prod-gateway"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: []corev1.ServicePort{{Name: manifests.PortHTTPS, Port: int32(port)}}}}
	if err := env.Client.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "127.0.0.1"}}
	if err := env.Client.Status().Update(ctx, svc); err != nil {
		t.Fatal(err)
	}
	setConditions(t, env, "prod",
		condition(v1alpha1.ConditionReady, false, "1 component is not ready"),
		condition("QuerierReady", false, "1/2 ready"),
		condition("LokiDistributorReady", true, "2/2 ready"))
	var mc v1alpha1.MetricsCluster
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: "opstrace", Name: "prod"}, &mc); err != nil {
		t.Fatal(err)
	}
	mc.Status.GatewayEndpoint = "https://prod-gateway.opstrace.svc"
	if err := env.Client.Status().Update(ctx, &mc); err != nil {
		t.Fatal(err)
	}

	var out bytes.Buffer
	healthy, err := kubeStatus(ctx, &out, env.Config, "prod")
	if err != nil || healthy {
		t.Fatalf("status of a cluster with a querier down: healthy %v, %v\n%s", healthy, err, out.String())
	}
	for _, want := range []string{"helm/opstrace", "condition/Ready", "NotReady: 1 component is not ready", "condition/QuerierReady", "1/2 ready",
		"condition/LokiDistributorReady", "gateway/-/ready", "503 waiting for the TLS certificate"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}

	ready.Lock()
	readyStatus = http.StatusOK
	ready.Unlock()
	setConditions(t, env, "prod", condition(v1alpha1.ConditionReady, true, "every component is ready"), condition("QuerierReady", true, "2/2 ready"))
	mc = v1alpha1.MetricsCluster{}
	_ = env.Client.Get(ctx, client.ObjectKey{Namespace: "opstrace", Name: "prod"}, &mc)
	mc.Status.GatewayEndpoint = "https://prod-gateway.opstrace.svc"
	if err := env.Client.Status().Update(ctx, &mc); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if healthy, err := kubeStatus(ctx, &out, env.Config, "prod"); err != nil || !healthy {
		t.Fatalf("status of a ready cluster: healthy %v, %v\n%s", healthy, err, out.String())
	}
	if !strings.Contains(out.String(), "gateway/-/ready") || !strings.Contains(out.String(), "true  ready") {
		t.Errorf("status:\n%s", out.String())
	}
	t.Logf("status output:\n%s", out.String())
}

// destroy: the MetricsCluster and the LoadBalancer Services are deleted, and destroy waits until the
// Services are gone. Here nothing removes the load-balancer finalizer until the test does, as the cloud's
// controller would once the load balancer is deleted.
func testDestroyDrainsLoadBalancers(t *testing.T, env *testenv.Env, step *kubeStep, out *syncBuffer) {
	ctx := context.Background()
	other := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "user-lb", Finalizers: []string{"service.kubernetes.io/load-balancer-cleanup"}},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	if err := env.Client.Create(ctx, other); err != nil {
		t.Fatal(err)
	}
	rev, err := plan.Reverse([]plan.Step{step})
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Preview(ctx, rev)
	if err != nil {
		t.Fatal(err)
	}
	if want := "delete MetricsCluster opstrace/prod; delete LoadBalancer Service default/user-lb; delete LoadBalancer Service opstrace/prod-gateway"; p[0].Change.Action != plan.Delete ||
		!strings.HasPrefix(strings.Join(p[0].Change.Diff, "; "), want) {
		t.Fatalf("destroy plan: %s %q", p[0].Change.Action, p[0].Change.Diff)
	}

	step.drainTimeout = time.Second
	_, err = runSteps(t, rev...)
	if err == nil || !strings.Contains(err.Error(), "LoadBalancer Services still there after 1s: default/user-lb") {
		t.Fatalf("destroy with a load balancer that does not go: %v", err)
	}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: "opstrace", Name: "prod"}, &v1alpha1.MetricsCluster{}); !apierrors.IsNotFound(err) {
		t.Errorf("MetricsCluster after destroy: %v", err)
	}

	step.drainTimeout = time.Minute
	go func() {
		time.Sleep(300 * time.Millisecond)
		var svc corev1.Service
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(other), &svc); err == nil {
			svc.Finalizers = nil
			_ = env.Client.Update(ctx, &svc)
		}
	}()
	if _, err := runSteps(t, rev...); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "no LoadBalancer Service is left") || !strings.Contains(out.String(), "waiting for LoadBalancer Services to go") {
		t.Errorf("destroy progress:\n%s", out.String())
	}
	if c := previewOne(t, rev[0]); c.Action != plan.NoOp {
		t.Errorf("destroy again: %s %q", c.Action, c.Diff)
	}

	// An API server that does not answer: destroy skips the drain and says what that leaves behind.
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	address := listener.Addr().String()
	listener.Close()
	gone := &kubeStep{
		connect: func(context.Context) (*rest.Config, error) {
			return &rest.Config{Host: "https://" + address, Timeout: 2 * time.Second}, nil
		},
		workload: func(context.Context) (cloudWorkload, error) { return cloudWorkload{}, errors.New("not reached") },
	}
	rev, _ = plan.Reverse([]plan.Step{gone})
	p, err = plan.Preview(ctx, rev)
	if err != nil {
		t.Fatal(err)
	}
	if c := p[0].Change; c.Action != plan.NoOp || len(c.Diff) != 1 || !strings.HasPrefix(c.Diff[0], "SKIPPED: the Kubernetes API could not be used") ||
		!strings.Contains(c.Diff[0], "load balancers and security groups the cluster made may remain") {
		t.Errorf("destroy of an unreachable cluster: %s %q", c.Action, c.Diff)
	}

	// Credentials the API server does not accept (another AWS principal than the cluster's admins): the
	// same, with the API server's answer.
	stranger := &kubeStep{
		connect: func(context.Context) (*rest.Config, error) {
			return &rest.Config{Host: env.Config.Host, TLSClientConfig: rest.TLSClientConfig{CAData: env.Config.CAData}, BearerToken: "not-a-token"}, nil
		},
		workload: gone.workload,
	}
	rev, _ = plan.Reverse([]plan.Step{stranger})
	if p, err = plan.Preview(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if c := p[0].Change; c.Action != plan.NoOp || len(c.Diff) != 1 || !strings.HasPrefix(c.Diff[0], "SKIPPED: the Kubernetes API could not be used (") ||
		!strings.Contains(c.Diff[0], "the server has asked for the client to provide credentials") {
		t.Errorf("destroy with credentials the cluster refuses: %s %q", c.Action, c.Diff)
	}
}

// tlsPair is a server's TLS config from a PEM key pair.
func tlsPair(kp certs.KeyPair) (*tls.Config, error) {
	cert, err := tls.X509KeyPair(kp.CertPEM, kp.KeyPEM)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}
