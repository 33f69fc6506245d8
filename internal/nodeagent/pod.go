package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Reasons of container states the agent reports besides the kubelet's own.
const (
	ReasonImageNotKnown     = "ImageNotKnown"
	ReasonSandboxMissing    = "BubblewrapNotInstalled"
	ReasonContainerCreating = "ContainerCreating"
	ReasonConfigError       = "CreateContainerConfigError"
	ReasonRunError          = "RunContainerError"
	ReasonCrashLoopBackOff  = "CrashLoopBackOff"
)

// serviceAccountMountPath is where Kubernetes' in-cluster configuration looks for its token, CA and namespace.
const serviceAccountMountPath = "/var/run/secrets/kubernetes.io/serviceaccount"

// podRunner runs the containers of one pod and keeps its status.
type podRunner struct {
	a               *Agent
	uid             string
	namespace, name string
	dir             string
	ip              string
	hostname        string
	resolvConf      string // the pod's /etc/resolv.conf on the host, written by run; empty: the host's
	log             *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	dirty  chan struct{}
	kick   chan struct{} // volumes should be refreshed now

	mu         sync.Mutex
	pod        *corev1.Pod // the latest pod from the API server
	received   *corev1.Pod // the pod as the pod controller last handed it over
	inits      []*containerRun
	containers []*containerRun
	volPaths   map[string]string
	volHashes  map[string]string
	startTime  metav1.Time
	conds      map[corev1.PodConditionType]corev1.PodCondition
	grace      time.Duration
	stopping   bool
	failed     string // the pod failed for good, with this message
}

// containerRun is the state of one container across its restarts.
type containerRun struct {
	spec     corev1.Container
	init     bool
	status   corev1.ContainerStatus
	started  bool // has run at least once
	finished bool // exited and will not be restarted
	pid      int
}

func newPodRunner(a *Agent, pod *corev1.Pod, ip string) *podRunner {
	ctx, cancel := context.WithCancel(a.ctx)
	hostname := pod.Spec.Hostname
	if hostname == "" {
		hostname = pod.Name
	}
	if len(hostname) > 63 {
		hostname = hostname[:63]
	}
	r := &podRunner{
		a: a, uid: string(pod.UID), namespace: pod.Namespace, name: pod.Name, dir: filepath.Join(a.cfg.StateDir, "pods", string(pod.UID)), ip: ip, hostname: hostname,
		log: a.log.With("pod", pod.Namespace+"/"+pod.Name, "uid", pod.UID),
		ctx: ctx, cancel: cancel, done: make(chan struct{}), dirty: make(chan struct{}, 1), kick: make(chan struct{}, 1),
		pod: pod.DeepCopy(), received: pod.DeepCopy(), volPaths: map[string]string{}, volHashes: map[string]string{},
		startTime: metav1.Now(), conds: map[corev1.PodConditionType]corev1.PodCondition{},
	}
	if pod.Status.StartTime != nil {
		r.startTime = *pod.Status.StartTime
	}
	for _, c := range pod.Spec.InitContainers {
		r.inits = append(r.inits, newContainerRun(c, true))
	}
	for _, c := range pod.Spec.Containers {
		r.containers = append(r.containers, newContainerRun(c, false))
	}
	return r
}

func newContainerRun(c corev1.Container, init bool) *containerRun {
	return &containerRun{spec: c, init: init, status: corev1.ContainerStatus{
		Name:  c.Name,
		Image: c.Image,
		State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: ReasonContainerCreating}},
	}}
}

// start runs the pod in the background.
func (r *podRunner) start() {
	go r.notifyLoop()
	go r.run()
	r.notify()
}

// stop stops the containers, each with SIGTERM and then, after grace, SIGKILL, and waits for them.
func (r *podRunner) stop(grace time.Duration) {
	r.mu.Lock()
	if !r.stopping {
		r.stopping = true
		r.grace = grace
	}
	r.mu.Unlock()
	r.cancel()
	<-r.done
}

func (r *podRunner) notify() {
	select {
	case r.dirty <- struct{}{}:
	default:
	}
}

// notifyLoop pushes the pod's status to the pod controller, latest first: one goroutine sends, so an older
// status never overtakes a newer one.
func (r *podRunner) notifyLoop() {
	for {
		select {
		case <-r.dirty:
			r.a.notify(r.snapshot())
		case <-r.done:
			r.a.notify(r.snapshot())
			return
		}
	}
}

// snapshot is the pod with the agent's view of its status.
func (r *podRunner) snapshot() *corev1.Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	pod := r.pod.DeepCopy()
	pod.Status = r.statusLocked()
	return pod
}

func (r *podRunner) update(pod *corev1.Pod) {
	r.mu.Lock()
	r.pod = pod.DeepCopy()
	r.received = pod.DeepCopy()
	r.mu.Unlock()
	r.refreshVolumes()
	r.notify()
}

func (r *podRunner) refreshVolumes() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// podForResolution is the pod with its addresses, for the downward API.
func (r *podRunner) podForResolution() *corev1.Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	pod := r.pod.DeepCopy()
	pod.Status.PodIP = r.ip
	pod.Status.PodIPs = []corev1.PodIP{{IP: r.ip}}
	pod.Status.HostIP = r.a.cfg.NodeIP
	pod.Status.HostIPs = []corev1.HostIP{{IP: r.a.cfg.NodeIP}}
	return pod
}

// sleep waits for d, and says false if the pod is stopping.
func (r *podRunner) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-r.ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (r *podRunner) run() {
	defer close(r.done)
	if err := os.MkdirAll(filepath.Join(r.dir, "volumes"), 0o755); err != nil {
		r.setFailed(fmt.Sprintf("create pod directory: %v", err))
		return
	}
	hosts := fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n", r.ip, r.hostname)
	if err := os.WriteFile(filepath.Join(r.dir, "etc-hosts"), []byte(hosts), 0o644); err != nil {
		r.setFailed(fmt.Sprintf("write /etc/hosts: %v", err))
		return
	}
	if err := r.writeResolvConf(); err != nil {
		r.setFailed(fmt.Sprintf("write /etc/resolv.conf: %v", err))
		return
	}
	for {
		err := r.setupVolumes(true)
		if err == nil {
			break
		}
		r.setAllWaiting(ReasonContainerCreating, "MountVolume: "+err.Error())
		if !r.sleep(time.Second) {
			return
		}
	}
	go r.volumeLoop()

	for _, c := range r.inits {
		if !r.runContainer(c) {
			return
		}
	}
	r.mu.Lock()
	r.conds[corev1.PodInitialized] = r.condLocked(corev1.PodInitialized, true, "")
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range r.containers {
		wg.Go(func() { r.runContainer(c) })
	}
	wg.Wait()
}

// writeResolvConf writes the pod's own /etc/resolv.conf when its DNS policy and the cluster DNS call for
// one (PodResolvConf).
func (r *podRunner) writeResolvConf() error {
	r.mu.Lock()
	pod := r.pod.DeepCopy()
	r.mu.Unlock()
	host, _ := os.ReadFile("/etc/resolv.conf")
	conf, own := PodResolvConf(pod, r.a.cfg.ClusterDNS, r.a.cfg.ClusterDomain, ParseResolvConf(host))
	if !own {
		return nil
	}
	file := filepath.Join(r.dir, "resolv.conf")
	if err := os.WriteFile(file, []byte(conf.String()), 0o644); err != nil {
		return err
	}
	r.resolvConf = file
	return nil
}

// volumeLoop republishes the volumes made of API objects when they change, and renews tokens.
func (r *podRunner) volumeLoop() {
	t := time.NewTicker(r.a.cfg.VolumeResync)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		case <-r.kick:
		}
		if err := r.setupVolumes(false); err != nil {
			r.log.Warn("refresh volumes", "err", err)
		}
	}
}

// setupVolumes materialises the pod's volumes under its directory. With all false it refreshes only the
// volumes made of API objects.
func (r *podRunner) setupVolumes(all bool) error {
	pod := r.podForResolution()
	pod = withServiceAccountVolume(pod)
	var errs []error
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		dir := filepath.Join(r.dir, "volumes", v.Name)
		files, ok, err := projectedFiles(pod, v, r.a.objects, r.a.tokens, r.a.clusterCA)
		if ok {
			if err != nil {
				errs = append(errs, fmt.Errorf("volume %q: %w", v.Name, err))
				continue
			}
			hash := filesHash(files)
			r.mu.Lock()
			same := r.volHashes[v.Name] == hash
			r.mu.Unlock()
			if !same {
				if err := writeAtomicDir(dir, files); err != nil {
					errs = append(errs, fmt.Errorf("volume %q: %w", v.Name, err))
					continue
				}
			}
			r.mu.Lock()
			r.volHashes[v.Name] = hash
			r.volPaths[v.Name] = dir
			r.mu.Unlock()
			continue
		}
		if !all {
			continue
		}
		path, err := r.hostVolume(pod, v, dir)
		if err != nil {
			errs = append(errs, fmt.Errorf("volume %q: %w", v.Name, err))
			continue
		}
		r.mu.Lock()
		r.volPaths[v.Name] = path
		r.mu.Unlock()
	}
	return errors.Join(errs...)
}

// hostVolume is the host directory of a volume that is not made of API objects.
func (r *podRunner) hostVolume(pod *corev1.Pod, v *corev1.Volume, dir string) (string, error) {
	switch {
	case v.EmptyDir != nil:
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return "", err
		}
		return dir, os.Chmod(dir, 0o777)
	case v.HostPath != nil:
		if t := v.HostPath.Type; t != nil && *t == corev1.HostPathDirectoryOrCreate {
			if err := os.MkdirAll(v.HostPath.Path, 0o755); err != nil {
				return "", err
			}
		}
		if _, err := os.Stat(v.HostPath.Path); err != nil {
			return "", err
		}
		return v.HostPath.Path, nil
	case v.PersistentVolumeClaim != nil:
		pvc, err := r.a.objects.PersistentVolumeClaim(pod.Namespace, v.PersistentVolumeClaim.ClaimName)
		if err != nil {
			return "", fmt.Errorf("persistentVolumeClaim %q: %w", v.PersistentVolumeClaim.ClaimName, err)
		}
		if pvc.Spec.VolumeName == "" || pvc.Status.Phase != corev1.ClaimBound {
			return "", fmt.Errorf("persistentVolumeClaim %q is not bound yet", pvc.Name)
		}
		pv, err := r.a.objects.PersistentVolume(pvc.Spec.VolumeName)
		if err != nil {
			return "", fmt.Errorf("persistentVolume %q: %w", pvc.Spec.VolumeName, err)
		}
		var path string
		switch {
		case pv.Spec.HostPath != nil:
			path = pv.Spec.HostPath.Path
		case pv.Spec.Local != nil:
			path = pv.Spec.Local.Path
		default:
			return "", fmt.Errorf("persistentVolume %q is neither hostPath nor local; the local node agent mounts only those", pv.Name)
		}
		if err := os.MkdirAll(path, 0o777); err != nil {
			return "", err
		}
		return path, nil
	case v.Ephemeral != nil:
		return "", fmt.Errorf("ephemeral volumes are not supported by the local node agent; use emptyDir")
	}
	return "", fmt.Errorf("this volume type is not supported by the local node agent; use configMap, secret, downwardAPI, projected, emptyDir, hostPath or persistentVolumeClaim")
}

// withServiceAccountVolume adds the service account volume that the ServiceAccount admission plugin adds
// to pods, for an API server that runs without it: a projected token, the cluster CA and the namespace,
// mounted at serviceAccountMountPath in every container that mounts nothing there.
func withServiceAccountVolume(pod *corev1.Pod) *corev1.Pod {
	if a := pod.Spec.AutomountServiceAccountToken; a != nil && !*a {
		return pod
	}
	for _, v := range pod.Spec.Volumes {
		if strings.HasPrefix(v.Name, "kube-api-access-") {
			return pod
		}
	}
	const name = "kube-api-access-local"
	exp := int64(3607)
	pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: &exp}},
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: rootCAConfigMap},
				Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{
				{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}}}},
		},
	}}})
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			mounted := false
			for _, m := range cs[i].VolumeMounts {
				if m.MountPath == serviceAccountMountPath {
					mounted = true
				}
			}
			if !mounted {
				cs[i].VolumeMounts = append(cs[i].VolumeMounts, corev1.VolumeMount{Name: name, MountPath: serviceAccountMountPath, ReadOnly: true})
			}
		}
	}
	return pod
}

// mounts are the bind mounts of a container's volumeMounts.
func (r *podRunner) mounts(c *corev1.Container) ([]Mount, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var mounts []Mount
	for _, m := range c.VolumeMounts {
		src, ok := r.volPaths[m.Name]
		if !ok {
			return nil, fmt.Errorf("volumeMount %q: no volume %q", m.MountPath, m.Name)
		}
		if m.SubPath != "" {
			src = filepath.Join(src, m.SubPath)
			if _, err := os.Stat(src); err != nil {
				if err := os.MkdirAll(src, 0o777); err != nil {
					return nil, fmt.Errorf("volumeMount %q: subPath: %w", m.MountPath, err)
				}
			}
		}
		mounts = append(mounts, Mount{Source: src, Target: m.MountPath, ReadOnly: m.ReadOnly})
	}
	return mounts, nil
}

// baseEnv is the environment every container gets before its own: the API server's address (there is no
// kube-proxy to route the kubernetes Service's ClusterIP), a PATH and the pod's hostname.
func (r *podRunner) baseEnv() map[string]string {
	env := map[string]string{
		"PATH":     "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOSTNAME": r.hostname,
		"HOME":     "/",
	}
	if host, port := r.a.apiHost, r.a.apiPort; host != "" {
		env["KUBERNETES_SERVICE_HOST"] = host
		env["KUBERNETES_SERVICE_PORT"] = port
		env["KUBERNETES_SERVICE_PORT_HTTPS"] = port
		env["KUBERNETES_PORT"] = "tcp://" + host + ":" + port
		env["KUBERNETES_PORT_"+port+"_TCP"] = "tcp://" + host + ":" + port
		env["KUBERNETES_PORT_"+port+"_TCP_PROTO"] = "tcp"
		env["KUBERNETES_PORT_"+port+"_TCP_PORT"] = port
		env["KUBERNETES_PORT_"+port+"_TCP_ADDR"] = host
	}
	return env
}
