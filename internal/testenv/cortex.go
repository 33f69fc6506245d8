package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

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

// StartCortex renders the configuration with limits as every tenant's limits, starts Cortex and waits until
// /ready answers 200. The process is stopped when the test ends.
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

	c := &Cortex{URL: fmt.Sprintf("http://127.0.0.1:%d", opts.HTTPPort), Options: opts}
	// Cortex exits 1 on SIGTERM (its compactor reports "context canceled"), which counts as a clean stop.
	c.log = startProcess(t, "cortex", exec.Command(binary, args...), dir, c.URL+"/ready")
	return c
}

// LogTail returns the last n lines Cortex logged.
func (c *Cortex) LogTail(n int) string { return lastLines(c.log.String(), n) }
