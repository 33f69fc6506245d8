package controlplane

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/opstrace/opstrace/internal/local/supervisor"
	"github.com/opstrace/opstrace/internal/testenv"
)

func binDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(testenv.RepoRoot(), "bin")
	if err := checkBinaries(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

func startForTest(t *testing.T, ctx context.Context, stateDir string) (*ControlPlane, time.Duration) {
	t.Helper()
	began := time.Now()
	cp, err := Start(ctx, Config{
		StateDir:          stateDir,
		BinDir:            binDir(t),
		UnsafeEtcdNoFsync: true,
		ReadyTimeout:      time.Minute,
		Progress: func(step string, elapsed time.Duration) {
			t.Logf("%s (%s)", step, elapsed.Round(time.Millisecond))
		},
	})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = cp.Stop() })
	return cp, time.Since(began)
}

// TestControlPlane runs the real binaries: workloads get controllers and a scheduler, service-account
// tokens are signed, kubectl works with the admin kubeconfig, Stop leaves no process, and a restart keeps
// the URL and the data.
func TestControlPlane(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stateDir := t.TempDir()

	cp, coldStart := startForTest(t, ctx, stateDir)
	t.Logf("cold start: %s", coldStart.Round(time.Millisecond))
	pids := cp.PIDs()
	if len(pids) != len(components) {
		t.Fatalf("PIDs = %v, want one for each of %v", pids, components)
	}

	client, err := kubernetes.NewForConfig(cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}

	t.Run("a second Start on the same StateDir reports the running one", func(t *testing.T) {
		_, err := Start(ctx, Config{StateDir: stateDir, BinDir: binDir(t)})
		if !errors.Is(err, ErrAlreadyRunning) {
			t.Fatalf("Start = %v, want ErrAlreadyRunning", err)
		}
		var running *AlreadyRunningError
		if !errors.As(err, &running) || running.State.OwnerPID != os.Getpid() || running.State.PIDs[ComponentAPIServer] != pids[ComponentAPIServer] {
			t.Errorf("error = %v, want owner %d and apiserver pid %d", err, os.Getpid(), pids[ComponentAPIServer])
		}
		st, err := Status(stateDir)
		if err != nil || !st.Running || st.APIServerURL != cp.APIServerURL() || st.Kubeconfig != cp.Kubeconfig() {
			t.Errorf("Status = %+v, %v", st, err)
		}
	})

	t.Run("the controller manager and scheduler run a Deployment", func(t *testing.T) {
		waitForServiceAccount(t, ctx, client, "default", "default")
		if _, err := client.AppsV1().Deployments("default").Create(ctx, deployment("web", 2), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		createReadyNode(t, ctx, client, "local-node")

		var pods []corev1.Pod
		err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 45*time.Second, true, func(ctx context.Context) (bool, error) {
			list, err := client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
			if err != nil {
				return false, err
			}
			pods = list.Items
			if len(pods) != 2 {
				return false, nil
			}
			for _, pod := range pods {
				if pod.Spec.NodeName != "local-node" {
					return false, nil
				}
			}
			return true, nil
		})
		if err != nil {
			t.Fatalf("want 2 pods of the Deployment bound to local-node: %v; have %d: %v", err, len(pods), podSummary(pods))
		}
		rsList, err := client.AppsV1().ReplicaSets("default").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil || len(rsList.Items) != 1 {
			t.Fatalf("ReplicaSets = %v, %v; want one", rsList, err)
		}
		if owner := metav1.GetControllerOf(&pods[0]); owner == nil || owner.Kind != "ReplicaSet" || owner.Name != rsList.Items[0].Name {
			t.Errorf("pod owner = %v, want ReplicaSet %s", owner, rsList.Items[0].Name)
		}
	})

	t.Run("service-account tokens are issued and accepted", func(t *testing.T) {
		if _, err := client.CoreV1().ServiceAccounts("default").Create(ctx,
			&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "robot"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		tr, err := client.CoreV1().ServiceAccounts("default").CreateToken(ctx, "robot", &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](600)},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("TokenRequest: %v", err)
		}
		review, err := client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
			Spec: authenticationv1.TokenReviewSpec{Token: tr.Status.Token},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !review.Status.Authenticated || review.Status.User.Username != "system:serviceaccount:default:robot" {
			t.Errorf("TokenReview status = %+v", review.Status)
		}
	})

	t.Run("kubectl works with the admin kubeconfig", func(t *testing.T) {
		out, err := exec.CommandContext(ctx, filepath.Join(binDir(t), "kubectl"), "--kubeconfig", cp.Kubeconfig(),
			"get", "nodes", "-o", "name").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "node/local-node" {
			t.Errorf("kubectl get nodes = %q, %v", out, err)
		}
	})

	t.Run("a component that dies is restarted", func(t *testing.T) {
		old := cp.PIDs()[ComponentScheduler]
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
			pid := cp.PIDs()[ComponentScheduler]
			return pid != 0 && pid != old, nil
		})
		if err != nil {
			t.Fatalf("kube-scheduler was not restarted: %v", err)
		}
		pids[ComponentScheduler] = cp.PIDs()[ComponentScheduler]
	})

	url := cp.APIServerURL()
	if err := cp.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	assertNoProcesses(t, stateDir, pids)
	if st, err := Status(stateDir); err != nil || st.Running || len(st.PIDs) > 0 {
		t.Errorf("Status after Stop = %+v, %v", st, err)
	}

	cp2, restart := startForTest(t, ctx, stateDir)
	t.Logf("restart: %s", restart.Round(time.Millisecond))
	if cp2.APIServerURL() != url {
		t.Errorf("APIServerURL after restart = %s, want %s", cp2.APIServerURL(), url)
	}
	client2, err := kubernetes.NewForConfig(cp2.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	if d, err := client2.AppsV1().Deployments("default").Get(ctx, "web", metav1.GetOptions{}); err != nil || *d.Spec.Replicas != 2 {
		t.Errorf("Deployment after restart: %v", err)
	}
	pids2 := cp2.PIDs()

	if err := Destroy(stateDir); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	assertNoProcesses(t, stateDir, pids2)
	if _, err := os.Stat(stateDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state directory after Destroy: %v", err)
	}
}

func deployment(name string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app:1"}}},
			},
		},
	}
}

// createReadyNode registers a Node the way a kubelet would: Ready, with room for pods.
func createReadyNode(t *testing.T, ctx context.Context, client kubernetes.Interface, name string) {
	t.Helper()
	node, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	resources := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("4"),
		corev1.ResourceMemory: resource.MustParse("8Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	now := metav1.Now()
	status := corev1.NodeStatus{
		Capacity:    resources,
		Allocatable: resources,
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			LastHeartbeatTime: now, LastTransitionTime: now,
		}},
	}
	// The controller manager annotates new nodes, so the status update may need a fresh copy.
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node.Status = status
		_, err := client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			if fresh, getErr := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{}); getErr == nil {
				node = fresh
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func waitForServiceAccount(t *testing.T, ctx context.Context, client kubernetes.Interface, namespace, name string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := client.CoreV1().ServiceAccounts(namespace).Get(ctx, name, metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("ServiceAccount %s/%s was not created by the controller manager: %v", namespace, name, err)
	}
}

func podSummary(pods []corev1.Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.Name+"@"+p.Spec.NodeName)
	}
	return out
}

// assertNoProcesses checks that none of pids is alive and, on Linux, that no process at all has stateDir in
// its command line.
func assertNoProcesses(t *testing.T, stateDir string, pids map[string]int) {
	t.Helper()
	// Owned, not Alive: under a parallel `make test` a recorded pid can already belong to an unrelated process.
	for name, pid := range pids {
		if supervisor.Owned(pid, stateDir) {
			t.Errorf("%s (pid %d) still runs", name, pid)
		}
	}
	if runtime.GOOS != "linux" {
		return
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(cmdline), stateDir) {
			continue
		}
		if pid, err := strconv.Atoi(e.Name()); err == nil && supervisor.Alive(pid) {
			t.Errorf("process %s still runs: %s", e.Name(), strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
}
