package storageprobe

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Cached remembers the last result of its inner Prober per cluster, keyed by a digest of the settings and the
// credentials, so that reconciling an unchanged cluster probes nothing: a success stands until the settings
// or the credentials change; a Problem or a failed probe stands for retryAfter, then the bucket is probed
// again. It holds one entry per cluster and no credential (only a SHA-256 over them).
type Cached struct {
	inner      Prober
	retryAfter time.Duration
	now        func() time.Time

	mu      sync.Mutex
	results map[string]result
}

type result struct {
	digest [sha256.Size]byte
	err    error
	at     time.Time
}

// NewCached caches inner's results; now is the clock.
func NewCached(inner Prober, retryAfter time.Duration, now func() time.Time) *Cached {
	return &Cached{inner: inner, retryAfter: retryAfter, now: now, results: map[string]result{}}
}

// Probe implements Prober.
func (c *Cached) Probe(ctx context.Context, target Target) error {
	digest, err := digestOf(target)
	if err != nil {
		return err
	}
	c.mu.Lock()
	last, ok := c.results[target.Cluster]
	c.mu.Unlock()
	if ok && last.digest == digest && (last.err == nil || c.now().Sub(last.at) < c.retryAfter) {
		return last.err
	}
	err = c.inner.Probe(ctx, target)
	if ctx.Err() != nil {
		return err // the caller gave up: nothing was learnt about the bucket
	}
	c.mu.Lock()
	c.results[target.Cluster] = result{digest: digest, err: err, at: c.now()}
	c.mu.Unlock()
	return err
}

// Forget drops the cluster's result, for a deleted cluster.
func (c *Cached) Forget(cluster string) {
	c.mu.Lock()
	delete(c.results, cluster)
	c.mu.Unlock()
}

// digestOf is a SHA-256 over the storage settings and the credentials, in a fixed order.
func digestOf(target Target) ([sha256.Size]byte, error) {
	storage, err := json.Marshal(target.Storage)
	if err != nil {
		return [sha256.Size]byte{}, fmt.Errorf("storage settings of %s: %w", target.Cluster, err)
	}
	sum := sha256.New()
	fmt.Fprintf(sum, "%d:%s%d:%s", len(storage), storage, len(target.SecretName), target.SecretName)
	keys := make([]string, 0, len(target.Credentials))
	for key := range target.Credentials {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	for _, key := range keys {
		fmt.Fprintf(sum, "%d:%s%d:", len(key), key, len(target.Credentials[key]))
		sum.Write(target.Credentials[key])
	}
	var digest [sha256.Size]byte
	copy(digest[:], sum.Sum(nil))
	return digest, nil
}
