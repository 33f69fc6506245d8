package nodeagent

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// runContainer runs c until it exits for good (by the restart policy) or the pod stops; it says whether the
// pod may go on (an init container that succeeded).
func (r *podRunner) runContainer(c *containerRun) bool {
	backoff := r.a.cfg.RestartBackoff
	for {
		bin, ok := r.a.cfg.Images.Lookup(c.spec.Image)
		if !ok {
			r.setWaiting(c, ReasonImageNotKnown, fmt.Sprintf("image %s is not known to the local node agent; known images: %s "+
				"(add one with --image REPO[:TAG]=PATH)", c.spec.Image, r.a.cfg.Images.String()))
			if !r.sleep(30 * time.Second) {
				return false
			}
			continue
		}
		if r.a.bwrap == "" {
			r.setWaiting(c, ReasonSandboxMissing, "bwrap not found in PATH: the local node agent runs containers with bubblewrap; "+
				"install bubblewrap: apt-get install bubblewrap")
			if !r.sleep(10 * time.Second) {
				return false
			}
			r.a.findBwrap()
			continue
		}
		args, env, err := r.containerCommand(c, bin)
		if err != nil {
			r.setWaiting(c, ReasonConfigError, err.Error())
			if !r.sleep(time.Second) {
				return false
			}
			continue
		}
		if r.ctx.Err() != nil {
			return false
		}
		started := time.Now()
		proc, err := startProcess(r.a.bwrap, args, env, filepath.Join(r.dir, c.spec.Name+".log"))
		var exitCode int
		var reason, message string
		if err != nil {
			exitCode, reason, message = 128, "StartError", err.Error()
			r.setTerminated(c, exitCode, reason, message, started)
		} else {
			r.setRunning(c, started, proc.PID())
			go func() {
				// bwrap reports the sandboxed program's pid shortly after start.
				time.Sleep(200 * time.Millisecond)
				r.mu.Lock()
				if c.pid != proc.PID() && c.status.State.Running != nil {
					c.pid = proc.PID()
					c.status.ContainerID = "bwrap://" + strconv.Itoa(c.pid)
				}
				r.mu.Unlock()
				r.notify()
			}()
			exitCode, reason, message = r.supervise(c, proc)
			r.setTerminated(c, exitCode, reason, message, started)
		}
		if r.ctx.Err() != nil {
			return false
		}
		policy := r.podSpecRestartPolicy()
		restart := policy == corev1.RestartPolicyAlways || (policy == corev1.RestartPolicyOnFailure && exitCode != 0)
		if c.init {
			restart = exitCode != 0 && policy != corev1.RestartPolicyNever
		}
		if !restart {
			r.mu.Lock()
			c.finished = true
			if c.init && exitCode != 0 {
				r.failed = fmt.Sprintf("init container %s failed with exit code %d", c.spec.Name, exitCode)
			}
			r.mu.Unlock()
			r.notify()
			return exitCode == 0
		}
		if time.Since(started) > 10*time.Minute {
			backoff = r.a.cfg.RestartBackoff
		}
		r.setBackoff(c, fmt.Sprintf("back-off %s restarting failed container=%s pod=%s_%s(%s)", backoff, c.spec.Name, r.name, r.namespace, r.uid))
		if !r.sleep(backoff) {
			return false
		}
		backoff = min(backoff*2, r.a.cfg.MaxRestartBackoff)
		r.mu.Lock()
		c.status.RestartCount++
		r.mu.Unlock()
	}
}

func (r *podRunner) podSpecRestartPolicy() corev1.RestartPolicy {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pod.Spec.RestartPolicy == "" {
		return corev1.RestartPolicyAlways
	}
	return r.pod.Spec.RestartPolicy
}

// containerCommand is the bwrap command line and the environment of one run of c.
func (r *podRunner) containerCommand(c *containerRun, bin string) ([]string, []string, error) {
	pod := withServiceAccountVolume(r.podForResolution())
	spec := c.spec
	for _, cs := range pod.Spec.Containers {
		if cs.Name == spec.Name {
			spec = cs // with the service account mount
		}
	}
	for _, cs := range pod.Spec.InitContainers {
		if cs.Name == spec.Name && c.init {
			spec = cs
		}
	}
	env, envMap, err := ContainerEnv(pod, &spec, r.a.objects, r.baseEnv())
	if err != nil {
		return nil, nil, err
	}
	mounts, err := r.mounts(&spec)
	if err != nil {
		return nil, nil, err
	}
	target := entrypointPath(spec.Image)
	sb := Sandbox{
		Entrypoint: bin, EntrypointTarget: target,
		Argv:       Argv(spec.Command, spec.Args, target, envMap),
		WorkingDir: spec.WorkingDir,
		Hostname:   r.hostname,
		EtcHosts:   filepath.Join(r.dir, "etc-hosts"),
		ResolvConf: r.resolvConf,
		Mounts:     mounts,
		RootLinks:  r.a.rootLinks,
		InfoFD:     3,
	}
	return BwrapArgs(sb), env, nil
}

// supervise waits for the process to exit, runs its probes, and stops it when the pod stops or its liveness
// probe fails.
func (r *podRunner) supervise(c *containerRun, proc *process) (int, string, string) {
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	livenessFailed := make(chan string, 1)
	var wg sync.WaitGroup
	if p := c.spec.ReadinessProbe; p != nil {
		wg.Go(func() {
			r.probeLoop(ctx, c, p, false, func(ok bool, msg string) { r.setReady(c, ok) })
		})
	} else {
		r.setReady(c, true)
	}
	if p := c.spec.LivenessProbe; p != nil && p.Exec != nil {
		r.log.Warn("ignoring liveness probe", "container", c.spec.Name, "err", ErrExecProbeUnsupported)
	} else if p != nil {
		wg.Go(func() {
			r.probeLoop(ctx, c, p, true, func(ok bool, msg string) {
				if !ok {
					select {
					case livenessFailed <- msg:
					default:
					}
				}
			})
		})
	}
	defer func() {
		cancel() // stops the probes
		wg.Wait()
	}()
	select {
	case <-proc.done:
	case <-r.ctx.Done():
		r.mu.Lock()
		grace := r.grace
		r.mu.Unlock()
		proc.stop(grace)
	case msg := <-livenessFailed:
		r.log.Info("liveness probe failed, restarting container", "container", c.spec.Name, "msg", msg)
		proc.stop(r.terminationGrace())
		return proc.exitCode, "Error", "liveness probe failed: " + msg
	}
	reason := "Completed"
	if proc.exitCode != 0 {
		reason = "Error"
	}
	return proc.exitCode, reason, proc.signaled
}

func (r *podRunner) terminationGrace() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if g := r.pod.Spec.TerminationGracePeriodSeconds; g != nil {
		return time.Duration(*g) * time.Second
	}
	return 30 * time.Second
}

// probeLoop runs a probe by its timings and reports every change of its verdict.
func (r *podRunner) probeLoop(ctx context.Context, c *containerRun, p *corev1.Probe, liveness bool, report func(ok bool, msg string)) {
	initial, period, _ := probeTimings(p)
	state := ProbeState{OK: liveness}
	if !sleepCtx(ctx, initial) {
		return
	}
	for {
		err := RunProbe(ctx, p, r.ip, &c.spec)
		if ctx.Err() != nil {
			return
		}
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		if state.Observe(p, err == nil) || (liveness && !state.OK) {
			report(state.OK, msg)
		}
		if !sleepCtx(ctx, period) {
			return
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// State changes of a container; each pushes the pod's status.

func (r *podRunner) setWaiting(c *containerRun, reason, message string) {
	r.mu.Lock()
	c.status.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: message}}
	c.status.Ready = false
	r.mu.Unlock()
	r.notify()
}

func (r *podRunner) setAllWaiting(reason, message string) {
	r.mu.Lock()
	for _, c := range append(append([]*containerRun(nil), r.inits...), r.containers...) {
		c.status.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: message}}
	}
	r.mu.Unlock()
	r.notify()
}

func (r *podRunner) setBackoff(c *containerRun, message string) {
	r.setWaiting(c, ReasonCrashLoopBackOff, message)
}

func (r *podRunner) setRunning(c *containerRun, started time.Time, pid int) {
	r.mu.Lock()
	c.started = true
	c.pid = pid
	c.status.State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(started)}}
	c.status.Started = ptrTo(true)
	c.status.ContainerID = "bwrap://" + strconv.Itoa(pid)
	bin, _ := r.a.cfg.Images.Lookup(c.spec.Image)
	c.status.ImageID = "file://" + bin
	c.status.Ready = false
	r.mu.Unlock()
	r.notify()
}

func (r *podRunner) setReady(c *containerRun, ready bool) {
	r.mu.Lock()
	changed := c.status.Ready != ready && c.status.State.Running != nil
	if changed {
		c.status.Ready = ready
	}
	r.mu.Unlock()
	if changed {
		r.notify()
	}
}

func (r *podRunner) setTerminated(c *containerRun, exitCode int, reason, message string, started time.Time) {
	r.mu.Lock()
	term := &corev1.ContainerStateTerminated{
		ExitCode: int32(exitCode), Reason: reason, Message: message,
		StartedAt: metav1.NewTime(started), FinishedAt: metav1.Now(), ContainerID: c.status.ContainerID,
	}
	c.status.State = corev1.ContainerState{Terminated: term}
	c.status.LastTerminationState = corev1.ContainerState{Terminated: term.DeepCopy()}
	c.status.Ready = false
	c.status.Started = ptrTo(false)
	c.pid = 0
	r.mu.Unlock()
	r.notify()
}

func (r *podRunner) setFailed(message string) {
	r.mu.Lock()
	r.failed = message
	r.mu.Unlock()
	r.notify()
}

func ptrTo[T any](v T) *T { return &v }

// condLocked is a pod condition, keeping its transition time while its status stays.
func (r *podRunner) condLocked(t corev1.PodConditionType, ok bool, reason string) corev1.PodCondition {
	status := corev1.ConditionFalse
	if ok {
		status = corev1.ConditionTrue
		reason = ""
	}
	prev, had := r.conds[t]
	cond := corev1.PodCondition{Type: t, Status: status, Reason: reason, LastTransitionTime: metav1.Now()}
	if had && prev.Status == status {
		cond.LastTransitionTime = prev.LastTransitionTime
	}
	return cond
}

// statusLocked derives the pod's status from its containers, as the kubelet does.
func (r *podRunner) statusLocked() corev1.PodStatus {
	st := corev1.PodStatus{
		HostIP:    r.a.cfg.NodeIP,
		HostIPs:   []corev1.HostIP{{IP: r.a.cfg.NodeIP}},
		PodIP:     r.ip,
		PodIPs:    []corev1.PodIP{{IP: r.ip}},
		StartTime: &r.startTime,
		QOSClass:  r.pod.Status.QOSClass,
	}
	for _, c := range r.inits {
		st.InitContainerStatuses = append(st.InitContainerStatuses, *c.status.DeepCopy())
	}
	initialized := true
	for _, c := range r.inits {
		if !(c.finished && c.status.State.Terminated != nil && c.status.State.Terminated.ExitCode == 0) {
			initialized = false
		}
	}
	allStarted, anyRunning, allReady, allDone, allSucceeded := true, false, true, true, true
	for _, c := range r.containers {
		st.ContainerStatuses = append(st.ContainerStatuses, *c.status.DeepCopy())
		if !c.started {
			allStarted = false
		}
		if c.status.State.Running != nil {
			anyRunning = true
		}
		if !c.status.Ready {
			allReady = false
		}
		if !c.finished {
			allDone = false
		} else if t := c.status.State.Terminated; t == nil || t.ExitCode != 0 {
			allSucceeded = false
		}
	}
	switch {
	case r.failed != "":
		st.Phase, st.Message = corev1.PodFailed, r.failed
	case !initialized || !allStarted:
		st.Phase = corev1.PodPending
	case allDone && allSucceeded:
		st.Phase = corev1.PodSucceeded
	case allDone:
		st.Phase = corev1.PodFailed
	default:
		st.Phase = corev1.PodRunning
	}
	_ = anyRunning
	notReady := "ContainersNotReady"
	if r.stopping || allDone {
		notReady = "PodCompleted"
	}
	r.conds[corev1.PodScheduled] = r.condLocked(corev1.PodScheduled, true, "")
	r.conds[corev1.PodInitialized] = r.condLocked(corev1.PodInitialized, initialized, "ContainersNotInitialized")
	r.conds[corev1.ContainersReady] = r.condLocked(corev1.ContainersReady, allReady && initialized, notReady)
	r.conds[corev1.PodReady] = r.condLocked(corev1.PodReady, allReady && initialized && r.readinessGatesLocked(), notReady)
	for _, t := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		st.Conditions = append(st.Conditions, r.conds[t])
	}
	// Conditions other components own (readiness gates, disruption target) are kept.
	for _, cond := range r.pod.Status.Conditions {
		if _, ours := r.conds[cond.Type]; !ours {
			st.Conditions = append(st.Conditions, cond)
		}
	}
	return st
}

// readinessGatesLocked says whether every readiness gate's condition is True on the API server's pod.
func (r *podRunner) readinessGatesLocked() bool {
	for _, g := range r.pod.Spec.ReadinessGates {
		ok := false
		for _, c := range r.pod.Status.Conditions {
			if c.Type == g.ConditionType && c.Status == corev1.ConditionTrue {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	return true
}
