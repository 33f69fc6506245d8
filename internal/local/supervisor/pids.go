package supervisor

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ReadPIDFile returns the pid in path, 0 when the file does not exist.
func ReadPIDFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %s: %q is not a pid", path, strings.TrimSpace(string(b)))
	}
	return pid, nil
}

// Alive reports whether pid is a process that has not exited (zombies count as exited).
func Alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	return !zombie(pid)
}

// Owned reports whether pid is alive and its command line contains marker — a path only our processes are
// started with — so that a pid recorded long ago and since reused by an unrelated program is never signalled.
func Owned(pid int, marker string) bool {
	if !Alive(pid) {
		return false
	}
	cmdline, err := commandLine(pid)
	return err == nil && strings.Contains(cmdline, marker)
}

// Terminate ends the process group of a process this program did not start (one recorded in a pid file by an
// earlier run): SIGTERM, then SIGKILL if it is still alive after timeout. It returns once the process is gone.
func Terminate(pid int, timeout time.Duration) error {
	if !Alive(pid) {
		return nil
	}
	signal := func(sig syscall.Signal) {
		// The group first (our children lead their own); the pid alone if it leads none.
		if err := syscall.Kill(-pid, sig); err != nil {
			_ = syscall.Kill(pid, sig)
		}
	}
	signal(syscall.SIGTERM)
	if waitGone(pid, timeout) {
		return nil
	}
	signal(syscall.SIGKILL)
	if waitGone(pid, 5*time.Second) {
		return nil
	}
	return fmt.Errorf("process %d is still alive after SIGKILL", pid)
}

func waitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if !Alive(pid) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}
