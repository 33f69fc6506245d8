// Package nodeagent is the node agent of `opstrace create local`: a kubelet for the distribution's pods on
// one machine without a container runtime. It registers a Node through virtual-kubelet, and runs each
// container as a process of the machine, sandboxed by bubblewrap so that it sees exactly its Kubernetes
// paths (volumes, service account token) and nothing of the host but /usr; its image stands for a host
// binary (Config.Images). Every pod binds its own address from Config.PodCIDR. The agent also provisions
// local persistent volumes for the StorageClass opstrace-local.
package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	vklog "github.com/virtual-kubelet/virtual-kubelet/log"
	"github.com/virtual-kubelet/virtual-kubelet/log/klogv2"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

// Config is the node agent's configuration.
type Config struct {
	// NodeName is the name of the Node; default "local".
	NodeName string
	// StateDir holds pod directories (volumes, logs), local persistent volumes and the pod IP allocations.
	StateDir string
	// APIServerURL is the API server containers reach through KUBERNETES_SERVICE_HOST and _PORT; default
	// the host of the REST config.
	APIServerURL string
	// ClusterCAFile is the CA of the API server, for ca.crt in service account volumes while the ConfigMap
	// kube-root-ca.crt does not exist; default the REST config's CA.
	ClusterCAFile string
	// PodCIDR is the range of pod addresses; default DefaultPodCIDR. It must be routed locally (see IPAM).
	PodCIDR string
	// NodeIP is the node's address (status.hostIP of its pods); default 127.0.0.1.
	NodeIP string
	// ClusterDNS is the address of the cluster DNS server (package localdns); when set, pods of DNS
	// policy ClusterFirst (the default) or ClusterFirstWithHostNet get an /etc/resolv.conf naming it (see
	// PodResolvConf). Empty: pods get the host's /etc/resolv.conf.
	ClusterDNS string
	// ClusterDomain is the cluster's DNS domain; default DefaultClusterDomain.
	ClusterDomain string
	// Images maps images to host binaries.
	Images Images
	// Bwrap is the bubblewrap binary; default "bwrap" from PATH.
	Bwrap string
	// RestartBackoff is the first delay before restarting a container, doubled up to MaxRestartBackoff;
	// defaults 10s and 5m as the kubelet's.
	RestartBackoff, MaxRestartBackoff time.Duration
	// VolumeResync is how often volumes made of API objects are checked besides on change; default 10s.
	VolumeResync time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Agent is a running node agent.
type Agent struct {
	cfg       Config
	client    kubernetes.Interface
	log       *slog.Logger
	ipam      *IPAM
	tokens    *tokenManager
	objects   *listerObjects
	clusterCA []byte
	apiHost   string
	apiPort   string
	rootLinks map[string]string

	ctx context.Context

	bwrapMu sync.Mutex
	bwrap   string

	mu       sync.Mutex
	pods     map[string]*podRunner // by namespace/name
	notifyFn func(*corev1.Pod)

	podLister corelisters.PodLister
}

// New checks cfg and prepares an agent for the API server of restConfig.
func New(cfg Config, restConfig *rest.Config) (*Agent, error) {
	if cfg.NodeName == "" {
		cfg.NodeName = "local"
	}
	if cfg.StateDir == "" {
		return nil, errors.New("state directory is required")
	}
	if cfg.Images == nil {
		cfg.Images = Images{}
	}
	if cfg.RestartBackoff <= 0 {
		cfg.RestartBackoff = 10 * time.Second
	}
	if cfg.MaxRestartBackoff <= 0 {
		cfg.MaxRestartBackoff = 5 * time.Minute
	}
	if cfg.VolumeResync <= 0 {
		cfg.VolumeResync = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.APIServerURL == "" {
		cfg.APIServerURL = restConfig.Host
	}
	u, err := url.Parse(cfg.APIServerURL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("API server URL %q: want https://HOST:PORT", cfg.APIServerURL)
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	var ca []byte
	if cfg.ClusterCAFile != "" {
		if ca, err = os.ReadFile(cfg.ClusterCAFile); err != nil {
			return nil, fmt.Errorf("read cluster CA: %w", err)
		}
	} else if len(restConfig.CAData) > 0 {
		ca = restConfig.CAData
	} else if restConfig.CAFile != "" {
		if ca, err = os.ReadFile(restConfig.CAFile); err != nil {
			return nil, fmt.Errorf("read cluster CA: %w", err)
		}
	}
	stateDir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	cfg.StateDir = stateDir
	if err := os.MkdirAll(filepath.Join(stateDir, "pods"), 0o755); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	if cfg.PodCIDR == "" {
		cfg.PodCIDR = DefaultPodCIDR
	}
	if cfg.NodeIP == "" {
		cfg.NodeIP = "127.0.0.1"
	}
	podCIDR, err := netip.ParsePrefix(cfg.PodCIDR)
	if err != nil {
		return nil, fmt.Errorf("pod CIDR: %w", err)
	}
	nodeIP, err := netip.ParseAddr(cfg.NodeIP)
	if err != nil {
		return nil, fmt.Errorf("node IP: %w", err)
	}
	if cfg.ClusterDNS != "" {
		if _, err := netip.ParseAddr(cfg.ClusterDNS); err != nil {
			return nil, fmt.Errorf("cluster DNS: want an IP address: %w", err)
		}
	}
	if cfg.ClusterDomain == "" {
		cfg.ClusterDomain = DefaultClusterDomain
	}
	ipam, err := NewIPAM(filepath.Join(stateDir, "pod-ips.json"), podCIDR, nodeIP)
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return nil, fmt.Errorf("create client: %w", err)
	}
	a := &Agent{
		cfg: cfg, client: client, log: cfg.Logger.With("node", cfg.NodeName), ipam: ipam,
		tokens: newTokenManager(client), clusterCA: ca, apiHost: hostOnly(u.Host), apiPort: port,
		rootLinks: HostRootLinks(), pods: map[string]*podRunner{},
	}
	a.findBwrap()
	return a, nil
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

func (a *Agent) findBwrap() {
	a.bwrapMu.Lock()
	defer a.bwrapMu.Unlock()
	name := a.cfg.Bwrap
	if name == "" {
		name = "bwrap"
	}
	if p, err := exec.LookPath(name); err == nil {
		a.bwrap = p
	}
}

// Run registers the node, runs the pods scheduled to it and provisions local volumes until ctx is done;
// then it stops every pod (each with its grace period) and returns.
func (a *Agent) Run(ctx context.Context) error {
	if a.bwrap == "" {
		a.log.Warn("bwrap not found: pods will not start; install bubblewrap: apt-get install bubblewrap")
	}
	vklog.L = klogv2.New(nil)
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	a.ctx = runCtx

	all := informers.NewSharedInformerFactory(a.client, 0)
	mine := informers.NewSharedInformerFactoryWithOptions(a.client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", a.cfg.NodeName).String()
	}))
	podInformer := mine.Core().V1().Pods()
	cmInformer := all.Core().V1().ConfigMaps()
	secretInformer := all.Core().V1().Secrets()
	svcInformer := all.Core().V1().Services()
	pvcInformer := all.Core().V1().PersistentVolumeClaims()
	pvInformer := all.Core().V1().PersistentVolumes()
	a.objects = &listerObjects{
		cm: cmInformer.Lister(), secret: secretInformer.Lister(), pvc: pvcInformer.Lister(), pv: pvInformer.Lister(),
	}
	a.podLister = podInformer.Lister()
	refresh := cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, obj any) { a.refreshNamespace(obj) },
		AddFunc:    func(obj any) { a.refreshNamespace(obj) },
		DeleteFunc: func(obj any) { a.refreshNamespace(obj) },
	}
	if _, err := cmInformer.Informer().AddEventHandler(refresh); err != nil {
		return err
	}
	if _, err := secretInformer.Informer().AddEventHandler(refresh); err != nil {
		return err
	}
	if _, err := pvcInformer.Informer().AddEventHandler(refresh); err != nil {
		return err
	}
	if _, err := podInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { a.podChanged(obj) },
		UpdateFunc: func(_, obj any) { a.podChanged(obj) },
		DeleteFunc: func(obj any) { a.podGone(obj) },
	}); err != nil {
		return err
	}
	prov := newProvisioner(a, pvcInformer, pvInformer)

	broadcaster := record.NewBroadcaster()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: a.client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "opstrace-node-agent", Host: a.cfg.NodeName})

	pc, err := node.NewPodController(node.PodControllerConfig{
		PodClient:         a.client.CoreV1(),
		PodInformer:       envlessPodInformer{podInformer},
		EventRecorder:     recorder,
		Provider:          a,
		ConfigMapInformer: cmInformer,
		SecretInformer:    secretInformer,
		ServiceInformer:   svcInformer,
	})
	if err != nil {
		return fmt.Errorf("create pod controller: %w", err)
	}
	nc, err := node.NewNodeController(nodeProvider{}, BuildNode(a.cfg.NodeName, a.cfg.NodeIP), a.client.CoreV1().Nodes(),
		node.WithNodeEnableLeaseV1(a.client.CoordinationV1().Leases(corev1.NamespaceNodeLease), 40),
		node.WithNodeStatusUpdateInterval(30*time.Second))
	if err != nil {
		return fmt.Errorf("create node controller: %w", err)
	}

	all.Start(runCtx.Done())
	mine.Start(runCtx.Done())
	defer all.Shutdown()
	defer mine.Shutdown()

	errc := make(chan error, 3)
	go func() { errc <- nodeErr(nc.Run(runCtx)) }()
	go func() { errc <- pc.Run(runCtx, 4) }()
	go func() { prov.run(runCtx); errc <- nil }()

	for _, informer := range []cache.SharedIndexInformer{podInformer.Informer(), cmInformer.Informer(), secretInformer.Informer(), pvcInformer.Informer(), pvInformer.Informer()} {
		if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
			break
		}
	}
	a.releaseOrphanIPs()
	a.log.Info("node agent running", "stateDir", a.cfg.StateDir, "bwrap", a.bwrap, "images", a.cfg.Images.String())

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	a.stopAll()
	cancel()
	return runErr
}

func nodeErr(err error) error {
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("node controller: %w", err)
	}
	return err
}

// stopAll stops every pod, in parallel, each with its termination grace period.
func (a *Agent) stopAll() {
	a.mu.Lock()
	runners := make([]*podRunner, 0, len(a.pods))
	for _, r := range a.pods {
		runners = append(runners, r)
	}
	a.mu.Unlock()
	var wg sync.WaitGroup
	for _, r := range runners {
		wg.Go(func() { r.stop(r.terminationGrace()) })
	}
	wg.Wait()
}

// releaseOrphanIPs frees the addresses of pods deleted while the agent was not running.
func (a *Agent) releaseOrphanIPs() {
	pods, err := a.podLister.List(labelsEverything())
	if err != nil {
		return
	}
	live := map[string]bool{}
	for _, p := range pods {
		live[string(p.UID)] = true
	}
	for _, uid := range a.ipam.UIDs() {
		if !live[uid] {
			_ = a.ipam.Release(uid)
			_ = os.RemoveAll(filepath.Join(a.cfg.StateDir, "pods", uid, "volumes"))
		}
	}
}

func (a *Agent) refreshNamespace(obj any) {
	m, err := meta(obj)
	if err != nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, r := range a.pods {
		if r.namespace == m.GetNamespace() {
			r.refreshVolumes()
		}
	}
}

// podChanged passes the API server's latest pod to its runner (labels and annotations for the downward
// API, conditions of readiness gates).
func (a *Agent) podChanged(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	a.mu.Lock()
	r := a.pods[key(pod.Namespace, pod.Name)]
	a.mu.Unlock()
	if r != nil && r.uid == string(pod.UID) {
		r.mu.Lock()
		r.pod = pod.DeepCopy()
		r.mu.Unlock()
	}
}

// podGone stops a pod the API server no longer has (force-deleted, or deleted while the agent lagged).
func (a *Agent) podGone(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	go func() { _ = a.deletePod(pod, false) }()
}

func key(namespace, name string) string { return namespace + "/" + name }

// notify pushes a pod's status to the pod controller.
func (a *Agent) notify(pod *corev1.Pod) {
	a.mu.Lock()
	fn := a.notifyFn
	a.mu.Unlock()
	if fn != nil {
		fn(pod)
	}
}

// NotifyPods implements node.PodNotifier.
func (a *Agent) NotifyPods(_ context.Context, fn func(*corev1.Pod)) {
	a.mu.Lock()
	a.notifyFn = fn
	a.mu.Unlock()
}

// CreatePod implements node.PodLifecycleHandler. The pod controller hands over the pod with its environment
// already resolved, but without the pod's IP (unknown until now); the agent resolves env itself from the
// API server's pod.
func (a *Agent) CreatePod(_ context.Context, pod *corev1.Pod) error {
	orig := pod
	if p, err := a.podLister.Pods(pod.Namespace).Get(pod.Name); err == nil && p.UID == pod.UID {
		orig = p
	}
	k := key(pod.Namespace, pod.Name)
	a.mu.Lock()
	old := a.pods[k]
	a.mu.Unlock()
	if old != nil {
		if old.uid == string(pod.UID) {
			return nil
		}
		// A pod of the same name (a StatefulSet's) replaces one still stopping.
		go func() { _ = a.deletePod(old.pod, false) }()
		<-old.done
	}
	ip, err := a.ipam.Allocate(string(pod.UID))
	if err != nil {
		return err
	}
	r := newPodRunner(a, orig, ip)
	r.received = pod.DeepCopy()
	a.mu.Lock()
	if cur := a.pods[k]; cur != nil && cur.uid == string(pod.UID) {
		a.mu.Unlock()
		return nil
	}
	a.pods[k] = r
	a.mu.Unlock()
	a.log.Info("starting pod", "pod", k, "ip", ip)
	r.start()
	return nil
}

// UpdatePod implements node.PodLifecycleHandler: labels and annotations reach the downward API volumes;
// a changed container spec is not applied (pods' containers are immutable but for the image).
func (a *Agent) UpdatePod(ctx context.Context, pod *corev1.Pod) error {
	a.mu.Lock()
	r := a.pods[key(pod.Namespace, pod.Name)]
	a.mu.Unlock()
	if r == nil || r.uid != string(pod.UID) {
		return a.CreatePod(ctx, pod)
	}
	orig := pod
	if p, err := a.podLister.Pods(pod.Namespace).Get(pod.Name); err == nil && p.UID == pod.UID {
		orig = p
	}
	r.update(orig)
	r.mu.Lock()
	r.received = pod.DeepCopy()
	r.mu.Unlock()
	return nil
}

// DeletePod implements node.PodLifecycleHandler. It returns at once; the containers stop in the background
// (SIGTERM, the grace period, SIGKILL), then the pod is removed from the API server.
func (a *Agent) DeletePod(_ context.Context, pod *corev1.Pod) error {
	a.mu.Lock()
	r := a.pods[key(pod.Namespace, pod.Name)]
	a.mu.Unlock()
	if r == nil {
		_ = a.ipam.Release(string(pod.UID))
		return errdefs.NotFound("pod not found")
	}
	go func() { _ = a.deletePod(pod, true) }()
	return nil
}

// deletePod stops the runner of pod (if it is this pod) and frees what it held; with apiDelete it then
// deletes the pod from the API server, as the kubelet does once the containers have stopped.
func (a *Agent) deletePod(pod *corev1.Pod, apiDelete bool) error {
	k := key(pod.Namespace, pod.Name)
	a.mu.Lock()
	r := a.pods[k]
	a.mu.Unlock()
	if r == nil || r.uid != string(pod.UID) {
		return nil
	}
	grace := r.terminationGrace()
	if pod.DeletionGracePeriodSeconds != nil {
		grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	}
	r.stop(grace)
	a.mu.Lock()
	if a.pods[k] == r {
		delete(a.pods, k)
	}
	a.mu.Unlock()
	a.tokens.forget(r.uid)
	if err := a.ipam.Release(r.uid); err != nil {
		a.log.Warn("release pod IP", "pod", k, "err", err)
	}
	_ = os.RemoveAll(filepath.Join(r.dir, "volumes"))
	a.log.Info("pod stopped", "pod", k)
	if !apiDelete || a.ctx.Err() != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
	defer cancel()
	uid := pod.UID
	err := a.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: ptrTo(int64(0)), Preconditions: &metav1.Preconditions{UID: &uid},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		a.log.Warn("delete pod", "pod", k, "err", err)
		return err
	}
	return nil
}

// GetPod implements node.PodLifecycleHandler. A runner of an older pod of the same name is not this pod.
func (a *Agent) GetPod(_ context.Context, namespace, name string) (*corev1.Pod, error) {
	a.mu.Lock()
	r := a.pods[key(namespace, name)]
	a.mu.Unlock()
	if r == nil {
		return nil, errdefs.NotFoundf("pod %s/%s is not on this node", namespace, name)
	}
	if p, err := a.podLister.Pods(namespace).Get(name); err == nil && string(p.UID) != r.uid {
		return nil, errdefs.NotFoundf("pod %s/%s is not on this node", namespace, name)
	}
	r.mu.Lock()
	pod := r.received.DeepCopy()
	pod.Status = r.statusLocked()
	r.mu.Unlock()
	return pod, nil
}

// GetPodStatus implements node.PodLifecycleHandler.
func (a *Agent) GetPodStatus(ctx context.Context, namespace, name string) (*corev1.PodStatus, error) {
	pod, err := a.GetPod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

// GetPods implements node.PodLifecycleHandler.
func (a *Agent) GetPods(context.Context) ([]*corev1.Pod, error) {
	a.mu.Lock()
	runners := make([]*podRunner, 0, len(a.pods))
	for _, r := range a.pods {
		runners = append(runners, r)
	}
	a.mu.Unlock()
	pods := make([]*corev1.Pod, 0, len(runners))
	for _, r := range runners {
		pods = append(pods, r.snapshot())
	}
	return pods, nil
}

// PodIP is the address of a running pod, for tests and diagnostics.
func (a *Agent) PodIP(uid string) (string, bool) { return a.ipam.Lookup(uid) }

// ContainerPID is the host pid of a running container, or 0.
func (a *Agent) ContainerPID(namespace, name, container string) int {
	a.mu.Lock()
	r := a.pods[key(namespace, name)]
	a.mu.Unlock()
	if r == nil {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range append(append([]*containerRun(nil), r.inits...), r.containers...) {
		if c.spec.Name == container && c.status.State.Running != nil {
			return c.pid
		}
	}
	return 0
}
