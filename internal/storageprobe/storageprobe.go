// Package storageprobe checks, before Cortex is started on it, that a MetricsCluster's bucket can work with
// the cluster's credentials: it exists, the credentials are accepted, and the endpoint answers. Cortex itself
// would crash-loop with the same problem written only in its logs; a Problem instead says which field is
// wrong and how to fix it, without ever quoting a credential.
//
// Only settings with a credentials Secret are probed: without one, Cortex uses its pods' identity (IAM roles
// for service accounts, workload identity), which the controller does not have.
package storageprobe

import (
	"context"
	"time"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
)

// Target is what is probed: a cluster's storage settings and the data of its credentials Secret.
type Target struct {
	// Cluster is namespace/name of the MetricsCluster; a cache keeps one result per cluster.
	Cluster string
	Storage v1alpha1.StorageSpec
	// SecretName is the credentials Secret's name, for messages; Credentials is its data.
	SecretName  string
	Credentials map[string][]byte
}

// Prober probes a Target. It returns nil when the bucket can be used, a *Problem when the settings cannot
// work, and any other error for a failure of the probe itself.
type Prober interface {
	Probe(ctx context.Context, target Target) error
}

// Condition reasons of a Problem.
const (
	ReasonBucketNotFound      = "BucketNotFound"
	ReasonCredentialsRejected = "StorageCredentialsRejected"
	ReasonAccessDenied        = "StorageAccessDenied"
	ReasonUnreachable         = "StorageUnreachable"
	ReasonMisconfigured       = "StorageMisconfigured"
)

// IsReason says whether reason is one of a Problem's.
func IsReason(reason string) bool {
	switch reason {
	case ReasonBucketNotFound, ReasonCredentialsRejected, ReasonAccessDenied, ReasonUnreachable, ReasonMisconfigured:
		return true
	}
	return false
}

// Problem is storage settings that cannot work: the Reason of a Degraded condition and a Message naming the
// field and the fix. It never holds a credential.
type Problem struct {
	Reason  string
	Message string
}

func (p *Problem) Error() string { return p.Message }

// Timeout bounds one probe: an endpoint that does not answer within it is reported as unreachable.
const Timeout = 10 * time.Second

// RetryAfter is how long a failed probe's result stands before the bucket is probed again, for a fix made
// outside Kubernetes (a bucket created, a policy granted) that no watch event announces.
const RetryAfter = time.Minute

// New is the prober the controller uses: S3 and GCS over the network, each result cached per cluster and
// settings (see Cached).
func New() *Cached {
	return NewCached(Network{}, RetryAfter, time.Now)
}

// Network probes over the network: S3 with ListObjectsV2, GCS with the bucket's metadata.
type Network struct{}

// Probe implements Prober.
func (Network) Probe(ctx context.Context, target Target) error {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	switch {
	case target.Storage.Type == v1alpha1.StorageS3 && target.Storage.S3 != nil:
		return probeS3(ctx, *target.Storage.S3, target.SecretName, target.Credentials)
	case target.Storage.Type == v1alpha1.StorageGCS && target.Storage.GCS != nil:
		return probeGCS(ctx, *target.Storage.GCS, target.SecretName, target.Credentials)
	}
	return nil
}
