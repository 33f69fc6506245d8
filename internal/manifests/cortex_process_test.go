package manifests

import (
	"bufio"
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

func TestCortexAcceptsEveryRenderedConfig(t *testing.T) {
	binary := cortexBinary(t)
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

func TestSingleProcessRunsOnTheRenderedConfig(t *testing.T) {
	binary := cortexBinary(t)
	dir := t.TempDir()
	ports := freePorts(t, 3)
	opts := productionOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, filesystemStorage)
	// The data root does not exist yet: Cortex must create everything it needs below it.
	opts.DataDir = filepath.Join(dir, "data")
	opts.ConfigFile = filepath.Join(dir, "config", "cortex.yaml")
	opts.RuntimeConfigFile = filepath.Join(dir, "runtime", "overrides.yaml")
	opts.HTTPPort, opts.GRPCPort, opts.GossipPort = ports[0], ports[1], ports[2]

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
