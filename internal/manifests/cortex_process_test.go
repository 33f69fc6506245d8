package manifests

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/certs"
	"github.com/opstrace/opstrace/internal/remotewrite"
)

// These tests let Cortex itself judge the rendered configuration: its strict YAML parser and its validation
// for every target, and a real start of the single process.

// cortexBinary is bin/cortex, which `make test-tools` links to a build of DefaultCortexVersion.
func cortexBinary(t *testing.T) string {
	t.Helper()
	binary, err := filepath.Abs(filepath.Join("..", "..", "bin", "cortex"))
	if err != nil {
		t.Fatal(err)
	}
	resolved, err := filepath.EvalSymlinks(binary)
	if err != nil {
		t.Fatalf("Cortex not found at %s: run `make test-tools` once (it builds Cortex %s from the Go module proxy "+
			"into bin/): %v", binary, DefaultCortexVersion, err)
	}
	// hack/install-tool.sh names its builds NAME-VERSION, so the link says which release it is.
	if base := filepath.Base(resolved); strings.HasPrefix(base, "cortex-") && base != "cortex-"+DefaultCortexVersion {
		t.Fatalf("%s is %s, but the controller runs Cortex %s: run `make test-tools`", binary, base, DefaultCortexVersion)
	}
	return binary
}

// onLoopback replaces the pod IP in args with 127.0.0.1, which is what the kubelet's expansion does in a pod.
func onLoopback(t *testing.T, args []string) []string {
	t.Helper()
	local := make([]string, len(args))
	for i, arg := range args {
		local[i] = strings.ReplaceAll(arg, PodIPReference, "127.0.0.1")
		if strings.Contains(local[i], "$(") || strings.Contains(local[i], "0.0.0.0") {
			t.Fatalf("argument %q still refers to a variable or the wildcard address", local[i])
		}
	}
	return local
}

// previousCortexBinary is bin/cortex-PreviousCortexVersion, which `make test-tools` builds for the upgrade
// tests; "" when it is not there.
func previousCortexBinary(t *testing.T) string {
	t.Helper()
	binary, err := filepath.Abs(filepath.Join("..", "..", "bin", "cortex-"+PreviousCortexVersion))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(binary); err != nil {
		return ""
	}
	return binary
}

// The configuration must also work for PreviousCortexVersion: an upgrade starts from pods running it with
// the configuration this controller renders.
func TestCortexAcceptsEveryRenderedConfig(t *testing.T) {
	binaries := map[string]string{DefaultCortexVersion: cortexBinary(t), PreviousCortexVersion: previousCortexBinary(t)}
	for _, version := range []string{DefaultCortexVersion, PreviousCortexVersion} {
		t.Run(version, func(t *testing.T) {
			if binaries[version] == "" {
				t.Skipf("bin/cortex-%s not found: `make test-tools` builds it for the upgrade tests", version)
			}
			cortexAcceptsEveryRenderedConfig(t, binaries[version])
		})
	}
}

func cortexAcceptsEveryRenderedConfig(t *testing.T, binary string) {
	for _, tc := range configCases {
		t.Run(tc.golden, func(t *testing.T) {
			config, err := CortexConfig(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(t.TempDir(), "cortex.yaml")
			if err := os.WriteFile(file, config, 0o600); err != nil {
				t.Fatal(err)
			}
			opts := tc.opts
			opts.ConfigFile = file
			targets := []string{TargetAll}
			if opts.Topology == v1alpha1.TopologyMicroservices {
				targets = MicroservicesComponents
			}
			for _, target := range targets {
				// -modules parses the file strictly (an unknown or misplaced key fails), applies the flags,
				// runs Cortex's validation of the whole configuration, builds the modules, then exits.
				cmd := exec.Command(binary, append(onLoopback(t, CortexArgs(opts, target)), "-modules")...)
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Errorf("cortex -target=%s rejects the configuration: %v\n%s", target, err, out)
				} else if !strings.Contains(string(out), "Modules marked with * are included in target All") {
					t.Errorf("cortex -target=%s -modules printed no module list:\n%s", target, out)
				}
			}
		})
	}
}

// freePorts returns n distinct ports that were free on 127.0.0.1 a moment ago.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		// Every listener stays open until the function returns, so the kernel hands out distinct ports.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// cortexProcess is a running Cortex whose output goes to a log file.
type cortexProcess struct {
	cmd     *exec.Cmd
	logFile string
	exited  chan struct{} // closed when the process has exited and waitErr is set
	waitErr error
}

func startCortex(t *testing.T, binary, dir string, args []string) *cortexProcess {
	t.Helper()
	p := &cortexProcess{logFile: filepath.Join(dir, "cortex.log"), exited: make(chan struct{})}
	log, err := os.Create(p.logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	p.cmd = exec.Command(binary, args...)
	p.cmd.Dir = dir // any path the configuration forgot lands in the temporary directory
	p.cmd.Stdout, p.cmd.Stderr = log, log
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", binary, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// fatal fails the test with the last 50 lines of Cortex's log.
func (p *cortexProcess) fatal(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Fatalf(format+"\n--- last 50 lines of Cortex's log ---\n%s", append(args, p.logTail(50))...)
}

func (p *cortexProcess) logTail(n int) string {
	data, err := os.ReadFile(p.logFile)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// componentTLS writes a CA and a component certificate for opts' cluster, issued as the controller issues
// them (certs.ServiceDNSNames of ComponentServices: Cortex's and Loki's), under dir/tls, the layout of the
// mounted Secret.
func componentTLS(t *testing.T, dir string, opts Options) (*ComponentTLS, certs.KeyPair) {
	t.Helper()
	now := time.Now()
	ca, err := certs.NewCA("test CA", now, certs.CALifetime)
	if err != nil {
		t.Fatal(err)
	}
	services, headless := ComponentServices(opts.ClusterName, opts.Topology)
	leaf, err := certs.IssueServing(ca, certs.ServiceDNSNames(opts.Namespace, services, headless), nil, now, certs.LeafLifetime)
	if err != nil {
		t.Fatal(err)
	}
	tlsDir := filepath.Join(dir, "tls")
	if err := os.MkdirAll(tlsDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string][]byte{"tls.crt": leaf.CertPEM, "tls.key": leaf.KeyPEM, "ca.crt": ca.CertPEM} {
		if err := os.WriteFile(filepath.Join(tlsDir, name), content, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return &ComponentTLS{Dir: tlsDir, Hash: "test"}, ca
}

// renderedSingle is a Cortex target=all started on 127.0.0.1 from the rendered production configuration of
// topology single on filesystem storage, with the component certificate, and ready.
type renderedSingle struct {
	*cortexProcess
	opts Options
	ca   certs.KeyPair
	base string
}

func startRenderedSingle(t *testing.T, binary string) *renderedSingle {
	t.Helper()
	dir := t.TempDir()
	ports := freePorts(t, 3)
	opts := productionOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, filesystemStorage)
	// The data root does not exist yet: Cortex must create everything it needs below it.
	opts.DataDir = filepath.Join(dir, "data")
	opts.ConfigFile = filepath.Join(dir, "config", "cortex.yaml")
	opts.RuntimeConfigFile = filepath.Join(dir, "runtime", "overrides.yaml")
	opts.HTTPPort, opts.GRPCPort, opts.GossipPort = ports[0], ports[1], ports[2]
	var ca certs.KeyPair
	opts.TLS, ca = componentTLS(t, dir, opts)

	config, err := CortexConfig(opts)
	if err != nil {
		t.Fatal(err)
	}
	overrides, err := RuntimeOverrides(opts.DefaultTenantLimits, map[string]v1alpha1.TenantLimits{
		"team-a": {IngestionRate: ptr.To[int64](1234), MetricRetentionDays: ptr.To[int32](9)},
	})
	if err != nil {
		t.Fatal(err)
	}
	for file, content := range map[string][]byte{opts.ConfigFile: config, opts.RuntimeConfigFile: overrides} {
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, content, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	p := startCortex(t, binary, dir, onLoopback(t, CortexArgs(opts, TargetAll)))
	base := fmt.Sprintf("http://127.0.0.1:%d", opts.HTTPPort)
	client := &http.Client{Timeout: 10 * time.Second}

	// Wait for /ready. The deadline only bounds a hung start; how fast Cortex starts is not under test.
	started := time.Now()
	deadline := started.Add(60 * time.Second)
	for {
		status, _, err := get(client, base+"/ready", "")
		if err == nil && status == http.StatusOK {
			break
		}
		select {
		case <-p.exited:
			p.fatal(t, "Cortex exited before it was ready: %v", p.waitErr)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.fatal(t, "Cortex not ready after 60s; last answer of /ready: %d %v", status, err)
		}
	}
	t.Logf("ready after %v", time.Since(started).Round(time.Millisecond))
	return &renderedSingle{cortexProcess: p, opts: opts, ca: ca, base: base}
}

// pushAndQuery pushes a sample as team-a and reads it back; team-b does not see it.
func (c *renderedSingle) pushAndQuery(t *testing.T) {
	t.Helper()
	p, base := c.cortexProcess, c.base
	client := &http.Client{Timeout: 10 * time.Second}
	now := time.Now()
	push := remotewrite.Encode([]remotewrite.Series{{
		Labels:  map[string]string{"__name__": "opstrace_tls_canary", "job": "test"},
		Samples: []remotewrite.Sample{{Value: 42, TimestampMsec: now.UnixMilli()}},
	}})
	if status, answer, err := post(client, base+"/api/v1/push", "team-a", push); err != nil || status != http.StatusOK {
		p.fatal(t, "push as team-a: %d %q %v, want 200", status, answer, err)
	}
	canary := fmt.Sprintf("%s/prometheus/api/v1/query?query=opstrace_tls_canary&time=%d", base, now.Unix()+1)
	if status, answer, err := get(client, canary, "team-a"); err != nil || status != http.StatusOK ||
		!strings.Contains(answer, `"opstrace_tls_canary"`) || !strings.Contains(answer, `"42"`) {
		p.fatal(t, "query of the pushed sample: %d %q %v, want the sample with value 42", status, answer, err)
	}
	if status, answer, err := get(client, canary, "team-b"); err != nil || status != http.StatusOK ||
		strings.Contains(answer, "opstrace_tls_canary") {
		p.fatal(t, "another tenant sees team-a's sample: %d %q %v", status, answer, err)
	}
}

// The configuration rendered for DefaultCortexVersion, with TLS, runs on PreviousCortexVersion too: the
// upgrade starts from pods running it.
func TestPreviousCortexRunsTheRenderedConfigWithTLS(t *testing.T) {
	binary := previousCortexBinary(t)
	if binary == "" {
		t.Skipf("bin/cortex-%s not found: `make test-tools` builds it for the upgrade tests", PreviousCortexVersion)
	}
	startRenderedSingle(t, binary).pushAndQuery(t)
}

// The single process with the component certificate: every gRPC hop inside it (distributor -> ingester,
// querier worker -> query-frontend, querier -> ingester and store-gateway) is mutual TLS, since target all
// dials its own gRPC port; a push and a query make those hops.
func TestSingleProcessRunsOnTheRenderedConfig(t *testing.T) {
	c := startRenderedSingle(t, cortexBinary(t))
	p, opts, base := c.cortexProcess, c.opts, c.base
	client := &http.Client{Timeout: 10 * time.Second}

	// auth_enabled: a request without a tenant is refused; with one, a query makes the whole round trip
	// query-frontend -> querier worker (over gRPC on the address CortexArgs gives it) -> querier.
	query := base + "/prometheus/api/v1/query?query=vector(1)"
	if status, body, err := get(client, query, ""); err != nil || status != http.StatusUnauthorized {
		p.fatal(t, "query without X-Scope-OrgID: %d %q %v, want 401", status, body, err)
	}
	if status, body, err := get(client, query, "team-a"); err != nil || status != http.StatusOK ||
		!strings.Contains(body, `"status":"success"`) {
		p.fatal(t, "query as team-a: %d %q %v, want 200 and success", status, body, err)
	}

	// A pushed sample comes back from a query: distributor -> ingester and querier -> ingester over TLS.
	c.pushAndQuery(t)

	// The runtime overrides were loaded, with the tenant's values.
	status, body, err := get(client, base+"/runtime_config", "")
	if err != nil || status != http.StatusOK {
		p.fatal(t, "GET /runtime_config: %d %v", status, err)
	}
	var runtimeConfig struct {
		Overrides map[string]map[string]any `json:"overrides"`
	}
	if err := yaml.Unmarshal([]byte(body), &runtimeConfig); err != nil {
		p.fatal(t, "GET /runtime_config is not YAML: %v\n%s", err, body)
	}
	teamA := runtimeConfig.Overrides["team-a"]
	if teamA["ingestion_rate"] != float64(1234) || teamA["compactor_blocks_retention_period"] != "9d" {
		p.fatal(t, "Cortex's limits of team-a: ingestion_rate %v, retention %v; want 1234 and 9d",
			teamA["ingestion_rate"], teamA["compactor_blocks_retention_period"])
	}

	// Every socket Cortex listens on is on 127.0.0.1: nothing took the wildcard address.
	if runtime.GOOS == "linux" {
		listening, err := listeningSockets(p.cmd.Process.Pid)
		if err != nil {
			p.fatal(t, "list Cortex's sockets: %v", err)
		}
		if len(listening) == 0 {
			p.fatal(t, "found no listening socket of Cortex, yet it answered on %s", base)
		}
		for _, socket := range listening {
			if !strings.HasPrefix(socket, "127.0.0.1:") {
				p.fatal(t, "Cortex listens on %s; every socket must be on 127.0.0.1 (all: %v)", socket, listening)
			}
		}
		t.Logf("listening on %v; %s", listening, residentMemory(p.cmd.Process.Pid))
	}

	// What Cortex writes at start lands under the data root, which it created.
	for _, name := range []string{"alertmanager", "ingester-tokens"} {
		if _, err := os.Stat(filepath.Join(opts.DataDir, name)); err != nil {
			p.fatal(t, "Cortex did not write %s under the data root: %v", name, err)
		}
	}

	// SIGTERM stops it. Cortex v1.21.1 exits 1 after a clean shutdown, because its compactor reports the
	// cancelled context as a failure; any other end (a panic exits 2, a signal kills) is not a clean stop.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		p.fatal(t, "Cortex still running 30s after SIGTERM")
	}
	var exitErr *exec.ExitError
	if p.waitErr != nil && (!errors.As(p.waitErr, &exitErr) || exitErr.ExitCode() != 1) {
		p.fatal(t, "Cortex did not stop cleanly on SIGTERM: %v", p.waitErr)
	}
}

// The gRPC port accepts only clients with a certificate from the cluster's CA: a real gRPC call (the health
// check every Cortex serves) over HTTP/2 and TLS succeeds with the component certificate and is refused
// without one, with one from another CA, and in plain text.
func TestCortexGRPCRequiresAClientCertificate(t *testing.T) {
	c := startRenderedSingle(t, cortexBinary(t))
	requireClientCertificate(t, fmt.Sprintf("127.0.0.1:%d", c.opts.GRPCPort), tlsServerName(c.opts, ComponentIngester),
		c.ca, c.opts.TLS.Dir, func() string { return c.logTail(50) })
}

// requireClientCertificate checks that the gRPC port at address, serving the component certificate of tlsDir
// (issued by ca for serverName), answers a health check with that certificate and refuses one without a
// client certificate, with one from another CA, and in plain text; and that its certificate does not verify
// for the gateway's name. logTail is the end of the server's log, shown when the allowed call fails. Cortex's
// and Loki's tests share it.
func requireClientCertificate(t *testing.T, address, serverName string, ca certs.KeyPair, tlsDir string, logTail func() string) {
	t.Helper()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca.CertPEM) {
		t.Fatal("CA PEM not parsed")
	}
	component, err := tls.LoadX509KeyPair(filepath.Join(tlsDir, "tls.crt"), filepath.Join(tlsDir, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	otherCA, err := certs.NewCA("another CA", now, certs.CALifetime)
	if err != nil {
		t.Fatal(err)
	}
	otherLeaf, err := certs.IssueServing(otherCA, []string{serverName}, nil, now, certs.LeafLifetime)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := tls.X509KeyPair(otherLeaf.CertPEM, otherLeaf.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name        string
		certificate *tls.Certificate
		plain       bool
		allowed     bool
	}{
		{"component certificate", &component, false, true},
		{"no client certificate", nil, false, false},
		{"certificate of another CA", &stranger, false, false},
		{"plain text", nil, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			config := &tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12}
			if tc.certificate != nil {
				// Sent whatever CAs the server names as acceptable, as a misconfigured client would.
				config.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
					return tc.certificate, nil
				}
			}
			status, err := grpcHealthCheck(address, config, tc.plain)
			switch {
			case tc.allowed && (err != nil || status != "SERVING"):
				t.Fatalf("health check with the component certificate: %q %v, want SERVING\n--- end of the server's log ---\n%s", status, err, logTail())
			case !tc.allowed && err == nil:
				t.Fatalf("health check answered %q, want it refused", status)
			case !tc.allowed:
				// With TLS 1.3 the client learns of the refusal as an alert or a closed connection, whichever
				// comes first; either way no call got through (the first case proves the port answers).
				t.Logf("refused: %v", err)
			}
		})
	}

	// The server checks the client, and the client checks the server: the name on the server's certificate is
	// the one every client of the rendered configuration expects.
	conn, err := tls.Dial("tcp", address, &tls.Config{RootCAs: roots, ServerName: "metrics-gateway.observability.svc",
		Certificates: []tls.Certificate{component}})
	if err == nil {
		conn.Close()
		t.Fatal("the server's certificate verified for a name it was not issued for")
	}
}

// grpcHealthCheck calls grpc.health.v1.Health/Check on address the way a gRPC client does — an HTTP/2 POST of
// a length-prefixed protobuf message, the status in the grpc-status trailer — and returns the serving
// status. With plain, it speaks unencrypted HTTP/1 to the TLS port instead, as a misconfigured client would.
func grpcHealthCheck(address string, config *tls.Config, plain bool) (string, error) {
	transport := &http.Transport{TLSClientConfig: config, ForceAttemptHTTP2: true}
	defer transport.CloseIdleConnections()
	scheme := "https"
	if plain {
		scheme = "http"
	}
	// An empty HealthCheckRequest: no compression flag, zero length.
	req, err := http.NewRequest(http.MethodPost, scheme+"://"+address+"/grpc.health.v1.Health/Check", bytes.NewReader(make([]byte, 5)))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("TE", "trailers")
	client := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.ProtoMajor != 2 {
		return "", fmt.Errorf("answered over %s, not HTTP/2", resp.Proto)
	}
	if code := resp.Trailer.Get("Grpc-Status"); code != "0" {
		return "", fmt.Errorf("grpc-status %q: %s", code, resp.Trailer.Get("Grpc-Message"))
	}
	// HealthCheckResponse{status: SERVING}: field 1, varint 1, after the 5-byte message prefix.
	if bytes.Equal(body, []byte{0, 0, 0, 0, 2, 0x08, 0x01}) {
		return "SERVING", nil
	}
	return fmt.Sprintf("%x", body), nil
}

// post returns the status and body of a remote-write POST as tenant.
func post(client *http.Client, url, tenant string, body []byte) (int, string, error) {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	for name, value := range remotewrite.Headers {
		req.Header.Set(name, value)
	}
	req.Header.Set("X-Scope-OrgID", tenant)
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(answer), err
}

// Topology microservices with the component certificate, as two real processes on 127.0.0.1: the distributor
// finds the ingester in the ring only through memberlist gossip over TLS, and pushes to it (and reads its
// user stats) over mutual-TLS gRPC. The configuration is the rendered one, with the two DNS names a cluster
// would resolve replaced by loopback addresses; the bucket is never reached (nothing is old enough to ship).
func TestMicroservicesGossipAndPushOverTLS(t *testing.T) {
	binary := cortexBinary(t)
	dir := t.TempDir()
	ports := freePorts(t, 7)
	storage := v1alpha1.StorageSpec{Type: v1alpha1.StorageS3, S3: &v1alpha1.S3Storage{
		Bucket: "metrics", Endpoint: fmt.Sprintf("127.0.0.1:%d", ports[6]), Insecure: true,
	}}
	opts := productionOptions(v1alpha1.TopologyMicroservices, v1alpha1.SizeDemo, storage)
	opts.DataDir = filepath.Join(dir, "data")
	opts.ConfigFile = filepath.Join(dir, "cortex.yaml")
	opts.RuntimeConfigFile = filepath.Join(dir, "overrides.yaml")
	opts.TLS, _ = componentTLS(t, dir, opts)
	config, err := CortexConfig(opts)
	if err != nil {
		t.Fatal(err)
	}
	type process struct {
		target                  string
		http, grpc, gossip, dir string
	}
	ingester := process{ComponentIngester, fmt.Sprint(ports[0]), fmt.Sprint(ports[1]), fmt.Sprint(ports[2]), filepath.Join(dir, "ingester")}
	distributor := process{ComponentDistributor, fmt.Sprint(ports[3]), fmt.Sprint(ports[4]), fmt.Sprint(ports[5]), filepath.Join(dir, "distributor")}
	join := "dns+" + ServiceAddress(GossipRingServiceName(opts.ClusterName), opts.Namespace, opts.GossipPort)
	if !bytes.Contains(config, []byte(join)) {
		t.Fatalf("the rendered configuration does not join %s", join)
	}
	config = bytes.ReplaceAll(config, []byte(join), []byte("127.0.0.1:"+ingester.gossip))
	overrides, err := RuntimeOverrides(opts.DefaultTenantLimits, nil)
	if err != nil {
		t.Fatal(err)
	}
	for file, content := range map[string][]byte{opts.ConfigFile: config, opts.RuntimeConfigFile: overrides} {
		if err := os.WriteFile(file, content, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	var running []*cortexProcess
	for _, proc := range []process{ingester, distributor} {
		if err := os.MkdirAll(proc.dir, 0o700); err != nil {
			t.Fatal(err)
		}
		args := append(onLoopback(t, CortexArgs(opts, proc.target)),
			"-server.http-listen-port="+proc.http, "-server.grpc-listen-port="+proc.grpc,
			"-memberlist.bind-port="+proc.gossip, "-memberlist.advertise-port="+proc.gossip,
			// Each process its own data: two processes of one pod template never share a volume.
			"-blocks-storage.tsdb.dir="+filepath.Join(proc.dir, "tsdb"),
			"-ingester.tokens-file-path="+filepath.Join(proc.dir, "tokens"),
		)
		running = append(running, startCortex(t, binary, proc.dir, args))
	}
	client := &http.Client{Timeout: 10 * time.Second}
	push := remotewrite.Encode([]remotewrite.Series{{
		Labels:  map[string]string{"__name__": "opstrace_gossip_canary"},
		Samples: []remotewrite.Sample{{Value: 1, TimestampMsec: time.Now().UnixMilli()}},
	}})

	// The ingester joins the ring after its observe period; the distributor sees it only through gossip. A
	// push succeeds once both hold: until then it answers 5xx ("empty ring", "too many unhealthy instances").
	deadline := time.Now().Add(90 * time.Second)
	for {
		status, answer, err := post(client, "http://127.0.0.1:"+distributor.http+"/api/v1/push", "team-a", push)
		if err == nil && status == http.StatusOK {
			break
		}
		for _, p := range running {
			select {
			case <-p.exited:
				p.fatal(t, "a Cortex process exited: %v", p.waitErr)
			default:
			}
		}
		if time.Now().After(deadline) {
			running[1].fatal(t, "no push accepted within 90s; last: %d %q %v\n--- ingester ---\n%s", status, answer, err, running[0].logTail(30))
		}
		time.Sleep(500 * time.Millisecond)
	}
	// The distributor asks the ingester for the tenant's series over gRPC.
	status, answer, err := get(client, "http://127.0.0.1:"+distributor.http+"/distributor/all_user_stats", "")
	if err != nil || status != http.StatusOK || !strings.Contains(answer, "team-a") {
		running[1].fatal(t, "user stats from the ingester: %d %q %v, want team-a", status, answer, err)
	}
	for _, p := range running {
		if log := p.logTail(1000); strings.Contains(log, "tls: ") || strings.Contains(log, "certificate") {
			t.Errorf("a TLS error in the log of %s:\n%s", p.cmd.Args[2], log)
		}
	}
}

// get returns the status and body of a GET, as tenant when tenant is set.
func get(client *http.Client, url, tenant string) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	if tenant != "" {
		req.Header.Set("X-Scope-OrgID", tenant)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// listeningSockets lists ip:port of the TCP sockets in LISTEN state and the unconnected UDP sockets that the
// process pid holds, from /proc: the sockets among its file descriptors, looked up in its network tables.
func listeningSockets(pid int) ([]string, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	// State 0A is TCP_LISTEN; 07 is TCP_CLOSE, which the UDP tables use for an unconnected socket.
	tables := map[string]string{"tcp": "0A", "tcp6": "0A", "udp": "07", "udp6": "07"}
	var sockets []string
	for table, listenState := range tables {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if errors.Is(err, os.ErrNotExist) {
			continue // no IPv6 in this kernel
		} else if err != nil {
			return nil, err
		}
		scanner := bufio.NewScanner(f)
		scanner.Scan() // header
		for scanner.Scan() {
			fields := strings.Fields(scanner.Text())
			if len(fields) < 10 || fields[3] != listenState || !inodes[fields[9]] {
				continue
			}
			address, err := decodeProcAddress(fields[1])
			if err != nil {
				f.Close()
				return nil, fmt.Errorf("%s: %w", table, err)
			}
			sockets = append(sockets, address)
		}
		f.Close()
		if err := scanner.Err(); err != nil {
			return nil, err
		}
	}
	return sockets, nil
}

// decodeProcAddress turns /proc/net's "0100007F:1F90" into "127.0.0.1:8080": the address is hex in
// 32-bit words of host (little-endian) byte order, the port hex in network order.
func decodeProcAddress(s string) (string, error) {
	hexIP, hexPort, ok := strings.Cut(s, ":")
	raw, err := hex.DecodeString(hexIP)
	if !ok || err != nil || (len(raw) != 4 && len(raw) != 16) {
		return "", fmt.Errorf("address %q is not ip:port in hex", s)
	}
	ip := make(net.IP, len(raw))
	for word := 0; word < len(raw); word += 4 {
		for i := range 4 {
			ip[word+i] = raw[word+3-i]
		}
	}
	var port int
	if _, err := fmt.Sscanf(hexPort, "%X", &port); err != nil {
		return "", fmt.Errorf("port of %q: %w", s, err)
	}
	return net.JoinHostPort(ip.String(), fmt.Sprint(port)), nil
}

// residentMemory is the process's resident set size as /proc reports it, for the test log.
func residentMemory(pid int) string {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return err.Error()
	}
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			return "resident memory " + strings.Join(strings.Fields(strings.TrimPrefix(line, "VmRSS:")), " ")
		}
	}
	return "resident memory unknown"
}

func TestDecodeProcAddress(t *testing.T) {
	tests := map[string]string{
		"0100007F:1F90":                         "127.0.0.1:8080",
		"00000000:2382":                         "0.0.0.0:9090",
		"00000000000000000000000001000000:0050": "[::1]:80",
		"00000000000000000000000000000000:1F90": "[::]:8080",
	}
	for in, want := range tests {
		if got, err := decodeProcAddress(in); err != nil || got != want {
			t.Errorf("decodeProcAddress(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := decodeProcAddress("nonsense"); err == nil {
		t.Errorf("decodeProcAddress accepted nonsense")
	}
}
