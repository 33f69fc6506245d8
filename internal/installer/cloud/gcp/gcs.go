package gcp

import (
	"context"
	"fmt"
	"strings"

	"cloud.google.com/go/storage"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

// bucketStep is a GCS bucket in the region with a lifecycle rule deleting objects after the retention,
// uniform bucket-level access (IAM only, no object ACLs), public access prevention enforced, and the
// owned label. Encryption at rest is GCS's default, Google-managed keys: there is nothing to set, and a
// customer-managed key (CMEK) would need a KMS key ring this installer does not make.
type bucketStep struct {
	c       *Clients
	cluster string
	kind    string // cloud.BucketMetrics or cloud.BucketLogs
	days    int
}

// bucketState is what Observe found of an existing bucket; it is also the desired state.
type bucketState struct {
	ExpireDays    int  // age of the Delete rule; 0 when absent
	OtherRules    bool // rules other than our one Delete rule
	Uniform       bool // uniform bucket-level access
	PublicPrevent bool // public access prevention enforced
	Labelled      bool // the owned label
}

func (s *bucketStep) Name() string        { return "gcp/bucket-" + s.kind }
func (s *bucketStep) DependsOn() []string { return nil }
func (s *bucketStep) bucket() string      { return cloud.BucketName(s.cluster, s.kind) }

func (s *bucketStep) Observe(ctx context.Context) (plan.Observation, error) {
	b := s.bucket()
	attrs, err := s.c.Storage.Bucket(ctx, b)
	if isNotFound(err) {
		return plan.Observation{}, nil
	}
	if err != nil {
		if kindOf(err) == plan.PermissionDenied {
			// 403 both for a bucket of another project and for missing storage.buckets.get.
			e := plan.PermissionError("find bucket "+b, "storage.buckets.get", err)
			e.Hint = "either the credentials lack storage.buckets.get, or bucket names are global and another project owns " +
				b + ": grant the permission, or choose another cluster name"
			return plan.Observation{}, e
		}
		return plan.Observation{}, classify("find bucket "+b, "storage.buckets.get", err)
	}
	if attrs.Labels[cloud.OwnerLabel] != s.cluster {
		return plan.Observation{}, plan.NotOwnedError("bucket "+b, "GCS bucket "+b, cloud.OwnerLabel+"="+s.cluster)
	}
	st := observedBucket(attrs)
	return plan.Observation{Exists: true, ID: b, Detail: st}, nil
}

func observedBucket(attrs *storage.BucketAttrs) bucketState {
	st := bucketState{
		Labelled:      true,
		Uniform:       attrs.UniformBucketLevelAccess.Enabled,
		PublicPrevent: attrs.PublicAccessPrevention == storage.PublicAccessPreventionEnforced,
	}
	for _, r := range attrs.Lifecycle.Rules {
		if r.Action.Type == storage.DeleteAction && r.Condition.AgeInDays > 0 && st.ExpireDays == 0 {
			st.ExpireDays = int(r.Condition.AgeInDays)
		} else {
			st.OtherRules = true
		}
	}
	return st
}

func (s *bucketStep) desired() bucketState {
	return bucketState{ExpireDays: s.days, Uniform: true, PublicPrevent: true, Labelled: true}
}

func (s *bucketStep) Plan(obs plan.Observation) plan.Change {
	want := s.desired()
	if !obs.Exists {
		return plan.Change{Action: plan.Create, Desired: want, Diff: []string{
			fmt.Sprintf("bucket %s in %s", s.bucket(), s.c.Region),
			fmt.Sprintf("lifecycle: objects deleted after %d days", s.days),
			"access: uniform bucket-level (IAM only), public access prevention enforced",
			"encryption: Google-managed keys (the GCS default)",
			fmt.Sprintf("label: %s=%s", cloud.OwnerLabel, s.cluster),
		}}
	}
	have := obs.Detail.(bucketState)
	var diff []string
	if have.ExpireDays != want.ExpireDays || have.OtherRules {
		diff = append(diff, fmt.Sprintf("lifecycle: %s → objects deleted after %d days", days(have), want.ExpireDays))
	}
	if !have.Uniform {
		diff = append(diff, "access: fine-grained → uniform bucket-level")
	}
	if !have.PublicPrevent {
		diff = append(diff, "public access prevention: inherited → enforced")
	}
	if len(diff) == 0 {
		return plan.NoChange()
	}
	return plan.Change{Action: plan.Update, Desired: want, Diff: diff}
}

func days(st bucketState) string {
	var parts []string
	if st.ExpireDays == 0 {
		parts = append(parts, "no expiry")
	} else {
		parts = append(parts, fmt.Sprintf("objects deleted after %d days", st.ExpireDays))
	}
	if st.OtherRules {
		parts = append(parts, "other rules")
	}
	return strings.Join(parts, " and ")
}

// PlanDestroy deletes the bucket and every object in it.
func (s *bucketStep) PlanDestroy(obs plan.Observation) plan.Change {
	if !obs.Exists {
		return plan.NoChange()
	}
	return plan.Change{Action: plan.Delete, Diff: []string{"delete bucket " + s.bucket() + " and every object in it"}}
}

func (s *bucketStep) lifecycle() storage.Lifecycle {
	return storage.Lifecycle{Rules: []storage.LifecycleRule{{
		Action:    storage.LifecycleAction{Type: storage.DeleteAction},
		Condition: storage.LifecycleCondition{AgeInDays: int64(s.days)},
	}}}
}

func (s *bucketStep) Apply(ctx context.Context, c plan.Change) error {
	b := s.bucket()
	switch c.Action {
	case plan.Delete:
		return deleteBucket(ctx, s.c.Storage, b)
	case plan.Create:
		// Every setting, the label included, in the create itself: no interruption can leave a bucket of
		// ours without the label (which every later run would refuse to touch) or without its settings.
		err := s.c.Storage.CreateBucket(ctx, s.c.Project, &storage.BucketAttrs{
			Name: b, Location: s.c.Region, Labels: ownerLabels(s.cluster), Lifecycle: s.lifecycle(),
			UniformBucketLevelAccess: storage.UniformBucketLevelAccess{Enabled: true},
			PublicAccessPrevention:   storage.PublicAccessPreventionEnforced,
		})
		if err != nil {
			if kindOf(err) == plan.Conflict {
				// 409: the name is taken, by us since Observe (a concurrent run) or by anyone else: bucket
				// names are global. Retried: the next Observe decides by the label, or by a 403.
				return plan.Errorf(plan.Conflict, "create bucket "+b, fmt.Errorf("%w (bucket names are global; if another project owns %s, choose another cluster name)", err, b))
			}
			return classify("create bucket "+b, "storage.buckets.create", err)
		}
		return nil
	}
	lc := s.lifecycle()
	if err := s.c.Storage.UpdateBucket(ctx, b, storage.BucketAttrsToUpdate{
		Lifecycle:                &lc,
		UniformBucketLevelAccess: &storage.UniformBucketLevelAccess{Enabled: true},
		PublicAccessPrevention:   storage.PublicAccessPreventionEnforced,
	}); err != nil {
		return classify("update bucket "+b, "storage.buckets.update", err)
	}
	return nil
}

// deleteBucket empties the bucket, then deletes it. Metrics and logs buckets are not versioned, so the
// live objects are all there is (GCS's soft delete keeps deleted objects for its retention, billed, then
// drops them).
func deleteBucket(ctx context.Context, api StorageAPI, b string) error {
	for {
		names, err := api.ListObjects(ctx, b, 1000)
		if isNotFound(err) {
			return nil
		}
		if err != nil {
			return classify("list objects of bucket "+b, "storage.objects.list", err)
		}
		if len(names) == 0 {
			break
		}
		for _, n := range names {
			if err := api.DeleteObject(ctx, b, n); err != nil && !isNotFound(err) {
				return classify("delete object "+n+" of bucket "+b, "storage.objects.delete", err)
			}
		}
	}
	if err := api.DeleteBucket(ctx, b); err != nil && !isNotFound(err) {
		return classify("delete bucket "+b, "storage.buckets.delete", err)
	}
	return nil
}
