package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/testenv"
)

// BenchmarkControllerWith1000Tenants runs the real opstrace-controller (bin/, make build) against a real API
// server with one MetricsCluster and 1000 Tenants, and reports: seconds until every Tenant is Ready, the
// controller's resident memory, and the API writes it makes per minute once idle. Targets (issue): under
// 150 MiB, zero idle writes. Run: go test -run '^$' -bench Controller -benchtime 1x ./test/e2e/
func BenchmarkControllerWith1000Tenants(b *testing.B) {
	const tenants = 1000
	env, err := testenv.Start()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = env.Stop() })
	kubeconfig := filepath.Join(b.TempDir(), "kubeconfig")
	if err := env.WriteKubeconfig(kubeconfig); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bench"}}
	if err := env.Client.Create(ctx, ns); err != nil {
		b.Fatal(err)
	}

	controller := exec.Command(filepath.Join(testenv.RepoRoot(), "bin", "opstrace-controller"),
		"--kubeconfig="+kubeconfig, "--leader-elect=false", "--metrics-bind-address=0", "--health-probe-bind-address=127.0.0.1:0")
	controller.Stderr = nil
	if err := controller.Start(); err != nil {
		b.Fatalf("start bin/opstrace-controller (run make build): %v", err)
	}
	b.Cleanup(func() { _ = controller.Process.Kill(); _ = controller.Wait() })

	start := time.Now()
	cluster := &v1alpha1.MetricsCluster{ObjectMeta: metav1.ObjectMeta{Name: "metrics", Namespace: "bench"},
		Spec: v1alpha1.MetricsClusterSpec{Topology: v1alpha1.TopologySingle, Storage: v1alpha1.StorageSpec{Type: v1alpha1.StorageFilesystem}}}
	if err := env.Client.Create(ctx, cluster); err != nil {
		b.Fatal(err)
	}
	for i := range tenants {
		t := &v1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("tenant-%04d", i), Namespace: "bench"}}
		if err := env.Client.Create(ctx, t); err != nil {
			b.Fatal(err)
		}
	}
	for deadline := time.Now().Add(10 * time.Minute); ; time.Sleep(time.Second) {
		var list v1alpha1.TenantList
		if err := env.Client.List(ctx, &list, client.InNamespace("bench")); err != nil {
			b.Fatal(err)
		}
		ready := 0
		for _, t := range list.Items {
			if meta.IsStatusConditionTrue(t.Status.Conditions, v1alpha1.ConditionReady) {
				ready++
			}
		}
		if ready == tenants {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d tenants ready after 10 minutes", ready, tenants)
		}
	}
	allReady := time.Since(start)

	// Idle: let the controller settle, then count the API server's write requests over a minute.
	time.Sleep(10 * time.Second)
	clientset := kubernetes.NewForConfigOrDie(env.Config)
	before := apiWrites(b, clientset)
	time.Sleep(time.Minute)
	idleWrites := apiWrites(b, clientset) - before

	b.ReportMetric(allReady.Seconds(), "s-to-all-ready")
	b.ReportMetric(rssMiB(b, controller.Process.Pid), "controller-RSS-MiB")
	b.ReportMetric(idleWrites, "idle-API-writes/min")
}

// apiWrites sums the API server's create, update, patch and delete requests so far, except on leases: the
// API server renews its own identity lease every 10 seconds, and the controller runs without leader election.
func apiWrites(b *testing.B, clientset *kubernetes.Clientset) float64 {
	raw, err := clientset.RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	total := 0.0
	scanner := bufio.NewScanner(strings.NewReader(string(raw)))
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	for scanner.Scan() {
		line := scanner.Text()
		if !strings.HasPrefix(line, "apiserver_request_total{") || strings.Contains(line, `resource="leases"`) {
			continue
		}
		for _, verb := range []string{`verb="POST"`, `verb="PUT"`, `verb="PATCH"`, `verb="DELETE"`, `verb="APPLY"`} {
			if strings.Contains(line, verb) {
				value, _ := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
				total += value
			}
		}
	}
	return total
}

func rssMiB(b *testing.B, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if fields := strings.Fields(line); len(fields) >= 2 && fields[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(fields[1], 64)
			return kb / 1024
		}
	}
	b.Fatal("no VmRSS")
	return 0
}
