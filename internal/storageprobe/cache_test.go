package storageprobe

import (
	"context"
	"errors"
	"testing"
	"time"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
)

// countingProber answers with err and counts calls: the cache's inner prober, so that the test sees exactly
// which Probe calls reach the network.
type countingProber struct {
	calls int
	err   error
}

func (p *countingProber) Probe(context.Context, Target) error {
	p.calls++
	return p.err
}

func TestCachedProbesOncePerSettingsAndRetriesFailures(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	inner := &countingProber{}
	cache := NewCached(inner, time.Minute, func() time.Time { return now })
	target := Target{
		Cluster:    "ns/metrics",
		Storage:    v1alpha1.StorageSpec{Type: v1alpha1.StorageS3, S3: &v1alpha1.S3Storage{Bucket: "metrics", Endpoint: "minio:9000"}},
		SecretName: "creds", Credentials: map[string][]byte{AccessKeyIDKey: []byte("id"), SecretAccessKeyKey: []byte("secret")},
	}
	probe := func(target Target, wantCalls int) error {
		t.Helper()
		err := cache.Probe(context.Background(), target)
		if inner.calls != wantCalls {
			t.Fatalf("inner prober called %d times, want %d", inner.calls, wantCalls)
		}
		return err
	}

	// A success stands for as long as nothing changes, however much time passes.
	if err := probe(target, 1); err != nil {
		t.Fatal(err)
	}
	now = now.Add(24 * time.Hour)
	if err := probe(target, 1); err != nil {
		t.Fatal(err)
	}

	// New credentials (same keys, another value) or other settings are probed at once.
	changed := target
	changed.Credentials = map[string][]byte{AccessKeyIDKey: []byte("id"), SecretAccessKeyKey: []byte("other")}
	inner.err = &Problem{Reason: ReasonCredentialsRejected, Message: "rejected"}
	var problem *Problem
	if err := probe(changed, 2); !errors.As(err, &problem) || problem.Reason != ReasonCredentialsRejected {
		t.Fatalf("probe with new credentials: %v, want the inner Problem", err)
	}

	// A failure stands for the retry interval, then the bucket is probed again.
	now = now.Add(59 * time.Second)
	if err := probe(changed, 2); !errors.As(err, &problem) {
		t.Fatalf("cached failure: %v", err)
	}
	now = now.Add(time.Second)
	inner.err = nil
	if err := probe(changed, 3); err != nil {
		t.Fatalf("probe after the retry interval: %v", err)
	}

	other := changed
	other.Storage = v1alpha1.StorageSpec{Type: v1alpha1.StorageS3, S3: &v1alpha1.S3Storage{Bucket: "metrics-2", Endpoint: "minio:9000"}}
	_ = probe(other, 4)

	// Each cluster has its own entry; a forgotten cluster is probed again.
	second := other
	second.Cluster = "ns/second"
	_ = probe(second, 5)
	_ = probe(other, 5)
	cache.Forget("ns/second")
	_ = probe(second, 6)

	// A probe the caller cancelled teaches nothing and is not cached.
	third := other
	third.Cluster = "ns/third"
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = cache.Probe(ctx, third)
	_ = probe(third, 8)
}
