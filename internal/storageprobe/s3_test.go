package storageprobe

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/testenv"
)

// The S3 probe against a real MinIO: each way the settings can be wrong gives its own reason and a message
// naming the field and the fix, and no message quotes a credential.
func TestS3ProbeAgainstMinIO(t *testing.T) {
	minio := testenv.StartMinIO(t)
	minio.MakeBucket(t, "metrics")
	good := map[string][]byte{AccessKeyIDKey: []byte(minio.AccessKey), SecretAccessKeyKey: []byte(minio.SecretKey)}
	settings := func(bucket, endpoint string, insecure bool) v1alpha1.StorageSpec {
		return v1alpha1.StorageSpec{Type: v1alpha1.StorageS3, S3: &v1alpha1.S3Storage{
			Bucket: bucket, Endpoint: endpoint, Insecure: insecure, Region: minio.Region,
			CredentialsSecret: &v1alpha1.SecretReference{Name: "minio-credentials"},
		}}
	}
	closed := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))

	for _, tc := range []struct {
		name        string
		storage     v1alpha1.StorageSpec
		credentials map[string][]byte
		reason      string // "" when the probe must pass
		mention     []string
	}{
		{"good", settings("metrics", minio.Host, true), good, "", nil},
		{"bucket missing", settings("no-such-bucket", minio.Host, true), good, ReasonBucketNotFound,
			[]string{"spec.storage.s3.bucket", `"no-such-bucket"`, "does not exist", "create it"}},
		{"unknown access key", settings("metrics", minio.Host, true),
			map[string][]byte{AccessKeyIDKey: []byte("AKIAUNKNOWN"), SecretAccessKeyKey: []byte(minio.SecretKey)},
			ReasonCredentialsRejected, []string{"Secret minio-credentials", "spec.storage.s3.credentialsSecret", "InvalidAccessKeyId", "AWS_SECRET_ACCESS_KEY"}},
		{"wrong secret key", settings("metrics", minio.Host, true),
			map[string][]byte{AccessKeyIDKey: []byte(minio.AccessKey), SecretAccessKeyKey: []byte("wrong-" + minio.SecretKey)},
			ReasonCredentialsRejected, []string{"Secret minio-credentials", "SignatureDoesNotMatch", "put a valid"}},
		{"nothing listens at the endpoint", settings("metrics", closed, true), good, ReasonUnreachable,
			[]string{"spec.storage.s3.endpoint", closed, "connection refused"}},
		{"HTTPS to a plain-HTTP endpoint", settings("metrics", minio.Host, false), good, ReasonMisconfigured,
			[]string{"spec.storage.s3.insecure", "insecure: true"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Network{}.Probe(context.Background(), Target{Cluster: "ns/metrics", Storage: tc.storage,
				SecretName: "minio-credentials", Credentials: tc.credentials})
			if tc.reason == "" {
				if err != nil {
					t.Fatalf("probe of good settings: %v\n%s", err, minio.LogTail(20))
				}
				return
			}
			var problem *Problem
			if !errors.As(err, &problem) {
				t.Fatalf("probe: %v (%T), want a *Problem with reason %s", err, err, tc.reason)
			}
			if problem.Reason != tc.reason {
				t.Errorf("reason %s, want %s (message %q)", problem.Reason, tc.reason, problem.Message)
			}
			for _, want := range tc.mention {
				if !strings.Contains(problem.Message, want) {
					t.Errorf("message %q does not mention %q", problem.Message, want)
				}
			}
			for _, secret := range []string{minio.SecretKey, minio.AccessKey, "AKIAUNKNOWN"} {
				if strings.Contains(problem.Message, secret) {
					t.Errorf("message %q quotes a credential", problem.Message)
				}
			}
			if !IsReason(problem.Reason) {
				t.Errorf("IsReason(%s) = false", problem.Reason)
			}
			t.Logf("%s: %s", problem.Reason, problem.Message)
		})
	}
}
