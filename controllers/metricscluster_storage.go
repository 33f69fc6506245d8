package controllers

import (
	"context"
	"errors"
	"fmt"
	"time"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/storageprobe"
)

// checkStorage probes the cluster's bucket with the credentials Secret's data (see storageprobe): settings
// that cannot work become a Degraded condition naming the field and the fix, and the controller looks again
// after storageprobe.RetryAfter, for a fix made outside Kubernetes. StorageProbe caches its results per cluster,
// settings and credentials, so an unchanged cluster is not probed again. Without StorageProbe nothing is probed.
func (r *MetricsClusterReconciler) checkStorage(ctx context.Context, cluster *v1alpha1.MetricsCluster, secretName string, credentials map[string][]byte) error {
	if r.StorageProbe == nil {
		return nil
	}
	err := r.StorageProbe.Probe(ctx, storageprobe.Target{
		Cluster:     cluster.Namespace + "/" + cluster.Name,
		Storage:     cluster.Spec.Storage,
		SecretName:  secretName,
		Credentials: credentials,
	})
	var problem *storageprobe.Problem
	switch {
	case errors.As(err, &problem):
		return &DegradedError{Reason: problem.Reason, Message: problem.Message}
	case err != nil:
		return fmt.Errorf("probe storage of %s: %w", cluster.Name, err)
	}
	return nil
}

// storageRecheck is when to look again after checkCredentials failed: a bucket problem may be fixed without
// any event the controller watches; a missing or incomplete Secret is fixed by a watched change.
func storageRecheck(err error) time.Duration {
	var degraded *DegradedError
	if errors.As(err, &degraded) && storageprobe.IsReason(degraded.Reason) {
		return storageprobe.RetryAfter
	}
	return 0
}
