// Package supervisor runs long-lived child processes for the local distribution: each in its own process group,
// its output appended to one log file, its pid in a pid file, restarted with backoff when it exits on its own,
// and stopped with SIGTERM, then SIGKILL after a deadline.
//
// On Linux every child also gets Pdeathsig SIGKILL, so it dies with the process that started it even when that
// process is killed without a chance to call Stop. The kernel ties Pdeathsig to the OS thread that forked the
// child; the Go runtime keeps its threads for the life of the process unless a goroutine exits while locked
// to its thread, which this package never does.
//
// Unix only (Linux and macOS).
package supervisor

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Spec describes one supervised process.
type Spec struct {
	// Name identifies the process in log lines and errors, e.g. "kube-apiserver".
	Name string
	// Path is the executable; Args its arguments (without argv[0]).
	Path string
	Args []string
	// Env is the environment; nil inherits the parent's.
	Env []string
	// Dir is the working directory; empty means the parent's.
	Dir string
	// LogFile receives stdout and stderr, appended across restarts, with a line from the supervisor before
	// each start and after each exit.
	LogFile string
	// PIDFile, if set, holds the pid of the running process; it is rewritten on every start and removed when
	// the process is stopped.
	PIDFile string
}

// Backoff is the restart policy: the first restart waits Min, each following one twice as long up to Max; a
// process that ran for at least ResetAfter starts again from Min.
type Backoff struct {
	Min, Max, ResetAfter time.Duration
}

// DefaultBackoff restarts after 500ms, 1s, 2s, … up to 30s, and forgets earlier crashes after a minute of
// uptime.
var DefaultBackoff = Backoff{Min: 500 * time.Millisecond, Max: 30 * time.Second, ResetAfter: time.Minute}

// Process is a supervised process. Its methods are safe for concurrent use.
type Process struct {
	spec    Spec
	backoff Backoff

	mu       sync.Mutex
	pid      int // of the current process, 0 between runs
	exits    int // exits not asked for by Stop
	lastExit error
	stopping bool

	stopCh chan struct{} // closed by Stop
	done   chan struct{} // closed when the supervision loop has ended and no process runs
}

// Start starts the process and supervises it until Stop. It fails only when the first start fails (a missing
// binary, an unwritable log file); later failures to start are logged and retried with backoff.
func Start(spec Spec, backoff Backoff) (*Process, error) {
	if backoff.Min <= 0 {
		backoff = DefaultBackoff
	}
	p := &Process{spec: spec, backoff: backoff, stopCh: make(chan struct{}), done: make(chan struct{})}
	cmd, err := p.spawn()
	if err != nil {
		return nil, err
	}
	go p.loop(cmd)
	return p, nil
}

// Name is the Spec's name.
func (p *Process) Name() string { return p.spec.Name }

// LogFile is the Spec's log file.
func (p *Process) LogFile() string { return p.spec.LogFile }

// PID is the pid of the running process, or 0 while it is being restarted or after Stop.
func (p *Process) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

// Exits is how often the process has exited without being asked to, and the last such exit's error
// (nil for a zero exit status).
func (p *Process) Exits() (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exits, p.lastExit
}

// spawn starts one run of the process, unless Stop was called.
func (p *Process) spawn() (*exec.Cmd, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopping {
		return nil, errStopping
	}
	log, err := os.OpenFile(p.spec.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("start %s: open log file: %w", p.spec.Name, err)
	}
	defer log.Close() // the child has its own descriptor
	cmd := exec.Command(p.spec.Path, p.spec.Args...)
	cmd.Env = p.spec.Env
	cmd.Dir = p.spec.Dir
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.SysProcAttr = sysProcAttr()
	fmt.Fprintf(log, "%s supervisor: starting %s %s\n", stamp(), p.spec.Path, strings.Join(p.spec.Args, " "))
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(log, "%s supervisor: start failed: %v\n", stamp(), err)
		return nil, fmt.Errorf("start %s: %w", p.spec.Name, err)
	}
	p.pid = cmd.Process.Pid
	if p.spec.PIDFile != "" {
		if err := writeFileAtomic(p.spec.PIDFile, []byte(fmt.Sprintf("%d\n", p.pid)), 0o600); err != nil {
			fmt.Fprintf(log, "%s supervisor: write pid file: %v\n", stamp(), err)
		}
	}
	return cmd, nil
}

var errStopping = errors.New("stopping")

// loop waits for the process, restarts it with backoff when it exits on its own, and returns once Stop was
// called and the process has exited.
func (p *Process) loop(cmd *exec.Cmd) {
	defer close(p.done)
	delay := p.backoff.Min
	for {
		if cmd != nil {
			started := time.Now()
			pid := cmd.Process.Pid
			err := cmd.Wait()
			// Whatever the process left in its group goes with it.
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			p.mu.Lock()
			p.pid = 0
			stopping := p.stopping
			if !stopping {
				p.exits++
				p.lastExit = err
			}
			p.mu.Unlock()
			p.logf("%s exited after %s: %s", p.spec.Name, time.Since(started).Round(time.Millisecond), exitString(err))
			if stopping {
				return
			}
			if time.Since(started) >= p.backoff.ResetAfter {
				delay = p.backoff.Min
			}
		}
		p.logf("restarting %s in %s", p.spec.Name, delay)
		select {
		case <-p.stopCh:
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, p.backoff.Max)
		var err error
		cmd, err = p.spawn()
		if errors.Is(err, errStopping) {
			return
		}
		if err != nil {
			p.mu.Lock()
			p.exits++
			p.lastExit = err
			p.mu.Unlock()
			cmd = nil
		}
	}
}

// Stop stops supervising and ends the process: SIGTERM to its process group, then SIGKILL to the group if it
// has not exited after timeout. It returns once the process has exited and removes the pid file. Calling it
// again returns at once.
func (p *Process) Stop(timeout time.Duration) error {
	p.mu.Lock()
	if p.stopping {
		p.mu.Unlock()
		<-p.done
		return nil
	}
	p.stopping = true
	close(p.stopCh)
	pid := p.pid
	p.mu.Unlock()

	var err error
	if pid > 0 {
		p.logf("stopping %s (SIGTERM to process group %d)", p.spec.Name, pid)
		_ = syscall.Kill(-pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(timeout):
			p.logf("%s did not exit within %s: SIGKILL to process group %d", p.spec.Name, timeout, pid)
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			<-p.done
			err = fmt.Errorf("%s did not exit within %s of SIGTERM and was killed", p.spec.Name, timeout)
		}
	}
	<-p.done
	if p.spec.PIDFile != "" {
		if rmErr := os.Remove(p.spec.PIDFile); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
			err = errors.Join(err, rmErr)
		}
	}
	return err
}

// logf appends a supervisor line to the process's log file.
func (p *Process) logf(format string, args ...any) {
	f, err := os.OpenFile(p.spec.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s supervisor: %s\n", stamp(), fmt.Sprintf(format, args...))
}

func stamp() string { return time.Now().Format(time.RFC3339Nano) }

func exitString(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
