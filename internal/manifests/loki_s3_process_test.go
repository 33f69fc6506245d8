package manifests_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/manifests"
	"github.com/opstrace/opstrace/internal/testenv"
)

// This file is an external test package: it uses internal/testenv, which imports manifests.

// TestLokiKeepsLogsUnderThePrefixOfTheMetricsBucket runs the rendered s3 configuration against a real MinIO:
// with spec.logs.storage.bucket unset, every object Loki writes lands under _logs/ in the metrics bucket, none
// at its root where Cortex keeps its tenant directories.
func TestLokiKeepsLogsUnderThePrefixOfTheMetricsBucket(t *testing.T) {
	binary := manifests.LokiBinaryForTest(t)
	minio := testenv.StartMinIO(t)
	minio.MakeBucket(t, "metrics")
	dir := t.TempDir()
	ports := manifests.FreePortsForTest(t, 2)
	storage := v1alpha1.StorageSpec{Type: v1alpha1.StorageS3, S3: &v1alpha1.S3Storage{
		Bucket: "metrics", Endpoint: minio.Host, Region: minio.Region, Insecure: true,
	}}
	opts := manifests.ProductionLokiOptionsForTest(v1alpha1.TopologySingle, v1alpha1.SizeDemo, storage)
	opts.DataDir = filepath.Join(dir, "data")
	opts.ConfigFile = filepath.Join(dir, "loki.yaml")
	opts.RuntimeConfigFile = filepath.Join(dir, "overrides.yaml")
	opts.HTTPPort, opts.GRPCPort = ports[0], ports[1]
	opts.TLS, _ = manifests.LokiComponentTLSForTest(t, dir, opts)
	config, err := manifests.LokiConfig(opts)
	if err != nil {
		t.Fatal(err)
	}
	overrides, err := manifests.LokiRuntimeOverrides(opts.DefaultTenantLimits, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(opts.ConfigFile, config, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(opts.RuntimeConfigFile, overrides, 0o600); err != nil {
		t.Fatal(err)
	}
	// The credentials come from the environment, as LokiEnv passes them from the credentials Secret.
	base, fatal := manifests.StartLokiForTest(t, binary, opts, []string{"AWS_ACCESS_KEY_ID=" + minio.AccessKey, "AWS_SECRET_ACCESS_KEY=" + minio.SecretKey})
	client := &http.Client{Timeout: 10 * time.Second}

	if code, body := manifests.LokiRequestForTest(client, "POST", base+"/loki/api/v1/push", "team-a", manifests.LokiPushBodyForTest("s3-test", time.Now(), "to the bucket")); code != http.StatusNoContent {
		fatal("push: %d %s", code, body)
	}
	// Flush the ingester's chunks to object storage now instead of after its idle period.
	if code, body := manifests.LokiRequestForTest(client, "POST", base+"/flush", "", nil); code != http.StatusNoContent && code != http.StatusOK {
		fatal("flush: %d %s", code, body)
	}
	bucket := filepath.Join(minio.DataDir, "metrics")
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		if entries, err := os.ReadDir(filepath.Join(bucket, strings.TrimSuffix(manifests.LokiLogsPrefix, "/"), "team-a")); err == nil && len(entries) > 0 {
			break
		}
		if time.Now().After(deadline) {
			fatal("no chunk of team-a under %s in the bucket 60 s after a flush (MinIO: %s)", manifests.LokiLogsPrefix, minio.LogTail(10))
		}
	}
	root, err := os.ReadDir(bucket)
	if err != nil {
		t.Fatal(err)
	}
	for _, entry := range root {
		if entry.Name() != strings.TrimSuffix(manifests.LokiLogsPrefix, "/") {
			t.Errorf("Loki wrote %s at the root of the metrics bucket, where Cortex keeps tenant directories", entry.Name())
		}
	}
}
