package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Loki is a real Loki process (bin/loki, built from the Go module proxy by `make test-tools`) on 127.0.0.1.
// Loki is AGPL-licensed: it only ever runs as its own process, never linked into ours.
type Loki struct {
	// URL is the base URL of Loki's HTTP API, http://127.0.0.1:PORT.
	URL string
	// Process is where the process lives and listens; the configuration was rendered with it.
	Process LokiProcess
	log     *lockedBuffer
}

// LokiProcess is what a Loki configuration for a test is rendered from: a fresh directory for all of Loki's
// data and two free ports on 127.0.0.1.
type LokiProcess struct {
	// Dir is the test's temporary directory; the configuration is written to Dir/loki.yaml, and Loki's data
	// belongs under it.
	Dir      string
	HTTPPort int
	GRPCPort int
}

// StartLoki writes the configuration that render returns, starts Loki with it (target all unless args say
// otherwise) and waits until /ready answers 200. The listen addresses and ports are also given as flags, which
// Loki applies over the configuration file, so Loki binds 127.0.0.1 whatever the configuration says. The
// process is stopped when the test ends.
func StartLoki(t testing.TB, render func(LokiProcess) string, args ...string) *Loki {
	t.Helper()
	binary := filepath.Join(RepoRoot(), "bin", "loki")
	if _, err := os.Stat(binary); err != nil {
		t.Fatalf("%s not found: run `make test-tools` once (it builds Loki from the Go module proxy)", binary)
	}
	p := LokiProcess{Dir: t.TempDir(), HTTPPort: FreePort(t), GRPCPort: FreePort(t)}
	configFile := filepath.Join(p.Dir, "loki.yaml")
	if err := os.WriteFile(configFile, []byte(render(p)), 0o600); err != nil {
		t.Fatal(err)
	}
	l := &Loki{URL: fmt.Sprintf("http://127.0.0.1:%d", p.HTTPPort), Process: p}
	args = append([]string{
		"-config.file=" + configFile,
		"-server.http-listen-address=127.0.0.1", fmt.Sprintf("-server.http-listen-port=%d", p.HTTPPort),
		"-server.grpc-listen-address=127.0.0.1", fmt.Sprintf("-server.grpc-listen-port=%d", p.GRPCPort),
	}, args...)
	l.log = startProcess(t, "loki", exec.Command(binary, args...), p.Dir, l.URL+"/ready")
	return l
}

// LogTail returns the last n lines Loki logged.
func (l *Loki) LogTail(n int) string { return lastLines(l.log.String(), n) }

// MinimalLokiConfig is a multi-tenant single-process Loki keeping everything under the process's directory:
// filesystem chunks, TSDB index schema v13, an in-memory ring (no gossip), no usage reporting, and readiness
// within about a second. For tests of Loki's clients; the controller's own configuration is
// rendered by internal/manifests.
func MinimalLokiConfig(p LokiProcess) string {
	return fmt.Sprintf(`auth_enabled: true
server:
  http_listen_address: 127.0.0.1
  http_listen_port: %[2]d
  grpc_listen_address: 127.0.0.1
  grpc_listen_port: %[3]d
  log_level: warn
common:
  instance_addr: 127.0.0.1
  path_prefix: %[1]s/data
  replication_factor: 1
  ring:
    kvstore:
      store: inmemory
  storage:
    filesystem:
      chunks_directory: %[1]s/data/chunks
      rules_directory: %[1]s/data/rules
ingester:
  lifecycler:
    min_ready_duration: 0s
    final_sleep: 0s
# Ready is when the query-frontend has found the scheduler in its ring: look every second, not every 10.
frontend:
  scheduler_dns_lookup_period: 1s
frontend_worker:
  dns_lookup_duration: 1s
schema_config:
  configs:
  - from: "2024-01-01"
    store: tsdb
    object_store: filesystem
    schema: v13
    index:
      prefix: index_
      period: 24h
analytics:
  reporting_enabled: false
`, p.Dir, p.HTTPPort, p.GRPCPort)
}
