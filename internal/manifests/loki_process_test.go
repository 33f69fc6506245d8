package manifests

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/certs"
)

// This test lets Loki itself judge the rendered single-topology configuration: a real start of bin/loki (built
// from the Go module proxy by `make test-tools`), a push and a LogQL read as a tenant, per-tenant limits from
// the runtime overrides, and their reload without a restart. Loki is AGPL-licensed: it only runs as its own
// process here, never linked into this package.

func lokiBinary(t *testing.T) string {
	t.Helper()
	binary, err := filepath.Abs(filepath.Join("..", "..", "bin", "loki"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(binary); err != nil {
		t.Fatalf("Loki not found at %s: run `make test-tools` once (it builds Loki %s from the Go module proxy into bin/): %v",
			binary, DefaultLokiVersion, err)
	}
	return binary
}

// TestLokiAcceptsEveryRenderedConfig lets Loki's strict parser and validation (-verify-config) judge every
// golden configuration for every target its topology runs.
func TestLokiAcceptsEveryRenderedConfig(t *testing.T) {
	binary := lokiBinary(t)
	goldens, err := filepath.Glob(filepath.Join("testdata", "loki-*-*.golden"))
	if err != nil || len(goldens) < 5 {
		t.Fatalf("Loki goldens: %v %v", goldens, err)
	}
	for _, golden := range goldens {
		if strings.Contains(golden, "overrides") {
			continue
		}
		topology := v1alpha1.TopologySingle
		if strings.Contains(golden, "microservices") {
			topology = v1alpha1.TopologyMicroservices
		}
		for _, component := range lokiComponents(topology) {
			t.Run(filepath.Base(golden)+"/"+component, func(t *testing.T) {
				cmd := exec.Command(binary, append(LokiArgs(LokiOptions{ConfigFile: golden}, component), "-verify-config=true")...)
				cmd.Env = append(os.Environ(), PodIPEnv+"=127.0.0.1")
				if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "config is valid") {
					t.Fatalf("Loki refuses %s for %s: %v\n%s", golden, component, err, out)
				}
			})
		}
	}
}

// TestLokiIngesterRegistersUnderItsHostname asks Loki which ID an ingester of each rendered microservices
// configuration registers in the ring (-print-config-stderr prints the configuration Loki resolved): the
// hostname, because the configuration sets none. A StatefulSet pod's hostname is its name, so the upgrade
// planner finds each ingester pod in the ring the Loki distributors serve on /ring under the pod's name.
func TestLokiIngesterRegistersUnderItsHostname(t *testing.T) {
	binary := lokiBinary(t)
	hostname, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	goldens, err := filepath.Glob(filepath.Join("testdata", "loki-microservices-*.golden"))
	if err != nil || len(goldens) == 0 {
		t.Fatalf("Loki microservices goldens: %v %v", goldens, err)
	}
	for _, golden := range goldens {
		t.Run(filepath.Base(golden), func(t *testing.T) {
			args := append(LokiArgs(LokiOptions{ConfigFile: golden}, LokiComponentIngester), "-verify-config=true", "-print-config-stderr=true")
			cmd := exec.Command(binary, args...)
			cmd.Env = append(os.Environ(), PodIPEnv+"=127.0.0.1")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("loki %v: %v\n%s", args, err, out)
			}
			// The configuration comes first, as YAML; Loki's log lines follow it.
			config, _, _ := strings.Cut(string(out), "\nlevel=")
			var resolved struct {
				Ingester struct {
					Lifecycler struct {
						ID string `json:"id"`
					} `json:"lifecycler"`
				} `json:"ingester"`
			}
			if err := yaml.Unmarshal([]byte(config), &resolved); err != nil {
				t.Fatalf("Loki's printed configuration: %v\n%s", err, config)
			}
			if id := resolved.Ingester.Lifecycler.ID; id != hostname {
				t.Errorf("the ingester registers in the ring as %q, want the hostname %q", id, hostname)
			}
		})
	}
}

// lokiComponentTLS writes a CA and the component certificate under dir/tls as componentTLS does for Cortex:
// one certificate, issued for Cortex's and Loki's Services as the controller issues it.
func lokiComponentTLS(t *testing.T, dir string, opts LokiOptions) (*ComponentTLS, certs.KeyPair) {
	t.Helper()
	return componentTLS(t, dir, Options{ClusterName: opts.ClusterName, Namespace: opts.Namespace, Topology: opts.Topology})
}

// The single process on the rendered configuration with the component certificate: every internal gRPC hop
// of the push and the queries below (distributor -> ingester, query-frontend -> scheduler -> querier worker
// -> ingester) is mutual TLS, since target all dials itself; the HTTP port stays plain.
func TestLokiRunsOnTheRenderedConfig(t *testing.T) {
	binary := lokiBinary(t)
	dir := t.TempDir()
	ports := freePorts(t, 2)
	opts := productionLokiOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, v1alpha1.StorageSpec{Type: v1alpha1.StorageFilesystem})
	// Loki needs at start: the data directory (it creates wal/, tsdb-index/, chunks/, ... below it), the
	// runtime overrides file (it refuses to start without it) and POD_IP in its environment.
	opts.DataDir = filepath.Join(dir, "data")
	opts.ConfigFile = filepath.Join(dir, "loki.yaml")
	opts.RuntimeConfigFile = filepath.Join(dir, "overrides.yaml")
	opts.HTTPPort, opts.GRPCPort = ports[0], ports[1]
	var ca certs.KeyPair
	opts.TLS, ca = lokiComponentTLS(t, dir, opts)
	if err := os.MkdirAll(opts.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	config, err := LokiConfig(opts)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(config, []byte("client_auth_type: RequireAndVerifyClientCert")) {
		t.Fatalf("the rendered configuration does not require client certificates on gRPC:\n%s", config)
	}
	writeOverrides := func(teamBBurst int64) {
		overrides, err := LokiRuntimeOverrides(opts.DefaultTenantLimits, map[string]v1alpha1.TenantLimits{
			"team-a": {},
			// A small rate and burst, so that a single push of team-b exceeds them.
			"team-b": {LogIngestionRate: ptr.To[int64](1024), LogIngestionBurst: ptr.To(teamBBurst)},
		})
		if err != nil {
			t.Fatal(err)
		}
		// Write and rename: Loki must never read a half-written file.
		if err := os.WriteFile(opts.RuntimeConfigFile+".tmp", overrides, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(opts.RuntimeConfigFile+".tmp", opts.RuntimeConfigFile); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(opts.ConfigFile, config, 0o600); err != nil {
		t.Fatal(err)
	}
	writeOverrides(1024)

	base, fatal := startLoki(t, binary, opts, nil)
	client := &http.Client{Timeout: 10 * time.Second}

	// Multi-tenant: a request without a tenant is refused.
	if code, body := lokiRequest(client, "GET", base+"/loki/api/v1/labels", "", nil); code != http.StatusUnauthorized {
		fatal("a request without X-Scope-OrgID got %d %s, want 401", code, body)
	}

	now := time.Now()
	line := "opstrace manifests test " + strconv.FormatInt(now.UnixNano(), 36)
	if code, body := lokiRequest(client, "POST", base+"/loki/api/v1/push", "team-a", lokiPushBody("manifests-test", now, line)); code != http.StatusNoContent {
		fatal("push as team-a: %d %s", code, body)
	}
	query := func(tenant string) []string {
		t.Helper()
		params := url.Values{"query": {`{job="manifests-test"}`}, "start": {strconv.FormatInt(now.Add(-time.Minute).UnixNano(), 10)},
			"end": {strconv.FormatInt(now.Add(time.Minute).UnixNano(), 10)}}
		code, body := lokiRequest(client, "GET", base+"/loki/api/v1/query_range?"+params.Encode(), tenant, nil)
		if code != http.StatusOK {
			fatal("query_range as %s: %d %s", tenant, code, body)
		}
		var answer struct {
			Data struct {
				Result []struct {
					Values [][2]string `json:"values"`
				} `json:"result"`
			} `json:"data"`
		}
		if err := json.Unmarshal([]byte(body), &answer); err != nil {
			fatal("query_range answer: %v: %s", err, body)
		}
		var lines []string
		for _, stream := range answer.Data.Result {
			for _, v := range stream.Values {
				lines = append(lines, v[1])
			}
		}
		return lines
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if got := query("team-a"); len(got) == 1 && got[0] == line {
			break
		} else if time.Now().After(deadline) {
			fatal("team-a reads %q, want the line it pushed", got)
		}
	}
	if got := query("team-b"); len(got) != 0 {
		t.Errorf("team-b reads team-a's lines: %q", got)
	}

	// team-b's burst (1 KiB, from the runtime overrides) is smaller than this push: Loki refuses it.
	big := strings.Repeat("x", 4096)
	if code, body := lokiRequest(client, "POST", base+"/loki/api/v1/push", "team-b", lokiPushBody("manifests-test", time.Now(), big)); code != http.StatusTooManyRequests {
		fatal("a 4 KiB push over team-b's 1 KiB burst got %d %s, want 429", code, body)
	}
	// A raised limit is picked up without a restart, within RuntimeConfigPeriod.
	writeOverrides(64 << 10)
	reloaded := time.Now()
	for deadline := time.Now().Add(45 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		code, body := lokiRequest(client, "POST", base+"/loki/api/v1/push", "team-b", lokiPushBody("manifests-test", time.Now(), big))
		if code == http.StatusNoContent {
			break
		}
		if time.Now().After(deadline) {
			fatal("team-b's raised burst is not applied 45 s after the overrides changed: %d %s", code, body)
		}
	}
	t.Logf("raised limit applied %s after the overrides file changed, without a restart", time.Since(reloaded).Round(time.Millisecond))

	// The upgrade planner reads Loki's ingester ring like Cortex's: /ring as JSON, every member ACTIVE.
	ringReq, _ := http.NewRequest("GET", base+"/ring", nil)
	ringReq.Header.Set("Accept", "application/json")
	if res, err := client.Do(ringReq); err != nil {
		t.Errorf("read the ingester ring: %v", err)
	} else {
		var ring struct {
			Shards []struct {
				ID    string `json:"id"`
				State string `json:"state"`
			} `json:"shards"`
		}
		err := json.NewDecoder(res.Body).Decode(&ring)
		res.Body.Close()
		if err != nil || len(ring.Shards) != 1 || ring.Shards[0].State != "ACTIVE" {
			t.Errorf("/ring answered %d %+v (%v), want one ACTIVE ingester as JSON", res.StatusCode, ring, err)
		}
	}

	// The alerts of lokiAlertRules use these metrics; a renamed metric would silence an alert.
	_, metrics := lokiRequest(client, "GET", base+"/metrics", "", nil)
	for _, name := range []string{"loki_request_duration_seconds_count", "loki_ring_members",
		"loki_boltdb_shipper_compact_tables_operation_last_successful_run_timestamp_seconds", `loki_discarded_samples_total{`} {
		if !strings.Contains(metrics, name) {
			t.Errorf("Loki's /metrics has no %s, which an alert uses", name)
		}
	}
	if !strings.Contains(metrics, `reason="rate_limited"`) {
		t.Error(`loki_discarded_samples_total has no reason="rate_limited" after a refused push: LokiTenantRateLimited would never fire`)
	}

	// Every internal hop above verified its peer: a failed handshake would show in Loki's log.
	logTail := func() string {
		data, _ := os.ReadFile(filepath.Join(dir, "loki.log"))
		return string(data[max(0, len(data)-4000):])
	}
	if log, _ := os.ReadFile(filepath.Join(dir, "loki.log")); bytes.Contains(log, []byte("tls: ")) || bytes.Contains(log, []byte("x509")) {
		t.Errorf("a TLS error in Loki's log:\n%s", logTail())
	}

	// Loki's gRPC port takes only the component certificate, as Cortex's does.
	t.Run("gRPC requires a client certificate", func(t *testing.T) {
		requireClientCertificate(t, fmt.Sprintf("127.0.0.1:%d", opts.GRPCPort), lokiTLSServerName(opts, LokiComponentIngester),
			ca, opts.TLS.Dir, logTail)
	})
}

// startLoki runs Loki as a pod would (LokiArgs, POD_IP=127.0.0.1, env added) on a configuration already
// written to opts.ConfigFile, waits until /ready answers, and stops it when the test ends. fatal fails the test
// with the end of Loki's log.
func startLoki(t *testing.T, binary string, opts LokiOptions, env []string) (string, func(string, ...any)) {
	t.Helper()
	dir := filepath.Dir(opts.ConfigFile)
	logFile := filepath.Join(dir, "loki.log")
	log, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd := exec.Command(binary, LokiArgs(opts, LokiComponentAll)...)
	cmd.Dir = dir // any path the configuration forgot lands in the temporary directory
	cmd.Env = append(append(os.Environ(), PodIPEnv+"=127.0.0.1"), env...)
	cmd.Stdout, cmd.Stderr = log, log
	started := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	fatal := func(format string, args ...any) {
		t.Helper()
		data, _ := os.ReadFile(logFile)
		lines := strings.Split(string(data), "\n")
		t.Fatalf(format+"\n--- last 40 lines of Loki's log ---\n%s", append(args, strings.Join(lines[max(0, len(lines)-40):], "\n"))...)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", opts.HTTPPort)
	client := &http.Client{Timeout: 10 * time.Second}
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		select {
		case err := <-exited:
			exited <- err
			fatal("Loki exited before it was ready: %v", err)
		default:
		}
		if code, _ := lokiRequest(client, "GET", base+"/ready", "", nil); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			fatal("Loki did not become ready within 3 minutes")
		}
	}
	t.Logf("Loki %s (%s storage) ready on the rendered config after %s, RSS %s", DefaultLokiVersion, opts.Storage.Type,
		time.Since(started).Round(time.Millisecond), processRSS(cmd.Process.Pid))
	return base, fatal
}

// lokiPushBody is one line in Loki's JSON push format.
func lokiPushBody(job string, at time.Time, line string) []byte {
	body, _ := json.Marshal(map[string]any{"streams": []any{map[string]any{
		"stream": map[string]string{"job": job},
		"values": [][]string{{strconv.FormatInt(at.UnixNano(), 10), line}},
	}}})
	return body
}

func lokiRequest(client *http.Client, method, url, tenant string, body []byte) (int, string) {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return 0, err.Error()
	}
	if tenant != "" {
		req.Header.Set("X-Scope-OrgID", tenant)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(res.Body, 8<<20))
	return res.StatusCode, string(data)
}

// processRSS is the resident memory of a process, from /proc.
func processRSS(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "unknown"
	}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			return strings.Join(strings.Fields(strings.TrimPrefix(l, "VmRSS:")), " ")
		}
	}
	return "unknown"
}

// Topology microservices with the component certificate, as two real Loki processes on 127.0.0.1: the
// distributor finds the ingester in the ring only through memberlist gossip over TLS, and pushes to it over
// mutual-TLS gRPC. The configuration is the rendered one, with the gossip-ring name a cluster would resolve
// replaced by the ingester's loopback gossip address and a data directory per process (as each pod has its
// own volume); the bucket is never reached (nothing is flushed).
func TestLokiMicroservicesGossipAndPushOverTLS(t *testing.T) {
	binary := lokiBinary(t)
	dir := t.TempDir()
	ports := freePorts(t, 7)
	storage := v1alpha1.StorageSpec{Type: v1alpha1.StorageS3, S3: &v1alpha1.S3Storage{
		Bucket: "metrics", Endpoint: fmt.Sprintf("127.0.0.1:%d", ports[6]), Insecure: true,
	}}
	opts := productionLokiOptions(v1alpha1.TopologyMicroservices, v1alpha1.SizeDemo, storage)
	opts.ReplicationFactor = 1 // one ingester
	opts.RuntimeConfigFile = filepath.Join(dir, "overrides.yaml")
	var ca certs.KeyPair
	opts.TLS, ca = lokiComponentTLS(t, dir, opts)
	overrides, err := LokiRuntimeOverrides(opts.DefaultTenantLimits, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(opts.RuntimeConfigFile, overrides, 0o600); err != nil {
		t.Fatal(err)
	}
	// The processes inherit the environment: the pod IP, and credentials so that the S3 client never looks
	// for an instance identity.
	t.Setenv(PodIPEnv, "127.0.0.1")
	t.Setenv("AWS_ACCESS_KEY_ID", "unused")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "unused")

	type process struct {
		component               string
		http, grpc, gossip, dir string
	}
	ingester := process{LokiComponentIngester, fmt.Sprint(ports[0]), fmt.Sprint(ports[1]), fmt.Sprint(ports[2]), filepath.Join(dir, "ingester")}
	distributor := process{LokiComponentDistributor, fmt.Sprint(ports[3]), fmt.Sprint(ports[4]), fmt.Sprint(ports[5]), filepath.Join(dir, "distributor")}
	join := "dns+" + ServiceAddress(LokiGossipRingServiceName(opts.ClusterName), opts.Namespace, opts.GossipPort)
	var running []*cortexProcess // a process and its log file; nothing in it is Cortex's
	for _, proc := range []process{ingester, distributor} {
		own := opts
		own.DataDir = filepath.Join(proc.dir, "data")
		own.ConfigFile = filepath.Join(proc.dir, "loki.yaml")
		if err := os.MkdirAll(own.DataDir, 0o700); err != nil {
			t.Fatal(err)
		}
		config, err := LokiConfig(own)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(config, []byte(join)) {
			t.Fatalf("the rendered configuration does not join %s", join)
		}
		config = bytes.ReplaceAll(config, []byte(join), []byte("127.0.0.1:"+ingester.gossip))
		if err := os.WriteFile(own.ConfigFile, config, 0o600); err != nil {
			t.Fatal(err)
		}
		// Memberlist advertises its default port 7946 unless told otherwise: in a pod it binds that port.
		args := append(LokiArgs(own, proc.component), "-server.http-listen-port="+proc.http, "-server.grpc-listen-port="+proc.grpc,
			"-memberlist.bind-port="+proc.gossip, "-memberlist.advertise-port="+proc.gossip)
		running = append(running, startCortex(t, binary, proc.dir, args))
	}
	fatal := func(format string, args ...any) {
		t.Helper()
		t.Fatalf(format+"\n--- ingester ---\n%s\n--- distributor ---\n%s", append(args, running[0].logTail(40), running[1].logTail(40))...)
	}

	// The ingester joins the ring after its observe period; the distributor sees it only through gossip. A
	// push succeeds once both hold: until then it answers 5xx (empty ring, too many unhealthy instances).
	client := &http.Client{Timeout: 10 * time.Second}
	started := time.Now()
	for deadline := started.Add(60 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		code, body := lokiRequest(client, "POST", "http://127.0.0.1:"+distributor.http+"/loki/api/v1/push", "team-a",
			lokiPushBody("gossip-test", time.Now(), "over TLS"))
		if code == http.StatusNoContent {
			break
		}
		for _, p := range running {
			select {
			case <-p.exited:
				fatal("a Loki process exited: %v", p.waitErr)
			default:
			}
		}
		if time.Now().After(deadline) {
			fatal("no push accepted within 60s; last: %d %s", code, body)
		}
	}
	t.Logf("the distributor pushed to the ingester it found by TLS gossip %s after the start", time.Since(started).Round(time.Millisecond))

	// The gossip port speaks TLS and presents the component certificate under the gossip ring's name: a
	// plain-text memberlist peer could not take part.
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.CertPEM)
	conn, err := tls.Dial("tcp", "127.0.0.1:"+ingester.gossip, &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12,
		ServerName: LokiGossipRingServiceName(opts.ClusterName) + "." + opts.Namespace + ".svc"})
	if err != nil {
		fatal("TLS handshake with the ingester's gossip port: %v", err)
	}
	conn.Close()
	for _, p := range running {
		if log := p.logTail(1000); strings.Contains(log, "tls: ") || strings.Contains(log, "x509") {
			t.Errorf("a TLS error in the log of %s:\n%s", p.cmd.Args[3], log)
		}
	}
}
