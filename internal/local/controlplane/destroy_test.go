package controlplane

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opstrace/opstrace/internal/testenv"
)

// helperEnv makes the test binary run a control plane in StateDir=$helperEnv until it is killed, standing in
// for an `opstrace create local` running in another terminal.
const helperEnv = "OPSTRACE_CONTROLPLANE_TEST_HELPER"

func TestMain(m *testing.M) {
	if stateDir := os.Getenv(helperEnv); stateDir != "" {
		_, err := Start(context.Background(), Config{
			StateDir: stateDir, BinDir: filepath.Join(testenv.RepoRoot(), "bin"), UnsafeEtcdNoFsync: true,
		})
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("ready")
		select {} // until a signal ends the process; its components die with it (Pdeathsig)
	}
	os.Exit(m.Run())
}

func TestDestroyStopsAControlPlaneOfAnotherProcess(t *testing.T) {
	binDir(t)
	stateDir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	helper := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), helperEnv+"="+stateDir)
	helper.Stderr = os.Stderr
	stdout, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	// Read the helper's stdout to its end, then reap it; exited reports its exit.
	lines := make(chan string, 10)
	exited := make(chan struct{}) // closed once the helper is reaped
	go func() {
		scanner := bufio.NewScanner(stdout)
		for scanner.Scan() {
			lines <- scanner.Text()
		}
		close(lines)
		_ = helper.Wait()
		close(exited)
	}()
	defer func() {
		_ = helper.Process.Kill()
		<-exited
	}()
	if line := <-lines; line != "ready" {
		t.Fatalf("helper: %q", line)
	}

	st, err := Status(stateDir)
	if err != nil || !st.Running || st.OwnerPID != helper.Process.Pid || len(st.PIDs) != len(components) {
		t.Fatalf("Status = %+v, %v; want running in process %d with %d components", st, err, helper.Process.Pid, len(components))
	}
	if _, err := Start(ctx, Config{StateDir: stateDir, BinDir: binDir(t)}); !errors.Is(err, ErrAlreadyRunning) ||
		!strings.Contains(err.Error(), fmt.Sprintf("process %d", helper.Process.Pid)) {
		t.Errorf("Start while another process runs the control plane = %v", err)
	}

	if err := Destroy(stateDir); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Error("the helper process survived Destroy")
	}
	assertNoProcesses(t, stateDir, st.PIDs)
	if _, err := os.Stat(stateDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state directory after Destroy: %v", err)
	}
}
