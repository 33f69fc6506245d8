package supervisor

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

var fastBackoff = Backoff{Min: 50 * time.Millisecond, Max: 200 * time.Millisecond, ResetAfter: time.Minute}

func spec(t *testing.T, script string) Spec {
	dir := t.TempDir()
	return Spec{
		Name:    "test",
		Path:    "/bin/sh",
		Args:    []string{"-c", script},
		LogFile: filepath.Join(dir, "test.log"),
		PIDFile: filepath.Join(dir, "test.pid"),
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRestartsAfterAnExit(t *testing.T) {
	s := spec(t, "echo run; exit 3")
	p, err := Start(s, fastBackoff)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(time.Second)
	waitFor(t, "three exits", func() bool { n, _ := p.Exits(); return n >= 3 })
	_, last := p.Exits()
	if last == nil || !strings.Contains(last.Error(), "exit status 3") {
		t.Errorf("last exit = %v", last)
	}
	if err := p.Stop(time.Second); err != nil {
		t.Fatal(err)
	}
	log, _ := os.ReadFile(s.LogFile)
	if n := strings.Count(string(log), "run\n"); n < 3 {
		t.Errorf("log has %d runs, want at least 3:\n%s", n, log)
	}
}

func TestStopEndsTheProcessGroup(t *testing.T) {
	// The shell starts a grandchild that would outlive it if only the shell were signalled.
	s := spec(t, "sleep 300 & echo $! > \"$0.child\"; wait")
	s.Args = append(s.Args, filepath.Join(filepath.Dir(s.LogFile), "grandchild"))
	p, err := Start(s, fastBackoff)
	if err != nil {
		t.Fatal(err)
	}
	childFile := filepath.Join(filepath.Dir(s.LogFile), "grandchild.child")
	var child int
	waitFor(t, "the grandchild", func() bool {
		b, err := os.ReadFile(childFile)
		child, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && child > 0
	})
	pid, err := ReadPIDFile(s.PIDFile)
	if err != nil || pid != p.PID() || !Owned(pid, "sleep 300") {
		t.Fatalf("pid file %d, %v; PID() %d", pid, err, p.PID())
	}
	if err := p.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the grandchild to die", func() bool { return !Alive(child) })
	if Alive(pid) {
		t.Errorf("process %d still alive", pid)
	}
	if _, err := os.Stat(s.PIDFile); !os.IsNotExist(err) {
		t.Errorf("pid file after Stop: %v", err)
	}
	if n, _ := p.Exits(); n != 0 {
		t.Errorf("Exits = %d after a requested stop, want 0", n)
	}
}

func TestStopKillsWhatIgnoresSIGTERM(t *testing.T) {
	s := spec(t, "trap '' TERM; echo ready; while :; do sleep 0.05; done")
	p, err := Start(s, fastBackoff)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the trap", func() bool { b, _ := os.ReadFile(s.LogFile); return strings.Contains(string(b), "\nready\n") })
	pid := p.PID()
	began := time.Now()
	err = p.Stop(300 * time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Stop = %v, want it to report the SIGKILL", err)
	}
	if Alive(pid) || time.Since(began) > 5*time.Second {
		t.Errorf("alive %v after %s", Alive(pid), time.Since(began))
	}
}

func TestStartFailsForAMissingBinary(t *testing.T) {
	s := spec(t, "")
	s.Path = filepath.Join(t.TempDir(), "missing")
	if _, err := Start(s, fastBackoff); err == nil {
		t.Fatal("Start of a missing binary succeeded")
	}
}

func TestTerminate(t *testing.T) {
	s := spec(t, "sleep 300")
	p, err := Start(s, fastBackoff)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(time.Second)
	pid := p.PID()
	if Owned(pid, "no-such-marker") {
		t.Error("Owned matched a marker not in the command line")
	}
	if err := Terminate(pid, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// The supervisor sees an exit it did not ask for and restarts.
	waitFor(t, "the restart", func() bool { return p.PID() != 0 && p.PID() != pid })
}
