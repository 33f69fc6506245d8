package controlplane

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStartWithoutBinaries(t *testing.T) {
	stateDir := filepath.Join(t.TempDir(), "state")
	_, err := Start(context.Background(), Config{StateDir: stateDir, BinDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "make test-tools") || !strings.Contains(err.Error(), "etcd not found") {
		t.Fatalf("Start = %v, want etcd not found and the hint to run make test-tools", err)
	}
	if _, err := os.Stat(stateDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state directory created although Start failed: %v", err)
	}
}

// fakeBinDir has every component as a shell script that prints a few lines and exits 1.
func fakeBinDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	script := "#!/bin/sh\nfor i in $(seq 1 30); do echo \"$0 line $i\"; done\necho 'fatal: cannot start' >&2\nexit 1\n"
	for _, c := range components {
		if err := os.WriteFile(filepath.Join(dir, c), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestStartReportsACrashingComponent(t *testing.T) {
	stateDir := t.TempDir()
	began := time.Now()
	_, err := Start(context.Background(), Config{StateDir: stateDir, BinDir: fakeBinDir(t), ReadyTimeout: 30 * time.Second})
	var ce *ComponentError
	if !errors.As(err, &ce) {
		t.Fatalf("Start = %v, want a ComponentError", err)
	}
	t.Logf("failed after %s:\n%v", time.Since(began).Round(time.Millisecond), err)
	if ce.Component != ComponentEtcd || len(ce.LogTail) != 20 {
		t.Errorf("component %s with %d log lines, want etcd with 20", ce.Component, len(ce.LogTail))
	}
	msg := err.Error()
	for _, want := range []string{"etcd did not become healthy", "exited 3 times", "fatal: cannot start", "logs/etcd.log"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not mention %q:\n%s", want, msg)
		}
	}
	st, err := Status(stateDir)
	if err != nil || st.Running || len(st.PIDs) != 0 {
		t.Errorf("Status after a failed Start = %+v, %v; want nothing running", st, err)
	}
}

func TestStateDirMustBeOurs(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "precious.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Start(context.Background(), Config{StateDir: dir, BinDir: fakeBinDir(t)}); err == nil || !strings.Contains(err.Error(), "not created by opstrace") {
		t.Errorf("Start in a foreign directory = %v", err)
	}
	if err := Destroy(dir); err == nil {
		t.Error("Destroy removed a directory that Start did not create")
	}
	if _, err := os.Stat(filepath.Join(dir, "precious.txt")); err != nil {
		t.Errorf("precious.txt: %v", err)
	}
	if err := Destroy(filepath.Join(dir, "missing")); err != nil {
		t.Errorf("Destroy of a missing directory = %v", err)
	}
}

func TestPortsArePersisted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ports.json")
	first, err := loadOrChoosePorts(path)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for name, port := range first.byComponent() {
		if port <= 0 || seen[port] {
			t.Errorf("port %d of %s is invalid or repeated: %+v", port, name, first)
		}
		seen[port] = true
	}
	again, err := loadOrChoosePorts(path)
	if err != nil || again != first {
		t.Errorf("second load = %+v, %v; want %+v", again, err, first)
	}
}
