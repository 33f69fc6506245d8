package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/opstrace/opstrace/internal/testenv"
)

// podCIDR is where the node agent takes pod addresses from (inside the cluster's own network namespace).
var podCIDR = netip.MustParsePrefix("10.244.0.0/16")

// podserverImage is the image the test server of the node agent stands for on the local cluster.
const podserverImage = "opstrace-test/podserver:e2e"

// TestLocalWorkloads runs the node agent under the real control plane of `opstrace create local`, with the
// node agent's test server as the pods of image opstrace-test/podserver, and checks what the controllers of
// kube-controller-manager see of it: a Deployment scales up and down, a StatefulSet with volumes rolls one
// pod at a time in reverse ordinal order, a pod whose readiness probe fails stays out of the ready
// endpoints of its Service, and an exiting process is restarted. It observes through the API server only:
// the pod addresses exist only inside the cluster's network namespace.
func TestLocalWorkloads(t *testing.T) {
	if _, err := exec.LookPath("bwrap"); err != nil {
		t.Skip("bwrap not installed: apt-get install bubblewrap")
	}
	podserver := filepath.Join(t.TempDir(), "podserver")
	build := exec.Command("go", "build", "-o", podserver, "./internal/nodeagent/testdata/podserver")
	build.Dir = testenv.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build podserver: %v\n%s", err, out)
	}
	c, took := createLocalCluster(t, "workloads", "--image", "opstrace-test/podserver="+podserver)
	t.Logf("create local → ready: %s", took.Round(time.Second))
	kube := c.clientset(t)
	ctx := context.Background()
	const ns = "workloads"
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	t.Run("Deployment scales up and down", func(t *testing.T) {
		d := podserverDeployment(ns, "scale", 2, nil)
		if _, err := kube.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitDeployment(t, kube, ns, "scale", 2)

		scale := func(replicas int32) {
			t.Helper()
			s, err := kube.AppsV1().Deployments(ns).GetScale(ctx, "scale", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			s.Spec.Replicas = replicas
			if _, err := kube.AppsV1().Deployments(ns).UpdateScale(ctx, "scale", s, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		scale(3)
		three := waitDeployment(t, kube, ns, "scale", 3)
		scale(1)
		one := waitDeployment(t, kube, ns, "scale", 1)
		if !slices.ContainsFunc(three, func(p corev1.Pod) bool { return p.UID == one[0].UID }) {
			t.Errorf("the pod left after scaling down, %s, was not one of the three", one[0].Name)
		}
		// A pod leaves the API server only once the node agent has stopped its processes; check the machine
		// too: every sandbox runs with the pod's directory, named by its UID, on its command line.
		if pids := sandboxPIDs(string(one[0].UID)); len(pids) == 0 {
			t.Errorf("no process found for the running pod %s (uid %s): the check below would prove nothing", one[0].Name, one[0].UID)
		}
		for _, p := range three {
			if p.UID == one[0].UID {
				continue
			}
			if pids := sandboxPIDs(string(p.UID)); len(pids) > 0 {
				t.Errorf("pod %s was deleted from the API server but its processes %v still run", p.Name, pids)
			}
		}
	})

	t.Run("StatefulSet rolls one pod at a time", func(t *testing.T) {
		testStatefulSetRollout(t, kube, ns)
	})

	t.Run("failing readiness keeps a pod out of the ready endpoints", func(t *testing.T) {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "mixed", Namespace: ns},
			Spec: corev1.ServiceSpec{
				Selector: map[string]string{"service": "mixed"},
				Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
			},
		}
		if _, err := kube.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		passing := podserverDeployment(ns, "passing", 1, nil)
		failing := podserverDeployment(ns, "failing", 1, []corev1.EnvVar{{Name: "READY", Value: "false"}})
		for _, d := range []*appsv1.Deployment{passing, failing} {
			d.Spec.Template.Labels["service"] = "mixed"
			if _, err := kube.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		good := waitDeployment(t, kube, ns, "passing", 1)[0]
		var bad corev1.Pod
		eventually(t, 2*time.Minute, "the failing pod running, its readiness probe failed at least 3 times", func() error {
			pods := listPods(t, kube, ns, "app=failing")
			if len(pods) != 1 {
				return fmt.Errorf("%d pods", len(pods))
			}
			bad = pods[0]
			if bad.Status.Phase != corev1.PodRunning || len(bad.Status.ContainerStatuses) != 1 || bad.Status.ContainerStatuses[0].State.Running == nil {
				return fmt.Errorf("phase %s, containers %+v", bad.Status.Phase, bad.Status.ContainerStatuses)
			}
			// The probe runs every second after 1 s: three periods after start it has failed at least
			// failureThreshold times, whatever the scheduling of the processes.
			if time.Since(bad.Status.ContainerStatuses[0].State.Running.StartedAt.Time) < 5*time.Second {
				return fmt.Errorf("running for less than 5 s")
			}
			return nil
		})
		if podReady(&bad) {
			t.Fatalf("pod %s is Ready although its readiness probe answers 503", bad.Name)
		}
		if !netip.MustParseAddr(bad.Status.PodIP).IsValid() || bad.Status.PodIP == good.Status.PodIP {
			t.Fatalf("pod addresses: passing %s, failing %s", good.Status.PodIP, bad.Status.PodIP)
		}
		eventually(t, time.Minute, "EndpointSlices of Service mixed: the passing pod ready, the failing pod not", func() error {
			eps, err := kube.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=mixed"})
			if err != nil {
				return err
			}
			readyOf := map[string]*bool{} // by address; nil: listed without a ready condition
			var listed []string
			for _, s := range eps.Items {
				for _, e := range s.Endpoints {
					for _, a := range e.Addresses {
						readyOf[a] = e.Conditions.Ready
						listed = append(listed, fmt.Sprintf("%s ready=%v", a, deref(e.Conditions.Ready)))
					}
				}
			}
			if r, ok := readyOf[good.Status.PodIP]; !ok || r == nil || !*r {
				return fmt.Errorf("passing pod %s not listed as ready: %v", good.Status.PodIP, listed)
			}
			if r, ok := readyOf[bad.Status.PodIP]; ok && (r == nil || *r) {
				return fmt.Errorf("failing pod %s listed as ready: %v", bad.Status.PodIP, listed)
			}
			return nil
		})
		if p := getPod(t, kube, ns, bad.Name); podReady(p) || p.Status.ContainerStatuses[0].RestartCount != 0 {
			t.Errorf("failing pod later: ready %t, restarts %d; want not ready and never restarted (it has no liveness probe)",
				podReady(p), p.Status.ContainerStatuses[0].RestartCount)
		}
	})

	t.Run("an exiting process is restarted", func(t *testing.T) {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "crash", Namespace: ns},
			Spec:       podserverPodSpec(nil),
		}
		pod.Spec.Containers[0].Args = append(pod.Spec.Containers[0].Args, "--exit-after=1s")
		if _, err := kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// The node agent backs off 10 s, then 20 s, before the second restart.
		eventually(t, 3*time.Minute, "restartCount ≥ 2 with the last exit code", func() error {
			p := getPod(t, kube, ns, "crash")
			if len(p.Status.ContainerStatuses) != 1 {
				return fmt.Errorf("container statuses %+v", p.Status.ContainerStatuses)
			}
			cs := p.Status.ContainerStatuses[0]
			if cs.RestartCount < 2 {
				return fmt.Errorf("restartCount %d", cs.RestartCount)
			}
			term := cs.LastTerminationState.Terminated
			if term == nil || term.ExitCode != 3 || term.Reason != "Error" {
				return fmt.Errorf("lastState %+v, want terminated with exit code 3, reason Error", cs.LastTerminationState)
			}
			if p.Status.Phase != corev1.PodRunning {
				return fmt.Errorf("phase %s, want Running (restartPolicy Always)", p.Status.Phase)
			}
			return nil
		})
	})
}

// testStatefulSetRollout creates a StatefulSet of 3 pods, each with a volume of the default StorageClass,
// changes its pod template, and watches the pods: they must be replaced from the highest ordinal down, with
// never more than one pod not ready, terminating or missing, and keep their volumes.
func testStatefulSetRollout(t *testing.T, kube *kubernetes.Clientset, ns string) {
	ctx := context.Background()
	const name, replicas = "web", 3
	headless := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Name: "http", Port: 8080}}},
	}
	if _, err := kube.CoreV1().Services(ns).Create(ctx, headless, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	spec := podserverPodSpec(nil)
	spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.StatefulSetSpec{
			Replicas:       ptr(int32(replicas)),
			ServiceName:    name,
			Selector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			UpdateStrategy: appsv1.StatefulSetUpdateStrategy{Type: appsv1.RollingUpdateStatefulSetStrategyType},
			Template:       corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}}, Spec: spec},
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{{
				ObjectMeta: metav1.ObjectMeta{Name: "data"},
				Spec: corev1.PersistentVolumeClaimSpec{ // no storageClassName: the default class, opstrace-local
					AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
					Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("16Mi")}},
				},
			}},
		},
	}
	if _, err := kube.AppsV1().StatefulSets(ns).Create(ctx, sts, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitStatefulSet(t, kube, ns, name, replicas)

	claims := map[string]string{} // claim name → volume name
	eventually(t, time.Minute, "claims Bound to PersistentVolumes of class opstrace-local", func() error {
		for i := range replicas {
			claim := fmt.Sprintf("data-%s-%d", name, i)
			pvc, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if pvc.Status.Phase != corev1.ClaimBound || pvc.Spec.VolumeName == "" {
				return fmt.Errorf("claim %s is %s", claim, pvc.Status.Phase)
			}
			if sc := deref(pvc.Spec.StorageClassName); sc != "opstrace-local" {
				return fmt.Errorf("claim %s has StorageClass %q, want the default opstrace-local", claim, sc)
			}
			pv, err := kube.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if pv.Status.Phase != corev1.VolumeBound || pv.Spec.ClaimRef == nil || pv.Spec.ClaimRef.UID != pvc.UID {
				return fmt.Errorf("volume %s is %s, claimRef %+v", pv.Name, pv.Status.Phase, pv.Spec.ClaimRef)
			}
			claims[claim] = pv.Name
		}
		return nil
	})

	// Watch the pods from now on, then change the template.
	list, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
	if err != nil {
		t.Fatal(err)
	}
	pods := map[string]*corev1.Pod{}
	oldRevision := map[string]string{}
	for i := range list.Items {
		p := &list.Items[i]
		pods[p.Name] = p
		oldRevision[p.Name] = p.Labels[appsv1.ControllerRevisionHashLabelKey]
	}
	if len(pods) != replicas {
		t.Fatalf("%d pods before the rollout", len(pods))
	}
	watchCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	w, err := kube.CoreV1().Pods(ns).Watch(watchCtx, metav1.ListOptions{LabelSelector: "app=" + name, ResourceVersion: list.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	cur, err := kube.AppsV1().StatefulSets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Spec.Template.Spec.Containers[0].Env = append(cur.Spec.Template.Spec.Containers[0].Env, corev1.EnvVar{Name: "ROLLOUT", Value: "2"})
	if _, err := kube.AppsV1().StatefulSets(ns).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	var (
		replaced       []string // pods in the order their old version began terminating (or vanished)
		worst          int      // the most pods unavailable at once
		worstAt        string
		updateRevision string
	)
	unavailable := func() []string {
		var out []string
		for i := range replicas {
			n := fmt.Sprintf("%s-%d", name, i)
			p, ok := pods[n]
			switch {
			case !ok:
				out = append(out, n+" missing")
			case p.DeletionTimestamp != nil:
				out = append(out, n+" terminating")
			case !podReady(p):
				out = append(out, n+" not ready")
			}
		}
		return out
	}
	for done := false; !done; {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatalf("the watch ended before the rollout did (5 min); replaced so far: %v", replaced)
			}
			p, isPod := ev.Object.(*corev1.Pod)
			if !isPod {
				t.Fatalf("watch event %s: %+v", ev.Type, ev.Object)
			}
			old := pods[p.Name]
			oldVersion := old != nil && old.Labels[appsv1.ControllerRevisionHashLabelKey] == oldRevision[p.Name]
			switch ev.Type {
			case watch.Deleted:
				if oldVersion && old.DeletionTimestamp == nil {
					replaced = append(replaced, p.Name)
				}
				delete(pods, p.Name)
			case watch.Added, watch.Modified:
				if oldVersion && old.DeletionTimestamp == nil && p.DeletionTimestamp != nil {
					replaced = append(replaced, p.Name)
				}
				pods[p.Name] = p
			}
			if u := unavailable(); len(u) > worst {
				worst, worstAt = len(u), strings.Join(u, ", ")
			}
		case <-time.After(2 * time.Second):
		}
		s, err := kube.AppsV1().StatefulSets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		updateRevision = s.Status.UpdateRevision
		done = s.Status.ObservedGeneration >= s.Generation && s.Status.UpdatedReplicas == replicas &&
			s.Status.ReadyReplicas == replicas && s.Status.CurrentRevision == s.Status.UpdateRevision
		for _, p := range pods {
			done = done && p.Labels[appsv1.ControllerRevisionHashLabelKey] == updateRevision && podReady(p) && p.DeletionTimestamp == nil
		}
		done = done && len(pods) == replicas
	}
	t.Logf("rollout to revision %s: pods replaced in the order %v; at most %d unavailable at once (%s)", updateRevision, replaced, worst, worstAt)
	if want := []string{name + "-2", name + "-1", name + "-0"}; !slices.Equal(replaced, want) {
		t.Errorf("pods replaced in the order %v, want %v", replaced, want)
	}
	if worst != 1 {
		t.Errorf("at most %d pods were unavailable at once (%s), want exactly 1", worst, worstAt)
	}
	for _, p := range pods {
		if !slices.ContainsFunc(p.Spec.Containers[0].Env, func(e corev1.EnvVar) bool { return e.Name == "ROLLOUT" && e.Value == "2" }) {
			t.Errorf("pod %s runs the old template", p.Name)
		}
	}
	for claim, volume := range claims {
		pvc, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if pvc.Status.Phase != corev1.ClaimBound || pvc.Spec.VolumeName != volume {
			t.Errorf("after the rollout claim %s is %s on volume %q, want Bound on %s", claim, pvc.Status.Phase, pvc.Spec.VolumeName, volume)
		}
	}
}

// podserverPodSpec runs the node agent's test server on the pod's address, ready when GET /ready answers 200.
func podserverPodSpec(env []corev1.EnvVar) corev1.PodSpec {
	grace := int64(5)
	return corev1.PodSpec{
		TerminationGracePeriodSeconds: &grace,
		Containers: []corev1.Container{{
			Name:  "server",
			Image: podserverImage,
			Args:  []string{"--listen=$(POD_IP):8080"},
			Env: append([]corev1.EnvVar{{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}}},
				env...),
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
			ReadinessProbe: &corev1.Probe{
				ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("http")}},
				PeriodSeconds: 1, InitialDelaySeconds: 1,
			},
		}},
	}
}

func podserverDeployment(ns, name string, replicas int32, env []corev1.EnvVar) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
				Spec:       podserverPodSpec(env),
			},
		},
	}
}

// waitDeployment waits until the Deployment reports replicas ready and up to date, and exactly that many pods
// exist (the pods of a scale-down are gone from the API server), each Running, Ready, with its own pod address.
func waitDeployment(t *testing.T, kube *kubernetes.Clientset, ns, name string, replicas int32) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	eventually(t, 2*time.Minute, fmt.Sprintf("Deployment %s with %d ready pods and no others", name, replicas), func() error {
		d, err := kube.AppsV1().Deployments(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		s := d.Status
		if s.ObservedGeneration < d.Generation || s.Replicas != replicas || s.ReadyReplicas != replicas ||
			s.AvailableReplicas != replicas || s.UpdatedReplicas != replicas {
			return fmt.Errorf("status %+v", s)
		}
		pods = listPods(t, kube, ns, "app="+name)
		return checkPods(pods, int(replicas))
	})
	return pods
}

func waitStatefulSet(t *testing.T, kube *kubernetes.Clientset, ns, name string, replicas int32) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	eventually(t, 3*time.Minute, fmt.Sprintf("StatefulSet %s with %d ready pods", name, replicas), func() error {
		s, err := kube.AppsV1().StatefulSets(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if s.Status.ObservedGeneration < s.Generation || s.Status.ReadyReplicas != replicas || s.Status.Replicas != replicas {
			return fmt.Errorf("status %+v", s.Status)
		}
		pods = listPods(t, kube, ns, "app="+name)
		return checkPods(pods, int(replicas))
	})
	return pods
}

// checkPods says why pods are not n pods, Running and Ready, with distinct addresses of the pod range.
func checkPods(pods []corev1.Pod, n int) error {
	if len(pods) != n {
		var names []string
		for _, p := range pods {
			names = append(names, p.Name)
		}
		return fmt.Errorf("%d pods %v, want %d", len(pods), names, n)
	}
	ips := map[string]string{}
	for _, p := range pods {
		if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || !podReady(&p) {
			return fmt.Errorf("pod %s: phase %s, ready %t, deleting %t", p.Name, p.Status.Phase, podReady(&p), p.DeletionTimestamp != nil)
		}
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil || !podCIDR.Contains(ip) {
			return fmt.Errorf("pod %s has address %q, want one of %s", p.Name, p.Status.PodIP, podCIDR)
		}
		if other, dup := ips[p.Status.PodIP]; dup {
			return fmt.Errorf("pods %s and %s share address %s", other, p.Name, p.Status.PodIP)
		}
		ips[p.Status.PodIP] = p.Name
	}
	return nil
}

func listPods(t *testing.T, kube *kubernetes.Clientset, ns, selector string) []corev1.Pod {
	t.Helper()
	list, err := kube.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].Name < list.Items[j].Name })
	return list.Items
}

func getPod(t *testing.T, kube *kubernetes.Clientset, ns, name string) *corev1.Pod {
	t.Helper()
	p, err := kube.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// sandboxPIDs are the processes of this machine whose command line names the pod directory of uid: the
// bubblewrap sandboxes of its containers.
func sandboxPIDs(uid string) []string {
	var pids []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), "/pods/"+uid+"/") {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

// eventually polls check until it returns nil; the deadline is for broken behaviour, not a performance target.
func eventually(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not so after %s: %v", what, timeout, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func ptr[T any](v T) *T { return &v }

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
