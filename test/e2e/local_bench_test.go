package e2e

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/manifests"
	"github.com/opstrace/opstrace/internal/remotewrite"
)

// BenchmarkLocalCluster creates a local cluster with the binaries of bin/ (make build test-tools) and reports
// how long `opstrace create local` takes to report it ready (the build is warm: the binaries exist), then
// creates 100 Tenants one after another and reports the p50 and p99 of the time from the Create call's
// return until the gateway accepts a remote write with the new tenant's token. The controller's memory with
// 1000 Tenants and its idle API writes are BenchmarkControllerWith1000Tenants.
// Run: go test -run '^$' -bench LocalCluster -benchtime 1x ./test/e2e/
func BenchmarkLocalCluster(b *testing.B) {
	const tenants = 100
	c, createTook := createLocalCluster(b, "bench")
	cfg, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		b.Fatal(err)
	}
	scheme := runtime.NewScheme()
	utilruntime.Must(v1alpha1.AddToScheme(scheme))
	kube, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		b.Fatal(err)
	}
	secrets := c.clientset(b).CoreV1().Secrets("opstrace")
	ctx := context.Background()

	b.ResetTimer()
	var latencies []time.Duration
	for i := range tenants {
		name := fmt.Sprintf("bench-%03d", i)
		tenant := &v1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "opstrace"}}
		if err := kube.Create(ctx, tenant); err != nil {
			b.Fatalf("create Tenant %s: %v", name, err)
		}
		created := time.Now()
		sample := []remotewrite.Series{{Labels: map[string]string{"__name__": "bench_probe", "tenant": name},
			Samples: []remotewrite.Sample{{Value: 1, TimestampMsec: created.UnixMilli()}}}}
		var token, last string
		for deadline := created.Add(time.Minute); ; {
			if token == "" {
				s, err := secrets.Get(ctx, manifests.TenantTokenSecretName(name), metav1.GetOptions{})
				if err == nil {
					token = string(s.Data[manifests.TenantTokenKey])
				} else {
					last = err.Error()
				}
			}
			if token != "" {
				code, body := c.push(token, sample)
				if code == http.StatusOK {
					break
				}
				last = fmt.Sprintf("push: %d %s", code, body)
			}
			if time.Now().After(deadline) {
				b.Fatalf("Tenant %s: no write accepted a minute after its creation; last: %s", name, last)
			}
			time.Sleep(10 * time.Millisecond)
		}
		latencies = append(latencies, time.Since(created))
	}
	b.StopTimer()

	slices.Sort(latencies)
	p50, p99 := percentile(latencies, 50), percentile(latencies, 99)
	b.ReportMetric(createTook.Seconds(), "s-create-to-ready")
	b.ReportMetric(float64(p50.Microseconds())/1000, "ms-tenant-usable-p50")
	b.ReportMetric(float64(p99.Microseconds())/1000, "ms-tenant-usable-p99")
	b.Logf("create local → ready %s; Tenant create → first write accepted over %d tenants: p50 %s, p99 %s, max %s",
		createTook.Round(100*time.Millisecond), tenants, p50.Round(time.Millisecond), p99.Round(time.Millisecond),
		latencies[len(latencies)-1].Round(time.Millisecond))
}

// percentile of sorted durations, nearest rank.
func percentile(sorted []time.Duration, p int) time.Duration {
	rank := (p*len(sorted) + 99) / 100
	return sorted[max(rank, 1)-1]
}
