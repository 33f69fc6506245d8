package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// MinIO is a real MinIO server (bin/minio, built from the Go module proxy by `make test-tools`) on 127.0.0.1
// with its data in the test's temporary directory. MinIO is AGPL-licensed: it only ever runs as its own
// process, never linked into ours.
type MinIO struct {
	// Endpoint is the S3 API's base URL, http://127.0.0.1:PORT.
	Endpoint string
	// Host is Endpoint without the scheme, the form Cortex's and Loki's s3 endpoint settings take.
	Host      string
	AccessKey string
	SecretKey string
	Region    string
	// DataDir is where MinIO keeps objects; every directory directly in it is a bucket.
	DataDir string
	log     *lockedBuffer
}

// StartMinIO starts MinIO with fresh random root credentials and no buckets, and waits until it is ready. The
// process is stopped when the test ends.
func StartMinIO(t testing.TB) *MinIO {
	t.Helper()
	binary := filepath.Join(RepoRoot(), "bin", "minio")
	if _, err := os.Stat(binary); err != nil {
		t.Fatalf("%s not found: run `make test-tools` once (it builds MinIO from the Go module proxy)", binary)
	}
	dir := t.TempDir()
	m := &MinIO{
		AccessKey: "opstrace-" + randomHex(t, 6),
		SecretKey: randomHex(t, 20),
		Region:    "us-east-1",
		DataDir:   filepath.Join(dir, "data"),
	}
	if err := os.MkdirAll(m.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	m.Host = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	m.Endpoint = "http://" + m.Host
	cmd := exec.Command(binary, "server", "--quiet", "--address", m.Host,
		"--console-address", fmt.Sprintf("127.0.0.1:%d", FreePort(t)), m.DataDir)
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+m.AccessKey, "MINIO_ROOT_PASSWORD="+m.SecretKey,
		"MINIO_REGION="+m.Region, "MINIO_BROWSER=off", "MINIO_UPDATE=off",
		// MinIO keeps its config and certs under $HOME/.minio unless told otherwise.
		"MINIO_CONFIG_DIR="+filepath.Join(dir, "config"), "HOME="+dir)
	m.log = startProcess(t, "minio", cmd, dir, m.Endpoint+"/minio/health/ready")
	// The health check can pass while the S3 API still answers 503 (server not initialized): wait until an
	// anonymous request gets MinIO's answer to anonymous requests instead.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		res, err := http.Get(m.Endpoint + "/")
		if err == nil {
			res.Body.Close()
			if res.StatusCode != http.StatusServiceUnavailable {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("MinIO's S3 API did not leave 503 within 30 s of its health check passing:\n%s", m.LogTail(20))
		}
	}
	return m
}

// MakeBucket creates a bucket the way MinIO's single-drive mode lays them out: a directory under DataDir. It
// is for tests that need a bucket before the code under test runs; code under test creates its own with S3.
func (m *MinIO) MakeBucket(t testing.TB, name string) {
	t.Helper()
	if err := os.Mkdir(filepath.Join(m.DataDir, name), 0o700); err != nil {
		t.Fatal(err)
	}
}

// LogTail returns the last n lines MinIO logged.
func (m *MinIO) LogTail(n int) string { return lastLines(m.log.String(), n) }

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
