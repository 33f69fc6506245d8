package aws

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	smithy "github.com/aws/smithy-go"

	"github.com/opstrace/opstrace/internal/installer/plan"
	"github.com/opstrace/opstrace/internal/testenv"
)

// minioGaps passes every call to a real MinIO, except the calls MinIO answers NotImplemented: those it
// records and emulates, so the test still asserts the request shape AWS S3 would get. Which calls fell
// back is logged.
type minioGaps struct {
	S3API
	mu       sync.Mutex
	emulated map[string]any // op → last input
	pab      map[string]*s3types.PublicAccessBlockConfiguration
	enc      map[string]*s3types.ServerSideEncryptionConfiguration
}

func notImplemented(err error) bool {
	var api smithy.APIError
	return errors.As(err, &api) && (api.ErrorCode() == "NotImplemented" || strings.Contains(api.ErrorMessage(), "not implemented") ||
		strings.Contains(api.ErrorMessage(), "KMS is not configured") || api.ErrorCode() == "KMS.NotConfigured")
}

func (m *minioGaps) record(op string, in any) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.emulated[op] = in
}

func (m *minioGaps) PutPublicAccessBlock(ctx context.Context, in *s3.PutPublicAccessBlockInput, o ...func(*s3.Options)) (*s3.PutPublicAccessBlockOutput, error) {
	out, err := m.S3API.PutPublicAccessBlock(ctx, in, o...)
	// MinIO has no PublicAccessBlock API: it answers MalformedXML (observed with the MinIO of bin/minio).
	var api smithy.APIError
	if !notImplemented(err) && !(errors.As(err, &api) && api.ErrorCode() == "MalformedXML") {
		return out, err
	}
	m.record("PutPublicAccessBlock", in)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pab[aws.ToString(in.Bucket)] = in.PublicAccessBlockConfiguration
	return &s3.PutPublicAccessBlockOutput{}, nil
}

func (m *minioGaps) GetPublicAccessBlock(ctx context.Context, in *s3.GetPublicAccessBlockInput, o ...func(*s3.Options)) (*s3.GetPublicAccessBlockOutput, error) {
	out, err := m.S3API.GetPublicAccessBlock(ctx, in, o...)
	m.mu.Lock()
	_, emulating := m.pab[aws.ToString(in.Bucket)]
	m.mu.Unlock()
	if err == nil || (!notImplemented(err) && !emulating) {
		return out, err
	}
	m.record("GetPublicAccessBlock", in)
	m.mu.Lock()
	defer m.mu.Unlock()
	if c := m.pab[aws.ToString(in.Bucket)]; c != nil {
		return &s3.GetPublicAccessBlockOutput{PublicAccessBlockConfiguration: c}, nil
	}
	return nil, apiErr("NoSuchPublicAccessBlockConfiguration")
}

func (m *minioGaps) PutBucketEncryption(ctx context.Context, in *s3.PutBucketEncryptionInput, o ...func(*s3.Options)) (*s3.PutBucketEncryptionOutput, error) {
	out, err := m.S3API.PutBucketEncryption(ctx, in, o...)
	if !notImplemented(err) {
		return out, err
	}
	m.record("PutBucketEncryption", in)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.enc[aws.ToString(in.Bucket)] = in.ServerSideEncryptionConfiguration
	return &s3.PutBucketEncryptionOutput{}, nil
}

func (m *minioGaps) GetBucketEncryption(ctx context.Context, in *s3.GetBucketEncryptionInput, o ...func(*s3.Options)) (*s3.GetBucketEncryptionOutput, error) {
	out, err := m.S3API.GetBucketEncryption(ctx, in, o...)
	m.mu.Lock()
	defer m.mu.Unlock()
	if c := m.enc[aws.ToString(in.Bucket)]; c != nil && (err != nil || out.ServerSideEncryptionConfiguration == nil) {
		m.emulated["GetBucketEncryption"] = in
		return &s3.GetBucketEncryptionOutput{ServerSideEncryptionConfiguration: c}, nil
	}
	return out, err
}

func minioClients(t *testing.T) (*Clients, *s3.Client, *minioGaps) {
	m := testenv.StartMinIO(t)
	real := s3.New(s3.Options{Region: m.Region, BaseEndpoint: aws.String(m.Endpoint), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(m.AccessKey, m.SecretKey, "")})
	gaps := &minioGaps{S3API: real, emulated: map[string]any{},
		pab: map[string]*s3types.PublicAccessBlockConfiguration{}, enc: map[string]*s3types.ServerSideEncryptionConfiguration{}}
	return &Clients{Region: m.Region, S3: gaps}, real, gaps
}

func bucketSteps(c *Clients, metricsDays, logsDays int) []plan.Step {
	return []plan.Step{
		&bucketStep{c: c, cluster: testCluster, kind: "metrics", days: metricsDays},
		&bucketStep{c: c, cluster: testCluster, kind: "logs", days: logsDays},
	}
}

func actions(rep plan.Report) string {
	var out []string
	for _, s := range rep.Steps {
		out = append(out, s.Name+"="+s.Action.String())
	}
	return strings.Join(out, " ")
}

// The bucket steps against a real MinIO: create, tags, lifecycle, an idempotent rerun, a retention
// change, and destroy of a bucket holding objects.
func TestBucketsOnMinIO(t *testing.T) {
	c, real, gaps := minioClients(t)
	ctx := context.Background()
	opts := plan.Options{InitialBackoff: 10e6}

	rep, err := plan.Run(ctx, bucketSteps(c, 30, 7), opts)
	if err != nil {
		t.Fatal(err)
	}
	if got := actions(rep); got != "aws/bucket-metrics=create aws/bucket-logs=create" {
		t.Errorf("first run: %s", got)
	}
	for bucket, days := range map[string]int32{"opstrace-prod-metrics": 30, "opstrace-prod-logs": 7} {
		tags, err := real.GetBucketTagging(ctx, &s3.GetBucketTaggingInput{Bucket: aws.String(bucket)})
		if err != nil || len(tags.TagSet) != 1 || aws.ToString(tags.TagSet[0].Key) != "opstrace.io/cluster" || aws.ToString(tags.TagSet[0].Value) != testCluster {
			t.Errorf("%s tags %+v, %v", bucket, tags, err)
		}
		lc, err := real.GetBucketLifecycleConfiguration(ctx, &s3.GetBucketLifecycleConfigurationInput{Bucket: aws.String(bucket)})
		if err != nil || len(lc.Rules) != 1 || aws.ToInt32(lc.Rules[0].Expiration.Days) != days || lc.Rules[0].Status != s3types.ExpirationStatusEnabled {
			t.Errorf("%s lifecycle %+v, %v", bucket, lc, err)
		}
	}
	// Whatever MinIO could not do itself was requested as AWS S3 expects it.
	for op, in := range gaps.emulated {
		t.Logf("MinIO does not implement %s (it answers NotImplemented or MalformedXML): the request AWS S3 would get is asserted here instead", op)
		if p, ok := in.(*s3.PutPublicAccessBlockInput); ok {
			c := p.PublicAccessBlockConfiguration
			if !aws.ToBool(c.BlockPublicAcls) || !aws.ToBool(c.BlockPublicPolicy) || !aws.ToBool(c.IgnorePublicAcls) || !aws.ToBool(c.RestrictPublicBuckets) {
				t.Errorf("public access block %+v", c)
			}
		}
		if p, ok := in.(*s3.PutBucketEncryptionInput); ok {
			r := p.ServerSideEncryptionConfiguration.Rules
			if len(r) != 1 || r[0].ApplyServerSideEncryptionByDefault.SSEAlgorithm != s3types.ServerSideEncryptionAes256 {
				t.Errorf("encryption %+v", r)
			}
		}
	}

	rep, err = plan.Run(ctx, bucketSteps(c, 30, 7), opts)
	if err != nil || actions(rep) != "aws/bucket-metrics=no change aws/bucket-logs=no change" {
		t.Fatalf("rerun: %s, %v", actions(rep), err)
	}

	preview, err := plan.Preview(ctx, bucketSteps(c, 90, 7))
	if err != nil {
		t.Fatal(err)
	}
	if d := plan.Describe(preview); !strings.Contains(d, "~ aws/bucket-metrics") || !strings.Contains(d, "lifecycle: objects expire after 30 days → objects expire after 90 days") {
		t.Errorf("plan of a retention change:\n%s", d)
	}
	if _, err := plan.Run(ctx, bucketSteps(c, 90, 7), opts); err != nil {
		t.Fatal(err)
	}
	lc, err := real.GetBucketLifecycleConfiguration(ctx, &s3.GetBucketLifecycleConfigurationInput{Bucket: aws.String("opstrace-prod-metrics")})
	if err != nil || aws.ToInt32(lc.Rules[0].Expiration.Days) != 90 {
		t.Errorf("after the retention change: %+v %v", lc, err)
	}

	for _, key := range []string{"tenant/01/index", "tenant/01/chunks/000001"} {
		if _, err := real.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("opstrace-prod-metrics"), Key: aws.String(key), Body: bytes.NewReader([]byte("block"))}); err != nil {
			t.Fatal(err)
		}
	}
	rev, err := plan.Reverse(bucketSteps(c, 90, 7))
	if err != nil {
		t.Fatal(err)
	}
	if rep, err = plan.Run(ctx, rev, opts); err != nil || actions(rep) != "aws/bucket-logs=delete aws/bucket-metrics=delete" {
		t.Fatalf("destroy: %s, %v", actions(rep), err)
	}
	for _, b := range []string{"opstrace-prod-metrics", "opstrace-prod-logs"} {
		if _, err := real.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(b)}); !isNotFound(err) {
			t.Errorf("%s after destroy: %v", b, err)
		}
	}
	if rep, err = plan.Run(ctx, rev, opts); err != nil || actions(rep) != "aws/bucket-logs=no change aws/bucket-metrics=no change" {
		t.Fatalf("second destroy: %s, %v", actions(rep), err)
	}
}

// A bucket with our name but without our tag, on MinIO: create refuses with the fix and leaves it be;
// destroy leaves it and its objects be.
func TestUntaggedBucketOnMinIOIsLeftAlone(t *testing.T) {
	c, real, _ := minioClients(t)
	ctx := context.Background()
	b := aws.String("opstrace-prod-metrics")
	if _, err := real.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: b}); err != nil {
		t.Fatal(err)
	}
	if _, err := real.PutObject(ctx, &s3.PutObjectInput{Bucket: b, Key: aws.String("theirs"), Body: bytes.NewReader([]byte("x"))}); err != nil {
		t.Fatal(err)
	}
	steps := bucketSteps(c, 30, 7)[:1]
	_, err := plan.Run(ctx, steps, plan.Options{})
	if plan.Classify(err) != plan.NotOwned || !strings.Contains(err.Error(), "S3 bucket opstrace-prod-metrics exists but is not tagged opstrace.io/cluster=prod") ||
		!strings.Contains(err.Error(), "choose another cluster name") {
		t.Fatalf("create over an untagged bucket: %v", err)
	}
	rev, _ := plan.Reverse(steps)
	if _, err := plan.Run(ctx, rev, plan.Options{}); plan.Classify(err) != plan.NotOwned {
		t.Fatalf("destroy over an untagged bucket: %v", err)
	}
	if _, err := real.GetBucketLifecycleConfiguration(ctx, &s3.GetBucketLifecycleConfigurationInput{Bucket: b}); !isNotFound(err) {
		t.Errorf("the untagged bucket got a lifecycle: %v", err)
	}
	if _, err := real.HeadObject(ctx, &s3.HeadObjectInput{Bucket: b, Key: aws.String("theirs")}); err != nil {
		t.Errorf("the untagged bucket's object: %v", err)
	}
}

// Throttling (SlowDown) and a denied call on top of the real MinIO: retried, and not retried with the
// permission named.
func TestBucketThrottledAndDeniedOnMinIO(t *testing.T) {
	c, _, _ := minioClients(t)
	ctx := context.Background()
	flaky := &faultyS3{S3API: c.S3, errs: map[string][]error{"CreateBucket": {apiErr("SlowDown"), apiErr("SlowDown")}}}
	c.S3 = flaky
	rep, err := plan.Run(ctx, bucketSteps(c, 30, 7)[:1], plan.Options{InitialBackoff: 10e6})
	if err != nil || rep.Steps[0].Attempts != 3 {
		t.Fatalf("throttled create: %d attempts, %v", rep.Steps[0].Attempts, err)
	}
	flaky.errs = map[string][]error{"PutBucketLifecycleConfiguration": {apiErr("AccessDenied")}}
	rep, err = plan.Run(ctx, bucketSteps(c, 60, 7)[:1], plan.Options{InitialBackoff: 10e6})
	if plan.Classify(err) != plan.PermissionDenied || !strings.Contains(err.Error(), "missing permission s3:PutLifecycleConfiguration") || rep.Steps[0].Attempts != 1 {
		t.Fatalf("denied lifecycle: %d attempts, %v", rep.Steps[0].Attempts, err)
	}
}

type faultyS3 struct {
	S3API
	mu   sync.Mutex
	errs map[string][]error
}

func (f *faultyS3) fault(op string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e := f.errs[op]; len(e) > 0 {
		f.errs[op] = e[1:]
		return e[0]
	}
	return nil
}

func (f *faultyS3) CreateBucket(ctx context.Context, in *s3.CreateBucketInput, o ...func(*s3.Options)) (*s3.CreateBucketOutput, error) {
	if err := f.fault("CreateBucket"); err != nil {
		return nil, err
	}
	return f.S3API.CreateBucket(ctx, in, o...)
}

func (f *faultyS3) PutBucketLifecycleConfiguration(ctx context.Context, in *s3.PutBucketLifecycleConfigurationInput, o ...func(*s3.Options)) (*s3.PutBucketLifecycleConfigurationOutput, error) {
	if err := f.fault("PutBucketLifecycleConfiguration"); err != nil {
		return nil, err
	}
	return f.S3API.PutBucketLifecycleConfiguration(ctx, in, o...)
}
