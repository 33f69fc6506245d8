package installer

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/local/supervisor"
	"github.com/opstrace/opstrace/internal/manifests"
	"github.com/opstrace/opstrace/internal/remotewrite"
	"github.com/opstrace/opstrace/internal/version"
)

// DefaultTenant is the tenant `create local` makes.
const DefaultTenant = "default"

// createLocal is `opstrace create local NAME`.
func createLocal(ctx context.Context, name string, extraImages []string, out io.Writer) error {
	c, err := openLocalCluster(name)
	if err != nil {
		return err
	}
	if c.supervisorPID() != 0 {
		fmt.Fprintf(out, "local cluster %s is already running; nothing to do.\n\n", name)
		return c.printUsage(ctx, out)
	}
	b, err := findBinaries()
	if err != nil {
		return err
	}
	for _, image := range extraImages {
		if repo, path, ok := strings.Cut(image, "="); !ok || repo == "" || path == "" {
			return fmt.Errorf("--image %q: use REPO[:TAG]=PATH", image)
		}
	}
	b.extraImages = extraImages
	start := time.Now()
	ports, err := c.startSupervisor(b)
	if err != nil {
		return err
	}
	p := &progress{out: out}

	var kube client.Client
	if err := p.wait(ctx, "the Kubernetes API server", 3*time.Minute, c.supervisorLog(), func() (bool, string) {
		kube, err = c.client()
		if err != nil {
			return false, ""
		}
		var nodes corev1.NodeList
		return kube.List(ctx, &nodes) == nil, ""
	}); err != nil {
		return err
	}
	if err := p.wait(ctx, "the node agent to register node "+localNodeName, time.Minute, c.nodeAgentLog(), func() (bool, string) {
		var node corev1.Node
		if err := kube.Get(ctx, client.ObjectKey{Name: localNodeName}, &node); err != nil {
			return false, ""
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				return true, ""
			}
		}
		return false, "registered, not ready"
	}); err != nil {
		return err
	}

	p.step("installing the controller with Helm (chart charts/opstrace)")
	values := map[string]any{
		"image":        map[string]any{"tag": version.Version},
		"gatewayImage": map[string]any{"tag": version.Version},
	}
	if _, err := InstallController(ctx, c.Kubeconfig(), ControllerNamespace, values); err != nil {
		return fmt.Errorf("step: install the controller: %w", err)
	}
	// Logs need the Loki binary that `make test-tools` builds; without it the cluster runs metrics only.
	_, lokiMissing := os.Stat(b.path("loki"))
	if lokiMissing != nil {
		p.step("bin/loki not found: logs are off for this cluster (make test-tools builds Loki)")
	}
	if err := c.applyLocalObjects(ctx, kube, lokiMissing == nil); err != nil {
		return fmt.Errorf("step: create MetricsCluster %s and Tenant %s: %w", name, DefaultTenant, err)
	}

	if err := p.wait(ctx, "MetricsCluster "+name+" to be ready", 5*time.Minute, c.nodeAgentLog(), func() (bool, string) {
		var mc v1alpha1.MetricsCluster
		if err := kube.Get(ctx, client.ObjectKey{Namespace: LocalNamespace, Name: name}, &mc); err != nil {
			return false, ""
		}
		ready := meta.FindStatusCondition(mc.Status.Conditions, v1alpha1.ConditionReady)
		if ready == nil {
			return false, "the controller has not reported yet"
		}
		return ready.Status == metav1.ConditionTrue, ready.Message
	}); err != nil {
		return err
	}
	if err := c.writeCA(ctx, kube); err != nil {
		return err
	}
	if err := p.wait(ctx, "the gateway to accept a write for tenant "+DefaultTenant, 2*time.Minute, c.nodeAgentLog(), func() (bool, string) {
		token, err := c.token(ctx, kube, DefaultTenant)
		if err != nil {
			return false, "no token yet"
		}
		if err := c.canaryWrite(ctx, ports, token); err != nil {
			return false, err.Error()
		}
		return true, ""
	}); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nlocal cluster %s is ready (%s)\n\n", name, time.Since(start).Round(time.Second))
	return c.printUsage(ctx, out)
}

func (c localCluster) client() (client.Client, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig())
	if err != nil {
		return nil, err
	}
	cfg.Timeout = 10 * time.Second
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(v1alpha1.AddToScheme(scheme))
	return client.New(cfg, client.Options{Scheme: scheme})
}

// applyLocalObjects creates the namespace, the MetricsCluster (topology single on a local volume, gateway
// certificate for localhost, Loki when logs is set) and the default Tenant, leaving existing ones as they are.
func (c localCluster) applyLocalObjects(ctx context.Context, kube client.Client, logs bool) error {
	objects := []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: LocalNamespace}},
		&v1alpha1.MetricsCluster{
			ObjectMeta: metav1.ObjectMeta{Name: c.name, Namespace: LocalNamespace},
			Spec: v1alpha1.MetricsClusterSpec{
				Topology: v1alpha1.TopologySingle, Size: v1alpha1.SizeDemo,
				Storage: v1alpha1.StorageSpec{Type: v1alpha1.StorageFilesystem},
				Gateway: v1alpha1.GatewaySpec{Hostname: "localhost"},
				Logs:    v1alpha1.LogsSpec{Enabled: &logs},
			},
		},
		&v1alpha1.Tenant{
			ObjectMeta: metav1.ObjectMeta{Name: DefaultTenant, Namespace: LocalNamespace},
			Spec:       v1alpha1.TenantSpec{DisplayName: "Default tenant"},
		},
	}
	for _, obj := range objects {
		if err := kube.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	return nil
}

func (c localCluster) token(ctx context.Context, kube client.Client, tenant string) (string, error) {
	return tenantToken(ctx, kube, LocalNamespace, tenant)
}

// writeCA saves the CA of the gateway's certificate, for clients of this machine.
func (c localCluster) writeCA(ctx context.Context, kube client.Client) error {
	var secret corev1.Secret
	if err := kube.Get(ctx, client.ObjectKey{Namespace: LocalNamespace, Name: manifests.GatewayTLSSecretName(c.name)}, &secret); err != nil {
		return fmt.Errorf("read the gateway certificate: %w", err)
	}
	return os.WriteFile(c.CAFile(), secret.Data["ca.crt"], 0o644)
}

// canaryWrite sends one sample through the gateway, as Prometheus would.
func (c localCluster) canaryWrite(ctx context.Context, ports hostPorts, token string) error {
	client, err := c.gatewayClient()
	if err != nil {
		return err
	}
	return pushSeries(ctx, client, c.GatewayURL(ports), token, remotewrite.Series{
		Labels:  map[string]string{"__name__": "opstrace_local_canary", "cluster": c.name},
		Samples: []remotewrite.Sample{{Value: 1, TimestampMsec: time.Now().UnixMilli()}},
	})
}

// gatewayClient trusts the CA of the gateway's certificate, and only it.
func (c localCluster) gatewayClient() (*http.Client, error) {
	ca, err := os.ReadFile(c.CAFile())
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, errors.New("the gateway CA file holds no certificate")
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}, nil
}

// pushSeries sends a remote-write request through the gateway.
func pushSeries(ctx context.Context, client *http.Client, gatewayURL, token string, series ...remotewrite.Series) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, gatewayURL+"/api/v1/push", bytes.NewReader(remotewrite.Encode(series)))
	if err != nil {
		return err
	}
	for k, v := range remotewrite.Headers {
		req.Header.Set(k, v)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(res.Body, 512))
		return fmt.Errorf("gateway answered %d: %s", res.StatusCode, strings.TrimSpace(string(msg)))
	}
	return nil
}

// printUsage tells how to send data and read it back.
func (c localCluster) printUsage(ctx context.Context, out io.Writer) error {
	ports, err := c.readPorts()
	if err != nil {
		return err
	}
	url := c.GatewayURL(ports)
	fmt.Fprintf(out, `Gateway:    %s
CA file:    %s
Kubeconfig: %s

Token of tenant %s:
  %s tenant token local %s %s --output %s.token

Prometheus remote_write:
  remote_write:
    - url: %s/api/v1/push
      authorization:
        credentials_file: %s.token
      tls_config:
        ca_file: %s

Query (also the URL of a Grafana Prometheus data source):
  curl --cacert %s -H "Authorization: Bearer $(cat %s.token)" '%s/api/v1/query?query=up'
`, url, c.CAFile(), c.Kubeconfig(), DefaultTenant, selfCommand(), c.name, DefaultTenant, DefaultTenant,
		url, DefaultTenant, c.CAFile(), c.CAFile(), DefaultTenant, url)
	if c.logsEnabled(ctx) {
		fmt.Fprintf(out, `
Logs: Grafana Alloy, promtail or any Loki client (also the URL of a Grafana Loki data source: %s):
  clients:
    - url: %s/loki/api/v1/push
      bearer_token_file: %s.token
      tls_config:
        ca_file: %s

Query logs with LogQL:
  curl --cacert %s -H "Authorization: Bearer $(cat %s.token)" -G '%s/loki/api/v1/query_range' --data-urlencode 'query={job="varlogs"}'
`, url, url, DefaultTenant, c.CAFile(), c.CAFile(), DefaultTenant, url)
	}
	return nil
}

// logsEnabled says whether the cluster's MetricsCluster runs Loki; false when that cannot be read.
func (c localCluster) logsEnabled(ctx context.Context) bool {
	kube, err := c.client()
	if err != nil {
		return false
	}
	var mc v1alpha1.MetricsCluster
	if err := kube.Get(ctx, client.ObjectKey{Namespace: LocalNamespace, Name: c.name}, &mc); err != nil {
		return false
	}
	return ptr.Deref(mc.Spec.Logs.Enabled, true)
}

// selfCommand is how the user ran this binary (bin/opstrace after make run), so printed commands paste as
// they are.
func selfCommand() string {
	if strings.Contains(os.Args[0], "/") {
		return os.Args[0]
	}
	return "opstrace"
}

// progress prints what a wait is waiting on, and for how long.
type progress struct {
	out io.Writer
}

func (p *progress) step(what string) { fmt.Fprintf(p.out, "• %s\n", what) }

// wait polls done until it is true or timeout passes. It prints what it waits on every 5 seconds with the
// latest detail done gave; on timeout the error names the step and shows the end of logFile.
func (p *progress) wait(ctx context.Context, what string, timeout time.Duration, logFile string, done func() (bool, string)) error {
	start := time.Now()
	fmt.Fprintf(p.out, "• waiting for %s\n", what)
	lastPrint := start
	var detail string
	for {
		ok, d := done()
		if ok {
			fmt.Fprintf(p.out, "  done in %s\n", time.Since(start).Round(100*time.Millisecond))
			return nil
		}
		if d != "" {
			detail = d
		}
		if time.Since(lastPrint) >= 5*time.Second {
			lastPrint = time.Now()
			fmt.Fprintf(p.out, "  still waiting for %s (%s)%s\n", what, time.Since(start).Round(time.Second), suffix(detail))
		}
		if time.Since(start) > timeout {
			return fmt.Errorf("step: waiting for %s: not done after %s%s\nlast lines of %s:\n%s",
				what, timeout, suffix(detail), logFile, tail(logFile, 20))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func suffix(detail string) string {
	if detail == "" {
		return ""
	}
	return ": " + detail
}

// tail returns the last n lines of a log file, indented.
func tail(path string, n int) string {
	lines, err := supervisor.LastLines(path, n)
	if err != nil {
		return "  (" + err.Error() + ")"
	}
	return "  " + strings.Join(lines, "\n  ")
}
