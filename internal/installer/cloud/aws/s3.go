package aws

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	smithy "github.com/aws/smithy-go"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

// bucketStep is an S3 bucket with a lifecycle rule expiring objects after the retention, default
// encryption, all public access blocked, and the owned tag.
type bucketStep struct {
	c       *Clients
	cluster string
	kind    string // cloud.BucketMetrics or cloud.BucketLogs
	days    int
}

// bucketState is what Observe found of an existing bucket; it is also the desired state.
type bucketState struct {
	ExpireDays    int  // of the rule lifecycleRuleID; 0 when absent
	Encrypted     bool // default encryption configured
	PublicBlocked bool // all four public access block settings on
	Tagged        bool // the owned tag is among the bucket's tags
}

const lifecycleRuleID = "opstrace-retention"

func (s *bucketStep) Name() string        { return "aws/bucket-" + s.kind }
func (s *bucketStep) DependsOn() []string { return nil }
func (s *bucketStep) bucket() string      { return cloud.BucketName(s.cluster, s.kind) }

func (s *bucketStep) Observe(ctx context.Context) (plan.Observation, error) {
	b := s.bucket()
	_, err := s.c.S3.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &b})
	if isNotFound(err) {
		return plan.Observation{}, nil
	}
	if err != nil {
		if kindOf(err) == plan.PermissionDenied {
			// HEAD gives 403 both for a bucket of another account and for missing s3:ListBucket.
			e := plan.PermissionError("find bucket "+b, "s3:ListBucket", err)
			e.Hint = "either the credentials lack s3:ListBucket, or bucket names are global and another AWS account owns " +
				b + ": grant the permission, or choose another cluster name"
			return plan.Observation{}, e
		}
		return plan.Observation{}, classify("find bucket "+b, "s3:ListBucket", err)
	}
	var st bucketState
	tags, err := s.c.S3.GetBucketTagging(ctx, &s3.GetBucketTaggingInput{Bucket: &b})
	if err != nil && !isNotFound(err) {
		return plan.Observation{}, classify("read tags of bucket "+b, "s3:GetBucketTagging", err)
	}
	if tags != nil {
		st.Tagged = ownedBy(tags.TagSet, s.cluster, func(t s3types.Tag) (string, string) {
			return aws.ToString(t.Key), aws.ToString(t.Value)
		})
	}
	if !st.Tagged {
		return plan.Observation{}, plan.NotOwnedError("bucket "+b, "S3 bucket "+b, cloud.OwnerTag+"="+s.cluster)
	}
	lc, err := s.c.S3.GetBucketLifecycleConfiguration(ctx, &s3.GetBucketLifecycleConfigurationInput{Bucket: &b})
	if err != nil && !isNotFound(err) {
		return plan.Observation{}, classify("read lifecycle of bucket "+b, "s3:GetLifecycleConfiguration", err)
	}
	if lc != nil {
		for _, r := range lc.Rules {
			if aws.ToString(r.ID) == lifecycleRuleID && r.Status == s3types.ExpirationStatusEnabled && r.Expiration != nil {
				st.ExpireDays = int(aws.ToInt32(r.Expiration.Days))
			}
		}
	}
	enc, err := s.c.S3.GetBucketEncryption(ctx, &s3.GetBucketEncryptionInput{Bucket: &b})
	if err != nil && !isNotFound(err) {
		return plan.Observation{}, classify("read encryption of bucket "+b, "s3:GetEncryptionConfiguration", err)
	}
	st.Encrypted = enc != nil && enc.ServerSideEncryptionConfiguration != nil &&
		len(enc.ServerSideEncryptionConfiguration.Rules) > 0
	pab, err := s.c.S3.GetPublicAccessBlock(ctx, &s3.GetPublicAccessBlockInput{Bucket: &b})
	if err != nil && !isNotFound(err) {
		return plan.Observation{}, classify("read public access block of bucket "+b, "s3:GetBucketPublicAccessBlock", err)
	}
	if pab != nil && pab.PublicAccessBlockConfiguration != nil {
		p := pab.PublicAccessBlockConfiguration
		st.PublicBlocked = aws.ToBool(p.BlockPublicAcls) && aws.ToBool(p.BlockPublicPolicy) &&
			aws.ToBool(p.IgnorePublicAcls) && aws.ToBool(p.RestrictPublicBuckets)
	}
	return plan.Observation{Exists: true, ID: b, Detail: st}, nil
}

func (s *bucketStep) desired() bucketState {
	return bucketState{ExpireDays: s.days, Encrypted: true, PublicBlocked: true, Tagged: true}
}

func (s *bucketStep) Plan(obs plan.Observation) plan.Change {
	want := s.desired()
	if !obs.Exists {
		return plan.Change{Action: plan.Create, Desired: want, Diff: []string{
			fmt.Sprintf("bucket %s in %s", s.bucket(), s.c.Region),
			fmt.Sprintf("lifecycle: objects expire after %d days", s.days),
			"encryption: SSE-S3 (AES256)", "public access: blocked",
			fmt.Sprintf("tag: %s=%s", cloud.OwnerTag, s.cluster),
		}}
	}
	have := obs.Detail.(bucketState)
	var diff []string
	if have.ExpireDays != want.ExpireDays {
		diff = append(diff, fmt.Sprintf("lifecycle: %s → objects expire after %d days", days(have.ExpireDays), want.ExpireDays))
	}
	if !have.Encrypted {
		diff = append(diff, "encryption: none → SSE-S3 (AES256)")
	}
	if !have.PublicBlocked {
		diff = append(diff, "public access: not fully blocked → blocked")
	}
	if len(diff) == 0 {
		return plan.NoChange()
	}
	return plan.Change{Action: plan.Update, Desired: want, Diff: diff}
}

func days(n int) string {
	if n == 0 {
		return "no expiry"
	}
	return fmt.Sprintf("objects expire after %d days", n)
}

// PlanDestroy deletes the bucket and every object in it.
func (s *bucketStep) PlanDestroy(obs plan.Observation) plan.Change {
	if !obs.Exists {
		return plan.NoChange()
	}
	return plan.Change{Action: plan.Delete, Diff: []string{"delete bucket " + s.bucket() + " and every object in it"}}
}

func (s *bucketStep) Apply(ctx context.Context, c plan.Change) error {
	b := s.bucket()
	if c.Action == plan.Delete {
		return deleteBucket(ctx, s.c.S3, b)
	}
	if c.Action == plan.Create {
		// Tagged in the create itself (s3:TagResource), so that no interruption can leave a bucket of ours
		// without the tag, which every later run would refuse to touch.
		owner := []s3types.Tag{{Key: aws.String(cloud.OwnerTag), Value: aws.String(s.cluster)}}
		in := &s3.CreateBucketInput{Bucket: &b, CreateBucketConfiguration: &s3types.CreateBucketConfiguration{Tags: owner}}
		if s.c.Region != "us-east-1" { // us-east-1 is the one region S3 refuses as a location constraint
			in.CreateBucketConfiguration.LocationConstraint = s3types.BucketLocationConstraint(s.c.Region)
		}
		_, err := s.c.S3.CreateBucket(ctx, in)
		var owned *s3types.BucketAlreadyOwnedByYou
		var api smithy.APIError
		switch {
		case errors.As(err, &owned):
			// Created since Observe (a concurrent run?): observe again, the tag decides whether it is ours.
			return plan.Errorf(plan.Conflict, "create bucket "+b, err)
		case errors.As(err, &api) && api.ErrorCode() == "BucketAlreadyExists":
			e := plan.NotOwnedError("create bucket "+b, "S3 bucket "+b+" (in another AWS account)", cloud.OwnerTag+"="+s.cluster)
			e.Hint = "bucket names are global and another AWS account has " + b + ": choose another cluster name"
			return e
		case err != nil:
			return classify("create bucket "+b, "s3:CreateBucket", err)
		}
		// Again with PutBucketTagging: S3-compatible stores may ignore tags on create.
		if _, err := s.c.S3.PutBucketTagging(ctx, &s3.PutBucketTaggingInput{Bucket: &b, Tagging: &s3types.Tagging{TagSet: owner}}); err != nil {
			return classify("tag bucket "+b, "s3:PutBucketTagging", err)
		}
	}
	if _, err := s.c.S3.PutBucketLifecycleConfiguration(ctx, &s3.PutBucketLifecycleConfigurationInput{
		Bucket: &b,
		LifecycleConfiguration: &s3types.BucketLifecycleConfiguration{Rules: []s3types.LifecycleRule{{
			ID:         aws.String(lifecycleRuleID),
			Status:     s3types.ExpirationStatusEnabled,
			Filter:     &s3types.LifecycleRuleFilter{Prefix: aws.String("")},
			Expiration: &s3types.LifecycleExpiration{Days: aws.Int32(int32(s.days))},
		}}},
	}); err != nil {
		return classify("set lifecycle of bucket "+b, "s3:PutLifecycleConfiguration", err)
	}
	if _, err := s.c.S3.PutBucketEncryption(ctx, &s3.PutBucketEncryptionInput{
		Bucket: &b,
		ServerSideEncryptionConfiguration: &s3types.ServerSideEncryptionConfiguration{Rules: []s3types.ServerSideEncryptionRule{{
			ApplyServerSideEncryptionByDefault: &s3types.ServerSideEncryptionByDefault{SSEAlgorithm: s3types.ServerSideEncryptionAes256},
		}}},
	}); err != nil {
		return classify("set encryption of bucket "+b, "s3:PutEncryptionConfiguration", err)
	}
	if _, err := s.c.S3.PutPublicAccessBlock(ctx, &s3.PutPublicAccessBlockInput{
		Bucket: &b,
		PublicAccessBlockConfiguration: &s3types.PublicAccessBlockConfiguration{
			BlockPublicAcls: aws.Bool(true), BlockPublicPolicy: aws.Bool(true),
			IgnorePublicAcls: aws.Bool(true), RestrictPublicBuckets: aws.Bool(true),
		},
	}); err != nil {
		return classify("block public access to bucket "+b, "s3:PutBucketPublicAccessBlock", err)
	}
	return nil
}

// deleteBucket empties the bucket, then deletes it. Metrics and logs buckets are not versioned, so the
// current objects are all there is.
func deleteBucket(ctx context.Context, api S3API, b string) error {
	for {
		list, err := api.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: &b})
		if isNotFound(err) {
			return nil
		}
		if err != nil {
			return classify("list objects of bucket "+b, "s3:ListBucket", err)
		}
		if len(list.Contents) == 0 {
			break
		}
		ids := make([]s3types.ObjectIdentifier, len(list.Contents))
		for i, o := range list.Contents {
			ids[i] = s3types.ObjectIdentifier{Key: o.Key}
		}
		out, err := api.DeleteObjects(ctx, &s3.DeleteObjectsInput{Bucket: &b, Delete: &s3types.Delete{Objects: ids, Quiet: aws.Bool(true)}})
		if err != nil {
			return classify("delete objects of bucket "+b, "s3:DeleteObject", err)
		}
		if len(out.Errors) > 0 {
			e := out.Errors[0]
			return classify("delete objects of bucket "+b, "s3:DeleteObject",
				&smithy.GenericAPIError{Code: aws.ToString(e.Code), Message: aws.ToString(e.Key) + ": " + aws.ToString(e.Message)})
		}
	}
	if _, err := api.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: &b}); err != nil && !isNotFound(err) {
		return classify("delete bucket "+b, "s3:DeleteBucket", err)
	}
	return nil
}
