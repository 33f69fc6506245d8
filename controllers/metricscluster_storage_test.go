package controllers

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/storageprobe"
	"github.com/opstrace/opstrace/internal/testenv"
)

// networkCalls counts the probes that reach the network (MinIO) through the controller's cache.
type networkCalls struct{ n atomic.Int64 }

func (c *networkCalls) Probe(ctx context.Context, target storageprobe.Target) error {
	c.n.Add(1)
	return storageprobe.Network{}.Probe(ctx, target)
}

// Bucket settings that cannot work, against a real MinIO: Degraded with the probe's reason and a message naming
// the field, no workloads, a slow recheck instead of a hot loop; fixed outside Kubernetes (bucket created) it
// recovers on the recheck; an idle reconcile probes nothing and writes nothing; new credentials are probed at
// once.
func TestBucketSettingsThatCannotWorkDegradeWithoutHotLoop(t *testing.T) {
	minio := testenv.StartMinIO(t)
	h := newHarness(t)
	calls := &networkCalls{}
	h.cluster.StorageProbe = storageprobe.NewCached(calls, storageprobe.RetryAfter, func() time.Time { return h.now })

	h.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "minio-credentials"}, StringData: map[string]string{
		storageprobe.AccessKeyIDKey: minio.AccessKey, storageprobe.SecretAccessKeyKey: minio.SecretKey,
	}})
	cluster := &v1alpha1.MetricsCluster{
		ObjectMeta: metav1.ObjectMeta{Name: "onprem"},
		Spec: v1alpha1.MetricsClusterSpec{Topology: v1alpha1.TopologySingle, Storage: v1alpha1.StorageSpec{
			Type: v1alpha1.StorageS3, S3: &v1alpha1.S3Storage{
				Bucket: "metrics", Endpoint: minio.Host, Insecure: true,
				CredentialsSecret: &v1alpha1.SecretReference{Name: "minio-credentials"},
			}}},
	}
	h.create(cluster)

	degraded := func() metav1.Condition {
		h.get("onprem", cluster)
		return condition(cluster.Status.Conditions, v1alpha1.ConditionDegraded)
	}
	result := h.reconcileCluster("onprem")
	if c := degraded(); c.Status != metav1.ConditionTrue || c.Reason != storageprobe.ReasonBucketNotFound ||
		!strings.Contains(c.Message, "spec.storage.s3.bucket") || !strings.Contains(c.Message, `"metrics"`) {
		t.Fatalf("Degraded = %+v, want True, %s, naming spec.storage.s3.bucket", c, storageprobe.ReasonBucketNotFound)
	}
	if result.RequeueAfter != storageprobe.RetryAfter {
		t.Fatalf("a bucket problem requeues after %v, want %v (a recheck, not a hot loop)", result.RequeueAfter, storageprobe.RetryAfter)
	}
	var sts appsv1.StatefulSet
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: h.ns, Name: "onprem-all"}, &sts); err == nil {
		t.Fatal("workloads were created although Cortex cannot use its bucket")
	}

	// Reconciles before the recheck is due (a watch event, say) neither probe nor write.
	before, probes := h.writes.n.Load(), calls.n.Load()
	h.reconcileCluster("onprem")
	if writes, n := h.writes.n.Load()-before, calls.n.Load()-probes; writes != 0 || n != 0 {
		t.Fatalf("a repeated reconcile of the degraded cluster made %d writes and %d probes, want 0 and 0", writes, n)
	}

	// The bucket is created in the store, which no watch announces; the recheck finds it.
	minio.MakeBucket(t, "metrics")
	h.now = h.now.Add(storageprobe.RetryAfter)
	h.reconcileCluster("onprem")
	if c := degraded(); c.Status != metav1.ConditionFalse {
		t.Fatalf("Degraded = %+v after the bucket was created, want False", c)
	}
	h.get("onprem-all", &sts)
	h.reconcileCluster("onprem") // the status catches up with what was applied

	before, probes = h.writes.n.Load(), calls.n.Load()
	h.reconcileCluster("onprem")
	if writes, n := h.writes.n.Load()-before, calls.n.Load()-probes; writes != 0 || n != 0 {
		t.Fatalf("an idle reconcile made %d writes and %d probes, want 0 and 0", writes, n)
	}

	// Wrong credentials are probed as soon as the Secret changes, and never shown.
	var secret corev1.Secret
	h.get("minio-credentials", &secret)
	secret.Data[storageprobe.SecretAccessKeyKey] = []byte("not-the-" + minio.SecretKey)
	if err := env.Client.Update(context.Background(), &secret); err != nil {
		t.Fatal(err)
	}
	h.reconcileCluster("onprem")
	c := degraded()
	if c.Status != metav1.ConditionTrue || c.Reason != storageprobe.ReasonCredentialsRejected ||
		!strings.Contains(c.Message, "Secret minio-credentials") {
		t.Fatalf("Degraded = %+v, want True, %s, naming the Secret", c, storageprobe.ReasonCredentialsRejected)
	}
	for _, cond := range cluster.Status.Conditions {
		if strings.Contains(cond.Message, minio.SecretKey) || strings.Contains(cond.Message, minio.AccessKey) {
			t.Fatalf("condition %s shows a credential: %q", cond.Type, cond.Message)
		}
	}
}
