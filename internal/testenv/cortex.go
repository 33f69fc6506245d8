package testenv

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/manifests"
)

// Cortex is a real Cortex process (bin/cortex, built from the Go module proxy by `make test-tools`) running
// target=all on 127.0.0.1 with the configuration the controller renders for topology single on filesystem
// storage.
type Cortex struct {
	// URL is the base URL of Cortex's HTTP API.
	URL string
	// Options are what the configuration was rendered from.
	Options manifests.Options
	log     *lockedBuffer
}

// lockedBuffer collects the process's output, written by exec's copying goroutines and read by the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// FreePort returns a TCP port on 127.0.0.1 that nothing listens on right now.
func FreePort(t testing.TB) int {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	return listener.Addr().(*net.TCPAddr).Port
}

// StartCortex renders the configuration with limits as every tenant's limits, starts Cortex and waits until
// /ready answers 200. The process is
// stopped when the test ends; Cortex exits 1 on SIGTERM (its compactor reports "context canceled"), which
// counts as a clean stop.
func StartCortex(t testing.TB, limits v1alpha1.TenantLimits) *Cortex {
	t.Helper()
	binary := filepath.Join(RepoRoot(), "bin", "cortex")
	if _, err := os.Stat(binary); err != nil {
		t.Fatalf("%s not found: run `make test-tools` once (it builds Cortex %s from the Go module proxy)",
			binary, manifests.DefaultCortexVersion)
	}
	dir := t.TempDir()
	opts := manifests.Options{
		ClusterName: "test", Namespace: "test",
		Topology: v1alpha1.TopologySingle, Size: v1alpha1.SizeDemo,
		Storage:              v1alpha1.StorageSpec{Type: v1alpha1.StorageFilesystem},
		MetricsRetentionDays: 30, ReplicationFactor: 1,
		DataDir: filepath.Join(dir, "data"), ConfigFile: filepath.Join(dir, "cortex.yaml"),
		RuntimeConfigFile: filepath.Join(dir, "overrides.yaml"),
		HTTPPort:          FreePort(t), GRPCPort: FreePort(t), GossipPort: FreePort(t),
		DefaultTenantLimits: limits,
	}
	config, err := manifests.CortexConfig(opts)
	if err != nil {
		t.Fatal(err)
	}
	overrides, err := manifests.RuntimeOverrides(limits, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(opts.ConfigFile, config, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(opts.RuntimeConfigFile, overrides, 0o600); err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, arg := range manifests.CortexArgs(opts, manifests.TargetAll) {
		args = append(args, strings.ReplaceAll(arg, manifests.PodIPReference, "127.0.0.1"))
	}

	c := &Cortex{URL: fmt.Sprintf("http://127.0.0.1:%d", opts.HTTPPort), Options: opts, log: &lockedBuffer{}}
	cmd := exec.Command(binary, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = c.log, c.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})

	deadline := time.Now().Add(60 * time.Second)
	for {
		res, err := http.Get(c.URL + "/ready")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return c
			}
		}
		select {
		case <-exited:
			t.Fatalf("cortex exited before it was ready:\n%s", c.LogTail(50))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("cortex not ready after 60s:\n%s", c.LogTail(50))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// LogTail returns the last n lines Cortex logged.
func (c *Cortex) LogTail(n int) string {
	lines := strings.Split(strings.TrimRight(c.log.String(), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
