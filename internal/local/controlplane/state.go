package controlplane

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/opstrace/opstrace/internal/local/supervisor"
)

// markerFile marks a directory as a control plane's state, so Destroy never removes anything else.
const markerFile = ".opstrace-controlplane"

// layout is where everything lives under StateDir.
type layout struct{ root string }

func (l layout) marker() string             { return filepath.Join(l.root, markerFile) }
func (l layout) portsFile() string          { return filepath.Join(l.root, "ports.json") }
func (l layout) pki() pkiPaths              { return pkiPaths{filepath.Join(l.root, "pki")} }
func (l layout) etcdData() string           { return filepath.Join(l.root, "etcd") }
func (l layout) kubeconfigDir() string      { return filepath.Join(l.root, "kubeconfig") }
func (l layout) kubeconfig(n string) string { return filepath.Join(l.kubeconfigDir(), n+".kubeconfig") }
func (l layout) schedulerConfig() string    { return filepath.Join(l.root, "kube-scheduler.yaml") }
func (l layout) logDir() string             { return filepath.Join(l.root, "logs") }
func (l layout) logFile(c string) string    { return filepath.Join(l.logDir(), c+".log") }
func (l layout) runDir() string             { return filepath.Join(l.root, "run") }
func (l layout) pidFile(c string) string    { return filepath.Join(l.runDir(), c+".pid") }
func (l layout) lockFile() string           { return filepath.Join(l.runDir(), "lock") }

// prepare creates StateDir (or checks that an existing one is ours) and its subdirectories.
func (l layout) prepare() error {
	if err := os.MkdirAll(l.root, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	if _, err := os.Stat(l.marker()); errors.Is(err, os.ErrNotExist) {
		entries, err := os.ReadDir(l.root)
		if err != nil {
			return fmt.Errorf("read state directory: %w", err)
		}
		if len(entries) > 0 {
			return fmt.Errorf("state directory %s is not empty and was not created by opstrace: "+
				"choose an empty or new directory", l.root)
		}
		if err := os.WriteFile(l.marker(), []byte("opstrace local control plane state; remove with `opstrace destroy local`\n"), 0o644); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	for _, dir := range []string{l.kubeconfigDir(), l.logDir(), l.runDir()} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
	}
	// etcd refuses a data directory others can read.
	return os.MkdirAll(l.etcdData(), 0o700)
}

// ports are the TCP ports on 127.0.0.1, chosen at the first start and kept, so the apiserver URL in every
// kubeconfig handed out stays valid across restarts.
type ports struct {
	EtcdClient        int `json:"etcdClient"`
	EtcdPeer          int `json:"etcdPeer"`
	APIServer         int `json:"apiServer"`
	ControllerManager int `json:"controllerManager"`
	Scheduler         int `json:"scheduler"`
}

func (p ports) byComponent() map[string]int {
	return map[string]int{
		"etcd (client)":        p.EtcdClient,
		"etcd (peer)":          p.EtcdPeer,
		ComponentAPIServer:     p.APIServer,
		ComponentControllerMgr: p.ControllerManager,
		ComponentScheduler:     p.Scheduler,
	}
}

// loadOrChoosePorts reads ports.json, or picks free ports and writes it.
func loadOrChoosePorts(path string) (ports, error) {
	var p ports
	b, err := os.ReadFile(path)
	if err == nil {
		if err := json.Unmarshal(b, &p); err != nil {
			return ports{}, fmt.Errorf("%s: %w", path, err)
		}
		for name, port := range p.byComponent() {
			if port <= 0 || port > 65535 {
				return ports{}, fmt.Errorf("%s: port %d of %s is invalid", path, port, name)
			}
		}
		return p, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return ports{}, err
	}
	// Hold every listener until all are chosen so that the ports differ.
	var chosen []int
	for range 5 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return ports{}, fmt.Errorf("choose a free port on 127.0.0.1: %w", err)
		}
		defer l.Close()
		chosen = append(chosen, l.Addr().(*net.TCPAddr).Port)
	}
	p = ports{EtcdClient: chosen[0], EtcdPeer: chosen[1], APIServer: chosen[2], ControllerManager: chosen[3], Scheduler: chosen[4]}
	b, err = json.MarshalIndent(p, "", "  ")
	if err != nil {
		return ports{}, err
	}
	return p, writeFileAtomic(path, append(b, '\n'), 0o644)
}

// checkPortsFree fails, naming the component, when another program listens on one of the ports.
func checkPortsFree(p ports) error {
	var errs []error
	names := make([]string, 0, 5)
	byName := p.byComponent()
	for name := range byName {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(byName[name])))
		if err != nil {
			errs = append(errs, fmt.Errorf("port %d of %s on 127.0.0.1 is in use by another program: stop it, "+
				"or run `opstrace destroy local` to start over on new ports", byName[name], name))
			continue
		}
		_ = l.Close()
	}
	return errors.Join(errs...)
}

// stateLock is the exclusive flock on run/lock that the process running a control plane holds for as long as
// it runs; the kernel releases it when that process dies, however it dies. The file holds the owner's pid.
type stateLock struct{ f *os.File }

// errLocked means another process (or another ControlPlane in this one) holds the lock.
var errLocked = errors.New("locked")

func acquireLock(path string) (*stateLock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, errLocked
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err != nil {
		_ = f.Close()
		return nil, err
	}
	if _, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
		_ = f.Close()
		return nil, err
	}
	return &stateLock{f: f}, nil
}

func (l *stateLock) release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the last descriptor releases the flock
	l.f = nil
	return err
}

// State is what StateDir says about a control plane.
type State struct {
	// Running is true while a process (this one or another) runs the control plane.
	Running bool
	// OwnerPID is the pid of the process running it (the `opstrace` CLI), when Running.
	OwnerPID int
	// PIDs are the recorded pids of the components that are alive, by component name.
	PIDs map[string]int
	// APIServerURL and Kubeconfig are set once the control plane has been started at least once.
	APIServerURL string
	Kubeconfig   string
}

// AlreadyRunningError is returned by Start when StateDir's control plane is running in some process.
// errors.Is(err, ErrAlreadyRunning) is true for it.
type AlreadyRunningError struct {
	StateDir string
	State    State
}

// ErrAlreadyRunning is the sentinel of AlreadyRunningError.
var ErrAlreadyRunning = errors.New("control plane already running")

func (e *AlreadyRunningError) Error() string {
	var parts []string
	for _, c := range components {
		if pid, ok := e.State.PIDs[c]; ok {
			parts = append(parts, fmt.Sprintf("%s %d", c, pid))
		}
	}
	pids := ""
	if len(parts) > 0 {
		pids = "; " + strings.Join(parts, ", ")
	}
	return fmt.Sprintf("the control plane in %s is already running (process %d%s): use it through %s, "+
		"or stop that process, or run `opstrace destroy local`", e.StateDir, e.State.OwnerPID, pids, e.State.Kubeconfig)
}

// Is makes errors.Is(err, ErrAlreadyRunning) true.
func (e *AlreadyRunningError) Is(target error) bool { return target == ErrAlreadyRunning }

// Status reports whether stateDir's control plane runs, in which process, and the pids of its components.
// It does not start or stop anything.
func Status(stateDir string) (State, error) {
	abs, err := filepath.Abs(stateDir)
	if err != nil {
		return State{}, err
	}
	l := layout{abs}
	st := State{PIDs: map[string]int{}}
	if _, err := os.Stat(l.marker()); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return st, nil
		}
		return st, err
	}
	if p, err := loadPortsIfPresent(l.portsFile()); err == nil && p != nil {
		st.APIServerURL = apiServerURL(p.APIServer)
		st.Kubeconfig = l.kubeconfig("admin")
	}
	for _, c := range components {
		pid, err := supervisor.ReadPIDFile(l.pidFile(c))
		if err == nil && supervisor.Owned(pid, abs) {
			st.PIDs[c] = pid
		}
	}
	lock, err := acquireLock(l.lockFile())
	switch {
	case errors.Is(err, errLocked):
		st.Running = true
		st.OwnerPID, _ = supervisor.ReadPIDFile(l.lockFile())
	case err != nil:
		return st, err
	default:
		_ = lock.release()
	}
	return st, nil
}

func loadPortsIfPresent(path string) (*ports, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var p ports
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// killStale ends components recorded in pid files that are still alive although no process holds the lock:
// the leftovers of a run whose owner was killed where Pdeathsig does not exist (macOS). A pid is signalled
// only if its command line names StateDir, so a recycled pid is left alone.
func killStale(l layout, timeout time.Duration) error {
	var errs []error
	for i := len(components) - 1; i >= 0; i-- {
		c := components[i]
		pid, err := supervisor.ReadPIDFile(l.pidFile(c))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if pid > 0 && supervisor.Owned(pid, l.root) {
			if err := supervisor.Terminate(pid, timeout); err != nil {
				errs = append(errs, fmt.Errorf("stop leftover %s (pid %d): %w", c, pid, err))
				continue
			}
		}
		if err := os.Remove(l.pidFile(c)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// running are the control planes started by this process, by absolute StateDir, so that Destroy can stop
// one gracefully instead of signalling its own process.
var running = struct {
	sync.Mutex
	m map[string]*ControlPlane
}{m: map[string]*ControlPlane{}}

// Destroy stops the control plane of stateDir wherever it runs and removes stateDir.
//
// A control plane started by this process is stopped with Stop. One run by another process (an `opstrace
// create local` still running in another terminal) is stopped by sending that process SIGTERM, then SIGKILL
// after 30 seconds; its components die with it, and any recorded component still alive afterwards is
// stopped through its pid file. Destroy refuses to remove a directory that was not created by Start, and
// returns nil when stateDir does not exist.
func Destroy(stateDir string) error {
	abs, err := filepath.Abs(stateDir)
	if err != nil {
		return err
	}
	l := layout{abs}
	if _, err := os.Stat(abs); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if _, err := os.Stat(l.marker()); err != nil {
		return fmt.Errorf("%s does not look like an opstrace control plane state directory (no %s): not removing it",
			abs, markerFile)
	}

	running.Lock()
	cp := running.m[abs]
	running.Unlock()
	if cp != nil {
		if err := cp.Stop(); err != nil {
			return fmt.Errorf("stop control plane: %w", err)
		}
	}

	if err := os.MkdirAll(l.runDir(), 0o700); err != nil {
		return err
	}
	lock, err := acquireLock(l.lockFile())
	if errors.Is(err, errLocked) {
		owner, _ := supervisor.ReadPIDFile(l.lockFile())
		if owner <= 0 || owner == os.Getpid() {
			return fmt.Errorf("control plane in %s is locked by process %d, which cannot be stopped from here", abs, owner)
		}
		if err := syscall.Kill(owner, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("stop process %d that runs the control plane: %w", owner, err)
		}
		lock, err = waitForLock(l.lockFile(), 30*time.Second)
		if errors.Is(err, errLocked) {
			_ = syscall.Kill(owner, syscall.SIGKILL)
			lock, err = waitForLock(l.lockFile(), 10*time.Second)
		}
		if err != nil {
			return fmt.Errorf("process %d still runs the control plane in %s: %w", owner, abs, err)
		}
	} else if err != nil {
		return err
	}
	stopErr := killStale(l, defaultStopTimeout)
	_ = lock.release()
	if stopErr != nil {
		return fmt.Errorf("stop control plane processes (not removing %s): %w", abs, stopErr)
	}
	if err := os.RemoveAll(abs); err != nil {
		return fmt.Errorf("remove %s: %w", abs, err)
	}
	return nil
}

func waitForLock(path string, timeout time.Duration) (*stateLock, error) {
	deadline := time.Now().Add(timeout)
	for {
		lock, err := acquireLock(path)
		if !errors.Is(err, errLocked) || time.Now().After(deadline) {
			return lock, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}
