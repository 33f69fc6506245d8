package installer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/opstrace/opstrace/internal/gateway"
	"github.com/opstrace/opstrace/internal/local/controlplane"
	"github.com/opstrace/opstrace/internal/localdns"
	"github.com/opstrace/opstrace/internal/localnet"
	"github.com/opstrace/opstrace/internal/manifests"
)

// LocalNamespace is where `create local` puts the MetricsCluster and its Tenants; the controller runs in
// ControllerNamespace, as on a cloud install.
const (
	LocalNamespace      = "opstrace"
	ControllerNamespace = "opstrace-system"
	localNodeName       = "local"
)

// localCluster is the state directory of one local cluster: $OPSTRACE_HOME/clusters/NAME.
type localCluster struct {
	name string
	dir  string
}

func opstraceHome() (string, error) {
	if home := os.Getenv("OPSTRACE_HOME"); home != "" {
		return home, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find the home directory (set OPSTRACE_HOME instead): %w", err)
	}
	return filepath.Join(home, ".opstrace"), nil
}

func openLocalCluster(name string) (localCluster, error) {
	if !isDNSLabel(name) || len(name) > 30 {
		return localCluster{}, fmt.Errorf("cluster name %q: use at most 30 lowercase letters, digits and '-', starting with a letter", name)
	}
	home, err := opstraceHome()
	if err != nil {
		return localCluster{}, err
	}
	return localCluster{name: name, dir: filepath.Join(home, "clusters", name)}, nil
}

func isDNSLabel(s string) bool {
	if s == "" || s[0] < 'a' || s[0] > 'z' || s[len(s)-1] == '-' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

func (c localCluster) controlPlaneDir() string { return filepath.Join(c.dir, "control-plane") }
func (c localCluster) nodeDir() string         { return filepath.Join(c.dir, "node") }
func (c localCluster) logsDir() string         { return filepath.Join(c.dir, "logs") }
func (c localCluster) supervisorLog() string   { return filepath.Join(c.logsDir(), "supervisor.log") }
func (c localCluster) nodeAgentLog() string    { return filepath.Join(c.logsDir(), "node-agent.log") }
func (c localCluster) pidFile() string         { return filepath.Join(c.dir, "supervisor.pid") }
func (c localCluster) portsFile() string       { return filepath.Join(c.dir, "ports.json") }

// Kubeconfig is the administrator's kubeconfig for the host side: it reaches the API server through the
// host listener.
func (c localCluster) Kubeconfig() string { return filepath.Join(c.dir, "kubeconfig") }

// CAFile is the CA that signed the gateway's certificate.
func (c localCluster) CAFile() string { return filepath.Join(c.dir, "gateway-ca.crt") }

// hostPorts are the host listeners' ports, fixed at creation.
type hostPorts struct {
	APIServer int `json:"apiServer"`
	Gateway   int `json:"gateway"`
}

func (c localCluster) readPorts() (hostPorts, error) {
	var p hostPorts
	data, err := os.ReadFile(c.portsFile())
	if err != nil {
		return p, err
	}
	return p, json.Unmarshal(data, &p)
}

// GatewayURL is where clients on this machine reach the gateway.
func (c localCluster) GatewayURL(p hostPorts) string {
	return fmt.Sprintf("https://localhost:%d", p.Gateway)
}

// supervisorPID returns the pid of the running supervisor, or 0.
func (c localCluster) supervisorPID() int {
	data, err := os.ReadFile(c.pidFile())
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 || syscall.Kill(pid, 0) != nil {
		return 0
	}
	return pid
}

// binaries are the programs a local cluster runs, from the directory of the opstrace binary (bin/).
type binaries struct {
	dir string
	// extraImages are REPO[:TAG]=PATH mappings given to create local with --image.
	extraImages []string
}

func findBinaries() (binaries, error) {
	self, err := os.Executable()
	if err != nil {
		return binaries{}, err
	}
	b := binaries{dir: filepath.Dir(self)}
	var missing []string
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "cortex",
		"opstrace-controller", "opstrace-gateway", "opstrace-node-agent"} {
		if _, err := os.Stat(b.path(name)); err != nil {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return binaries{}, fmt.Errorf("%s missing from %s: run `make build test-tools` (the first build takes about 20 minutes on 2 cores)",
			strings.Join(missing, ", "), b.dir)
	}
	return b, nil
}

func (b binaries) path(name string) string { return filepath.Join(b.dir, name) }

// optionalImages are images whose binaries `make test-tools` builds but a local cluster can run without:
// Loki (logs), MinIO (S3 for the microservices topology) and the previous Cortex release (upgrade tests).
var optionalImages = []struct{ binary, image string }{
	{"loki", "grafana/loki"},
	{"minio", "minio/minio"},
	{"cortex-" + manifests.PreviousCortexVersion, manifests.CortexImage(manifests.PreviousCortexVersion)},
}

// images maps the images of the chart and the controller's manifests to this build's binaries.
func (b binaries) images() []string {
	cortex, _ := filepath.EvalSymlinks(b.path("cortex"))
	images := []string{
		"opstrace/opstrace-controller=" + b.path("opstrace-controller"),
		"opstrace/opstrace-gateway=" + b.path("opstrace-gateway"),
		manifests.CortexImage(manifests.DefaultCortexVersion) + "=" + cortex,
	}
	for _, optional := range optionalImages {
		if path, err := filepath.EvalSymlinks(b.path(optional.binary)); err == nil {
			images = append(images, optional.image+"="+path)
		}
	}
	return append(images, b.extraImages...)
}

// startSupervisor opens the host listeners and starts `opstrace local run NAME` detached, in its own network
// namespace, holding them. It returns the ports.
func (c localCluster) startSupervisor(b binaries) (hostPorts, error) {
	if err := os.MkdirAll(c.logsDir(), 0o700); err != nil {
		return hostPorts{}, err
	}
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	var files []*os.File
	for range 2 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return hostPorts{}, fmt.Errorf("listen on 127.0.0.1: %w", err)
		}
		listeners = append(listeners, l)
		f, err := localnet.ListenerFile(l)
		if err != nil {
			return hostPorts{}, err
		}
		defer f.Close()
		files = append(files, f)
	}
	ports := hostPorts{
		APIServer: listeners[0].Addr().(*net.TCPAddr).Port,
		Gateway:   listeners[1].Addr().(*net.TCPAddr).Port,
	}
	data, _ := json.Marshal(ports)
	if err := os.WriteFile(c.portsFile(), data, 0o600); err != nil {
		return hostPorts{}, err
	}

	logFile, err := os.OpenFile(c.supervisorLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return hostPorts{}, err
	}
	defer logFile.Close()
	args := []string{"local", "run", c.name}
	for _, image := range b.extraImages {
		args = append(args, "--image="+image)
	}
	cmd := exec.Command(b.path("opstrace"), args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.ExtraFiles = files
	cmd.Env = append(os.Environ(), "OPSTRACE_HOME="+filepath.Dir(filepath.Dir(c.dir)))
	localnet.Isolate(cmd)
	cmd.SysProcAttr.Setsid = true
	if err := cmd.Start(); err != nil {
		return hostPorts{}, fmt.Errorf("start the local cluster's supervisor: %w", err)
	}
	if err := os.WriteFile(c.pidFile(), []byte(strconv.Itoa(cmd.Process.Pid)), 0o600); err != nil {
		return hostPorts{}, err
	}
	return ports, cmd.Process.Release()
}

// runSupervisor is `opstrace local run NAME`: inside the cluster's network namespace it runs the control
// plane and the node agent, forwards the host listeners, and stops everything on SIGTERM.
func runSupervisor(ctx context.Context, name string, extraImages []string, out io.Writer) error {
	c, err := openLocalCluster(name)
	if err != nil {
		return err
	}
	b, err := findBinaries()
	if err != nil {
		return err
	}
	b.extraImages = extraImages
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	apiListener, err := localnet.InheritedListener(0)
	if err != nil {
		return fmt.Errorf("opstrace local run is started by `opstrace create local`: %w", err)
	}
	gatewayListener, err := localnet.InheritedListener(1)
	if err != nil {
		return err
	}
	if err := localnet.Setup(); err != nil {
		return err
	}
	log := func(format string, args ...any) {
		fmt.Fprintf(out, time.Now().Format(time.RFC3339)+" "+format+"\n", args...)
	}

	cp, err := controlplane.Start(ctx, controlplane.Config{
		StateDir: c.controlPlaneDir(), BinDir: b.dir, ClusterName: c.name,
		Progress: func(step string, elapsed time.Duration) { log("%s (%s)", step, elapsed.Round(time.Second)) },
	})
	if err != nil {
		return err
	}
	defer func() {
		if err := cp.Stop(); err != nil {
			log("stop control plane: %v", err)
		}
	}()
	if err := writeHostKubeconfig(cp.Kubeconfig(), c.Kubeconfig(), apiListener.Addr().(*net.TCPAddr).Port); err != nil {
		return err
	}
	apiServer := strings.TrimPrefix(cp.APIServerURL(), "https://")
	go localnet.Forward(ctx, apiListener, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", apiServer)
	})

	clientset, err := kubernetes.NewForConfig(cp.RESTConfig())
	if err != nil {
		return err
	}
	dnsServer := &localdns.Server{Addr: net.JoinHostPort(localnet.NodeIP, "53"), Client: clientset,
		Logger: slog.New(slog.NewTextHandler(out, nil))}
	go func() {
		if err := dnsServer.Run(ctx); err != nil {
			log("cluster DNS: %v", err)
		}
	}()
	agent, err := startNodeAgent(c, b, cp)
	if err != nil {
		return err
	}
	gateway, err := newGatewayForwarder(clientset, c.name)
	if err != nil {
		return err
	}
	go gateway.run(ctx)
	go localnet.Forward(ctx, gatewayListener, gateway.dial)
	log("local cluster %s running", c.name)

	<-ctx.Done()
	log("stopping")
	_ = agent.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = agent.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		_ = agent.Process.Kill()
	}
	return nil
}

func startNodeAgent(c localCluster, b binaries, cp *controlplane.ControlPlane) (*exec.Cmd, error) {
	logFile, err := os.OpenFile(c.nodeAgentLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	args := []string{
		"--kubeconfig=" + cp.Kubeconfig(), "--node-name=" + localNodeName, "--state-dir=" + c.nodeDir(),
		"--apiserver-url=" + cp.APIServerURL(), "--cluster-ca-file=" + cp.CAFile(),
		"--pod-cidr=" + localnet.PodCIDR, "--node-ip=" + localnet.NodeIP, "--cluster-dns=" + localnet.NodeIP,
	}
	for _, image := range b.images() {
		args = append(args, "--image="+image)
	}
	cmd := exec.Command(b.path("opstrace-node-agent"), args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start the node agent: %w", err)
	}
	return cmd, nil
}

// writeHostKubeconfig copies the control plane's admin kubeconfig with the server set to the host listener.
func writeHostKubeconfig(from, to string, port int) error {
	cfg, err := clientcmd.LoadFromFile(from)
	if err != nil {
		return err
	}
	for _, cluster := range cfg.Clusters {
		cluster.Server = fmt.Sprintf("https://127.0.0.1:%d", port)
	}
	return clientcmd.WriteToFile(*cfg, to)
}

// stopLocalCluster stops the supervisor, which stops the pods, the node agent and the control plane.
func (c localCluster) stop(timeout time.Duration) error {
	pid := c.supervisorPID()
	if pid == 0 {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(timeout)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			_ = syscall.Kill(pid, syscall.SIGKILL)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if pid := c.supervisorPID(); pid != 0 {
		return fmt.Errorf("the supervisor (pid %d) did not stop", pid)
	}
	return nil
}

// destroy stops everything and removes the cluster's state.
func (c localCluster) destroy() error {
	if err := c.stop(time.Minute); err != nil {
		return err
	}
	if err := controlplane.Destroy(c.controlPlaneDir()); err != nil {
		return err
	}
	return os.RemoveAll(c.dir)
}

func (c localCluster) exists() bool {
	_, err := os.Stat(c.dir)
	return err == nil
}

// gatewayForwarder passes TLS through to a ready gateway pod, found from the gateway Service's EndpointSlices.
type gatewayForwarder struct {
	discovery *gateway.Discovery
	upstream  *gateway.Upstream
}

func newGatewayForwarder(clientset kubernetes.Interface, cluster string) (*gatewayForwarder, error) {
	upstream, err := gateway.NewUpstream("gateway", nil)
	if err != nil {
		return nil, err
	}
	discovery, err := gateway.NewDiscovery(clientset, LocalNamespace, manifests.PortHTTPS, slog.New(slog.DiscardHandler),
		gateway.ServiceUpstream{Service: manifests.ComponentName(cluster, manifests.ComponentGateway), Upstream: upstream})
	if err != nil {
		return nil, err
	}
	return &gatewayForwarder{discovery: discovery, upstream: upstream}, nil
}

func (g *gatewayForwarder) run(ctx context.Context) { g.discovery.Run(ctx) }

func (g *gatewayForwarder) dial(ctx context.Context) (net.Conn, error) {
	targets := g.upstream.Targets()
	if len(targets) == 0 {
		return nil, errors.New("no ready gateway pod")
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", targets[int(time.Now().UnixNano())%len(targets)].Host)
}
