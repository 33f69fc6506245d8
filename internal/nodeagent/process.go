package nodeagent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync/atomic"
	"syscall"
	"time"
)

// process is one run of a container: bwrap in its own process group, and the sandboxed program as its
// child. Stopping signals the program (bwrap would not pass a signal on), then kills the whole group.
type process struct {
	cmd      *exec.Cmd
	childPID atomic.Int32
	done     chan struct{}
	exitCode int
	signaled string
}

// startProcess starts bwrap with args (which must use --info-fd 3) and env, appending its output to logFile.
func startProcess(bwrap string, args, env []string, logFile string) (*process, error) {
	log, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log file: %w", err)
	}
	infoR, infoW, err := os.Pipe()
	if err != nil {
		log.Close()
		return nil, err
	}
	cmd := exec.Command(bwrap, args...)
	cmd.Env = env
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.ExtraFiles = []*os.File{infoW}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		infoR.Close()
		infoW.Close()
		return nil, fmt.Errorf("start bwrap: %w", err)
	}
	infoW.Close()
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		defer infoR.Close()
		var info struct {
			ChildPID int32 `json:"child-pid"`
		}
		if err := json.NewDecoder(infoR).Decode(&info); err == nil {
			p.childPID.Store(info.ChildPID)
		}
	}()
	go func() {
		err := cmd.Wait()
		log.Close()
		p.exitCode = 0
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			p.exitCode = exit.ExitCode()
			if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				p.exitCode = 128 + int(ws.Signal())
				p.signaled = ws.Signal().String()
			}
		} else if err != nil {
			p.exitCode = 128
		}
		close(p.done)
	}()
	return p, nil
}

// PID is the sandboxed program's pid on the host, or bwrap's until bwrap has reported it.
func (p *process) PID() int {
	if pid := p.childPID.Load(); pid > 0 {
		return int(pid)
	}
	return p.cmd.Process.Pid
}

// stop sends SIGTERM to the program, waits up to grace for it to exit, then kills the process group.
func (p *process) stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	if pid := p.childPID.Load(); pid > 0 {
		_ = syscall.Kill(int(pid), syscall.SIGTERM)
	} else {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	}
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
	case <-timer.C:
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	// Whatever the program forked into the group goes with it.
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
}
