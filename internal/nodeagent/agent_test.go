package nodeagent

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/opstrace/opstrace/internal/testenv"
)

const testImage = "example.com/podserver:v1"

// TestAgent runs the node agent against a real API server (no scheduler or controller-manager: the pods
// name the node themselves) and real bubblewrap sandboxes.
func TestAgent(t *testing.T) {
	if _, err := exec.LookPath("bwrap"); err != nil {
		t.Skip("bwrap not installed: apt-get install bubblewrap")
	}
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })

	bin := filepath.Join(t.TempDir(), "podserver")
	if out, err := exec.Command("go", "build", "-o", bin, "./testdata/podserver").CombinedOutput(); err != nil {
		t.Fatalf("build podserver: %v\n%s", err, out)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := env.Client
	// No controller-manager creates the default ServiceAccount the admission plugin requires.
	if err := c.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: "default"}}); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	agent, err := New(Config{
		NodeName: "local", StateDir: state, Images: Images{"example.com/podserver": bin},
		RestartBackoff: 300 * time.Millisecond, VolumeResync: time.Second,
	}, env.Config)
	if err != nil {
		t.Fatal(err)
	}
	runDone := make(chan error, 1)
	go func() { runDone <- agent.Run(ctx) }()
	var pids []int
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-runDone:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Error("Run did not return after cancel")
		}
		for _, pid := range pids {
			if syscall.Kill(pid, 0) == nil {
				t.Errorf("process %d still running after the agent stopped", pid)
			}
		}
	})

	eventually(t, 30*time.Second, "node registered and ready", func() error {
		var n corev1.Node
		if err := c.Get(ctx, client.ObjectKey{Name: "local"}, &n); err != nil {
			return err
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("not ready: %v", n.Status.Conditions)
	})

	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cfg", Namespace: "default"}, Data: map[string]string{"key": "v1"}}
	if err := c.Create(ctx, cm); err != nil {
		t.Fatal(err)
	}

	t.Run("running and ready with volumes and env", func(t *testing.T) {
		pod := serverPod("web", nil)
		pod.Spec.Volumes = []corev1.Volume{
			{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}}},
			{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		}
		pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "cfg", MountPath: "/etc/cortex/config", ReadOnly: true}, {Name: "data", MountPath: "/data"}}
		create(t, c, pod)
		ip := waitReady(t, c, pod)
		pids = append(pids, agent.ContainerPID("default", "web", "server"))
		if got := get(t, ip, "/file?path=/etc/cortex/config/key"); got != "v1" {
			t.Errorf("config file = %q", got)
		}
		if _, err := os.Stat("/etc/cortex/config"); err == nil {
			t.Error("the mount leaked to the host")
		}
		if got := get(t, ip, "/env?name=KUBERNETES_SERVICE_HOST"); got != "127.0.0.1" {
			t.Errorf("KUBERNETES_SERVICE_HOST = %q", got)
		}
		if got := get(t, ip, "/file?path=/var/run/secrets/kubernetes.io/serviceaccount/namespace"); got != "default" {
			t.Errorf("service account namespace = %q", got)
		}
		if got := get(t, ip, "/file?path=/var/run/secrets/kubernetes.io/serviceaccount/token"); strings.Count(got, ".") != 2 {
			t.Errorf("service account token = %q", got)
		}
		if got := get(t, ip, "/file?path=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"); !strings.Contains(got, "BEGIN CERTIFICATE") {
			t.Errorf("ca.crt = %q", got)
		}

		cm.Data["key"] = "v2"
		if err := c.Update(ctx, cm); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "configMap update reaches the file", func() error {
			if got := get(t, ip, "/file?path=/etc/cortex/config/key"); got != "v2" {
				return fmt.Errorf("file = %q", got)
			}
			return nil
		})

		pid := agent.ContainerPID("default", "web", "server")
		if err := c.Delete(ctx, pod); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "pod deleted", func() error {
			if err := c.Get(ctx, client.ObjectKeyFromObject(pod), &corev1.Pod{}); err == nil {
				return fmt.Errorf("still there")
			}
			return nil
		})
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("process %d still running", pid)
		}
		if _, ok := agent.PodIP(string(pod.UID)); ok {
			t.Error("IP not released")
		}
	})

	t.Run("failing readiness keeps Ready false", func(t *testing.T) {
		pod := serverPod("unready", []corev1.EnvVar{{Name: "READY", Value: "false"}})
		create(t, c, pod)
		eventually(t, 30*time.Second, "running", func() error {
			p := getPod(t, c, pod)
			if p.Status.Phase != corev1.PodRunning {
				return fmt.Errorf("phase %s", p.Status.Phase)
			}
			return nil
		})
		time.Sleep(3 * time.Second)
		p := getPod(t, c, pod)
		if ready(p) {
			t.Error("pod is Ready although its readiness probe fails")
		}
		pids = append(pids, agent.ContainerPID("default", "unready", "server"))
	})

	t.Run("exiting container is restarted", func(t *testing.T) {
		pod := serverPod("crash", nil)
		pod.Spec.Containers[0].Args = append(pod.Spec.Containers[0].Args, "--exit-after=500ms")
		create(t, c, pod)
		eventually(t, 30*time.Second, "restarted twice", func() error {
			p := getPod(t, c, pod)
			if len(p.Status.ContainerStatuses) == 0 || p.Status.ContainerStatuses[0].RestartCount < 2 {
				return fmt.Errorf("statuses %+v", p.Status.ContainerStatuses)
			}
			if term := p.Status.ContainerStatuses[0].LastTerminationState.Terminated; term == nil || term.ExitCode != 3 {
				return fmt.Errorf("last state %+v", p.Status.ContainerStatuses[0].LastTerminationState)
			}
			return nil
		})
	})

	t.Run("unknown image", func(t *testing.T) {
		pod := serverPod("unknown", nil)
		pod.Spec.Containers[0].Image = "example.com/nope:1"
		create(t, c, pod)
		eventually(t, 30*time.Second, "ImageNotKnown", func() error {
			p := getPod(t, c, pod)
			if p.Status.Phase != corev1.PodPending || len(p.Status.ContainerStatuses) == 0 ||
				p.Status.ContainerStatuses[0].State.Waiting == nil || p.Status.ContainerStatuses[0].State.Waiting.Reason != ReasonImageNotKnown {
				return fmt.Errorf("status %+v", p.Status)
			}
			if msg := p.Status.ContainerStatuses[0].State.Waiting.Message; !strings.Contains(msg, "example.com/podserver") {
				return fmt.Errorf("message %q does not list the known images", msg)
			}
			return nil
		})
	})

	t.Run("local volume provisioning", func(t *testing.T) {
		eventually(t, 10*time.Second, "storage class", func() error {
			var sc storagev1.StorageClass
			return c.Get(ctx, client.ObjectKey{Name: StorageClassName}, &sc)
		})
		class := StorageClassName
		pvc := &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: "data", Namespace: "default"},
			Spec: corev1.PersistentVolumeClaimSpec{StorageClassName: &class, AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}},
		}
		if err := c.Create(ctx, pvc); err != nil {
			t.Fatal(err)
		}
		// Without kube-controller-manager the claim's phase is never set; set it as the PV controller does.
		pvc.Status.Phase = corev1.ClaimPending
		if err := c.Status().Update(ctx, pvc); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "PV created", func() error {
			var pv corev1.PersistentVolume
			if err := c.Get(ctx, client.ObjectKey{Name: PVName(pvc)}, &pv); err != nil {
				return err
			}
			if pv.Spec.ClaimRef == nil || pv.Spec.ClaimRef.Name != "data" || pv.Spec.HostPath.Path != VolumeDir(state, "default", "data") {
				return fmt.Errorf("pv %+v", pv.Spec)
			}
			return nil
		})
	})

	// The pods left are stopped by the agent's shutdown, and the cleanup checks their processes are gone.
}

func serverPod(name string, env []corev1.EnvVar) *corev1.Pod {
	grace := int64(5)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PodSpec{
			NodeName:                      "local",
			ServiceAccountName:            "default",
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name:  "server",
				Image: testImage,
				Args:  []string{"--listen=$(POD_IP):8080"},
				Env: append([]corev1.EnvVar{{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}}},
					env...),
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("http")}},
					PeriodSeconds: 1,
				},
			}},
		},
	}
}

func create(t *testing.T, c client.Client, pod *corev1.Pod) {
	t.Helper()
	if err := c.Create(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
}

func getPod(t *testing.T, c client.Client, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	var p corev1.Pod
	if err := c.Get(context.Background(), client.ObjectKeyFromObject(pod), &p); err != nil {
		t.Fatal(err)
	}
	return &p
}

func ready(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

func waitReady(t *testing.T, c client.Client, pod *corev1.Pod) string {
	t.Helper()
	var ip string
	eventually(t, 30*time.Second, "pod ready", func() error {
		p := getPod(t, c, pod)
		if !ready(p) || p.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("phase %s, conditions %v, containers %+v", p.Status.Phase, p.Status.Conditions, p.Status.ContainerStatuses)
		}
		ip = p.Status.PodIP
		return nil
	})
	if !strings.HasPrefix(ip, "127.1.") {
		t.Fatalf("pod IP %q", ip)
	}
	return ip
}

func get(t *testing.T, ip, path string) string {
	t.Helper()
	resp, err := http.Get("http://" + ip + ":8080" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return string(data)
}

func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
