// Package controlplane runs a real Kubernetes control plane — etcd, kube-apiserver, kube-controller-manager
// and kube-scheduler — as supervised child processes on one machine, without containers, for `opstrace
// create local`.
//
// Everything listens on 127.0.0.1 only, on ports chosen at the first start and kept in StateDir, so the
// apiserver URL (and every kubeconfig handed out) survives restarts. StateDir holds:
//
//	.opstrace-controlplane  marker: Destroy removes only directories that have it
//	ports.json              the five ports
//	pki/                    cluster CA, etcd CA, serving and client certificates, service-account key pair
//	etcd/                   etcd's data
//	kubeconfig/             admin, controller-manager and scheduler kubeconfigs (certificates embedded)
//	logs/<component>.log    each process's output, appended across restarts
//	run/<component>.pid     pids of the running components; run/lock is held by the owning process
//
// # One owner per StateDir
//
// The process that calls Start owns the control plane until Stop: it holds an exclusive flock on run/lock,
// which the kernel drops when that process dies however it dies, and its children die with it (Pdeathsig on
// Linux). A second Start on the same StateDir — from this or any other process — does not attach to the
// running control plane: it fails with an *AlreadyRunningError that names the owner and component pids
// (errors.Is(err, ErrAlreadyRunning)). Status reports the same without starting anything, and the admin
// kubeconfig works from any process, so a second CLI needs no handle on the first one's ControlPlane.
// Destroy stops the control plane wherever it runs and removes StateDir.
//
// Certificates are renewed by Start when they have passed 80% of their lifetime (90 days for leaves); the
// CAs (5 years) and the service-account key are never replaced.
package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/opstrace/opstrace/internal/certs"
	"github.com/opstrace/opstrace/internal/local/supervisor"
)

// Defaults of Config.
const (
	DefaultClusterName  = "opstrace-local"
	defaultReadyTimeout = 2 * time.Minute
	defaultStopTimeout  = 15 * time.Second
)

// Config configures Start.
type Config struct {
	// StateDir holds the control plane's state (see the package documentation). It is created if missing;
	// an existing directory must be empty or have been created by Start.
	StateDir string
	// BinDir holds etcd, kube-apiserver, kube-controller-manager and kube-scheduler.
	BinDir string
	// ClusterName names the cluster and context in the kubeconfigs and is passed to the controller manager.
	// Default DefaultClusterName.
	ClusterName string
	// Progress, if set, is called while Start waits: with a step ("waiting for kube-apiserver /readyz") when
	// the step begins and about once a second after that, with the time spent on that step so far.
	Progress func(step string, elapsed time.Duration)
	// ReadyTimeout is how long Start waits for each component to become healthy. Default 2 minutes.
	ReadyTimeout time.Duration
	// StopTimeout is how long Stop waits for a component to exit after SIGTERM before it sends SIGKILL.
	// Default 15 seconds.
	StopTimeout time.Duration
	// UnsafeEtcdNoFsync runs etcd with --unsafe-no-fsync: faster, but a machine crash can lose or corrupt
	// data. For tests.
	UnsafeEtcdNoFsync bool
}

// ControlPlane is a running control plane, owned by this process until Stop.
type ControlPlane struct {
	cfg    Config
	layout layout
	ports  ports
	lock   *stateLock
	rest   *rest.Config

	procs []*supervisor.Process // in start order

	stopOnce sync.Once
	stopErr  error
}

// ComponentError is returned by Start when a component does not become healthy. Its message names the
// component and ends with the last lines of its log file.
type ComponentError struct {
	Component string
	LogFile   string
	// LogTail is the last 20 lines of LogFile.
	LogTail []string
	Err     error
}

func (e *ComponentError) Error() string {
	return fmt.Sprintf("%s did not become healthy: %v\nlast %d lines of %s:\n%s",
		e.Component, e.Err, len(e.LogTail), e.LogFile, strings.Join(e.LogTail, "\n"))
}

func (e *ComponentError) Unwrap() error { return e.Err }

// Start starts the control plane in cfg.StateDir — creating its state at the first start, reusing it after —
// and returns once etcd is healthy, the apiserver ready and the controller manager and scheduler healthy.
// ctx bounds only this wait: the processes run until Stop. On error nothing is left running.
func Start(ctx context.Context, cfg Config) (*ControlPlane, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("start control plane: Config.StateDir is empty")
	}
	if cfg.ClusterName == "" {
		cfg.ClusterName = DefaultClusterName
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = defaultReadyTimeout
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = defaultStopTimeout
	}
	abs, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	cfg.StateDir = abs
	if err := checkBinaries(cfg.BinDir); err != nil {
		return nil, err
	}

	l := layout{abs}
	if err := l.prepare(); err != nil {
		return nil, err
	}
	lock, err := acquireLock(l.lockFile())
	if errors.Is(err, errLocked) {
		st, _ := Status(abs)
		return nil, &AlreadyRunningError{StateDir: abs, State: st}
	}
	if err != nil {
		return nil, err
	}
	cp := &ControlPlane{cfg: cfg, layout: l, lock: lock}
	if err := cp.start(ctx); err != nil {
		return nil, errors.Join(err, cp.Stop())
	}
	running.Lock()
	running.m[abs] = cp
	running.Unlock()
	return cp, nil
}

// checkBinaries fails with the fix when a component binary is missing.
func checkBinaries(binDir string) error {
	for _, c := range components {
		path := filepath.Join(binDir, c)
		info, err := os.Stat(path)
		if err != nil || info.IsDir() || info.Mode()&0o111 == 0 {
			return fmt.Errorf("%s not found in %s: run `make test-tools` once (it builds etcd, kube-apiserver, "+
				"kube-controller-manager, kube-scheduler and kubectl from the Go module proxy)", c, binDir)
		}
	}
	return nil
}

func (cp *ControlPlane) start(ctx context.Context) error {
	l := cp.layout
	if err := killStale(l, cp.cfg.StopTimeout); err != nil {
		return err
	}
	p, err := loadOrChoosePorts(l.portsFile())
	if err != nil {
		return err
	}
	cp.ports = p
	if err := checkPortsFree(p); err != nil {
		return err
	}
	if err := ensurePKI(l.pki().dir, time.Now()); err != nil {
		return fmt.Errorf("certificates in %s: %w", l.pki().dir, err)
	}
	if err := writeKubeconfigs(l, cp.cfg.ClusterName, cp.APIServerURL()); err != nil {
		return fmt.Errorf("write kubeconfigs: %w", err)
	}
	if err := writeFileAtomic(l.schedulerConfig(), schedulerConfig(l), 0o644); err != nil {
		return fmt.Errorf("write scheduler configuration: %w", err)
	}
	cp.rest, err = clientcmd.BuildConfigFromFlags("", cp.Kubeconfig())
	if err != nil {
		return fmt.Errorf("read %s: %w", cp.Kubeconfig(), err)
	}

	etcd, err := cp.run(ComponentEtcd, etcdArgs(l, p, cp.cfg.UnsafeEtcdNoFsync))
	if err != nil {
		return err
	}
	etcdProbe, err := cp.etcdProbe()
	if err != nil {
		return err
	}
	if err := cp.waitFor(ctx, etcd, "waiting for etcd to be healthy", etcdProbe); err != nil {
		return err
	}

	apiserver, err := cp.run(ComponentAPIServer, apiServerArgs(l, p))
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(cp.rest)
	if err != nil {
		return err
	}
	readyz := func(ctx context.Context) error {
		_, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err
	}
	if err := cp.waitFor(ctx, apiserver, "waiting for kube-apiserver /readyz", readyz); err != nil {
		return err
	}

	kcm, err := cp.run(ComponentControllerMgr, controllerManagerArgs(l, p, cp.cfg.ClusterName))
	if err != nil {
		return err
	}
	scheduler, err := cp.run(ComponentScheduler, schedulerArgs(l, p))
	if err != nil {
		return err
	}
	healthz, err := cp.healthzProbe()
	if err != nil {
		return err
	}
	if err := cp.waitFor(ctx, kcm, "waiting for kube-controller-manager /healthz", healthz(p.ControllerManager)); err != nil {
		return err
	}
	return cp.waitFor(ctx, scheduler, "waiting for kube-scheduler /healthz", healthz(p.Scheduler))
}

func (cp *ControlPlane) run(component string, args []string) (*supervisor.Process, error) {
	proc, err := supervisor.Start(supervisor.Spec{
		Name:    component,
		Path:    filepath.Join(cp.cfg.BinDir, component),
		Args:    args,
		Dir:     cp.layout.root,
		LogFile: cp.layout.logFile(component),
		PIDFile: cp.layout.pidFile(component),
	}, supervisor.DefaultBackoff)
	if err != nil {
		return nil, err
	}
	cp.procs = append(cp.procs, proc)
	return proc, nil
}

// crashLoopExits is how many exits during startup make Start give up before ReadyTimeout.
const crashLoopExits = 3

// waitFor polls probe until it succeeds, the process crash-loops, ReadyTimeout passes or ctx ends, reporting
// progress about once a second.
func (cp *ControlPlane) waitFor(ctx context.Context, proc *supervisor.Process, step string, probe func(context.Context) error) error {
	start := time.Now()
	deadline := start.Add(cp.cfg.ReadyTimeout)
	var reported time.Time
	for {
		if cp.cfg.Progress != nil && time.Since(reported) >= time.Second {
			cp.cfg.Progress(step, time.Since(start))
			reported = time.Now()
		}
		probeCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := probe(probeCtx)
		cancel()
		if err == nil {
			return nil
		}
		if exits, exitErr := proc.Exits(); exits >= crashLoopExits {
			return cp.componentError(proc, fmt.Errorf("exited %d times while starting (last: %v)", exits, exitString(exitErr)))
		}
		if time.Now().After(deadline) {
			return cp.componentError(proc, fmt.Errorf("not healthy after %s: %w", cp.cfg.ReadyTimeout, err))
		}
		select {
		case <-ctx.Done():
			return cp.componentError(proc, fmt.Errorf("gave up waiting: %w (last check: %v)", ctx.Err(), err))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func exitString(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

func (cp *ControlPlane) componentError(proc *supervisor.Process, err error) error {
	tail, tailErr := supervisor.LastLines(proc.LogFile(), 20)
	if tailErr != nil {
		tail = []string{"(log unreadable: " + tailErr.Error() + ")"}
	}
	return &ComponentError{Component: proc.Name(), LogFile: proc.LogFile(), LogTail: tail, Err: err}
}

// etcdProbe checks etcd's /health with the apiserver's etcd client certificate.
func (cp *ControlPlane) etcdProbe() (func(context.Context) error, error) {
	pki := cp.layout.pki()
	ca, err := readPair(pki, pkiEtcdCA)
	if err != nil {
		return nil, err
	}
	clientCert, err := tls.LoadX509KeyPair(pki.crt(pkiAPIServerEtcdClient), pki.key(pkiAPIServerEtcdClient))
	if err != nil {
		return nil, err
	}
	client, err := tlsClient(ca.CertPEM, &clientCert)
	if err != nil {
		return nil, err
	}
	url := loopbackURL("https", cp.ports.EtcdClient) + "/health"
	return func(ctx context.Context) error {
		body, err := get(ctx, client, url)
		if err != nil {
			return err
		}
		var health struct {
			Health string `json:"health"`
			Reason string `json:"reason"`
		}
		if err := json.Unmarshal(body, &health); err != nil {
			return fmt.Errorf("%s: %w", url, err)
		}
		if health.Health != "true" {
			return fmt.Errorf("%s: health %q %s", url, health.Health, health.Reason)
		}
		return nil
	}, nil
}

// healthzProbe checks /healthz of the controller manager or scheduler, which serve certificates from the
// cluster CA and let anyone read /healthz.
func (cp *ControlPlane) healthzProbe() (func(port int) func(context.Context) error, error) {
	ca, err := os.ReadFile(cp.CAFile())
	if err != nil {
		return nil, err
	}
	client, err := tlsClient(ca, nil)
	if err != nil {
		return nil, err
	}
	return func(port int) func(context.Context) error {
		url := loopbackURL("https", port) + "/healthz"
		return func(ctx context.Context) error {
			_, err := get(ctx, client, url)
			return err
		}
	}, nil
}

func tlsClient(caPEM []byte, cert *tls.Certificate) (*http.Client, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("no CA certificate")
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}, nil
}

func get(ctx context.Context, client *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

// Stop stops the components — scheduler and controller manager, then apiserver, then etcd — each with
// SIGTERM to its process group and SIGKILL after Config.StopTimeout, and releases StateDir. It returns once
// no component process is left. Calling it again returns the first call's result.
func (cp *ControlPlane) Stop() error {
	cp.stopOnce.Do(func() {
		running.Lock()
		if running.m[cp.layout.root] == cp {
			delete(running.m, cp.layout.root)
		}
		running.Unlock()

		byName := map[string]*supervisor.Process{}
		for _, proc := range cp.procs {
			byName[proc.Name()] = proc
		}
		var errs []error
		var mu sync.Mutex
		stop := func(names ...string) {
			var wg sync.WaitGroup
			for _, name := range names {
				if proc := byName[name]; proc != nil {
					wg.Go(func() {
						if err := proc.Stop(cp.cfg.StopTimeout); err != nil {
							mu.Lock()
							errs = append(errs, err)
							mu.Unlock()
						}
					})
				}
			}
			wg.Wait()
		}
		stop(ComponentScheduler, ComponentControllerMgr)
		stop(ComponentAPIServer)
		stop(ComponentEtcd)
		errs = append(errs, cp.lock.release())
		cp.stopErr = errors.Join(errs...)
	})
	return cp.stopErr
}

// Kubeconfig is the path of the admin kubeconfig (user opstrace-admin in group system:masters).
func (cp *ControlPlane) Kubeconfig() string { return cp.layout.kubeconfig("admin") }

// RESTConfig is a copy of the admin client configuration.
func (cp *ControlPlane) RESTConfig() *rest.Config { return rest.CopyConfig(cp.rest) }

// APIServerURL is https://127.0.0.1:<port>, the same across restarts on the same StateDir.
func (cp *ControlPlane) APIServerURL() string { return apiServerURL(cp.ports.APIServer) }

// CAFile is the cluster CA certificate: it signed the apiserver's serving certificate and every client
// certificate the apiserver accepts, and the controller manager signs approved CSRs with it.
func (cp *ControlPlane) CAFile() string { return cp.layout.pki().crt(pkiCA) }

// StateDir is the absolute state directory.
func (cp *ControlPlane) StateDir() string { return cp.layout.root }

// LogFile is the log file of a component (ComponentEtcd, ComponentAPIServer, …).
func (cp *ControlPlane) LogFile(component string) string { return cp.layout.logFile(component) }

// PIDs are the pids of the component processes now running, by component name; a component being restarted
// is missing.
func (cp *ControlPlane) PIDs() map[string]int {
	pids := map[string]int{}
	for _, proc := range cp.procs {
		if pid := proc.PID(); pid > 0 {
			pids[proc.Name()] = pid
		}
	}
	return pids
}

// WriteClientKubeconfig writes to path a kubeconfig for the apiserver authenticating as user in groups, with
// a client certificate from the cluster CA valid for 90 days: for example user "system:node:NAME" in group
// "system:nodes" for a node agent, which the Node authorizer and NodeRestriction then confine to its node.
func (cp *ControlPlane) WriteClientKubeconfig(path, user string, groups ...string) error {
	pki := cp.layout.pki()
	ca, err := readPair(pki, pkiCA)
	if err != nil {
		return err
	}
	pair, err := issueClient(ca, user, groups, time.Now(), certs.LeafLifetime)
	if err != nil {
		return fmt.Errorf("issue client certificate for %s: %w", user, err)
	}
	return writeKubeconfig(path, cp.cfg.ClusterName, cp.APIServerURL(), ca.CertPEM, user, pair)
}
