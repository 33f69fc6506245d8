package storageprobe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
)

// S3 credential keys of the credentials Secret, the environment variables Cortex reads them from.
const (
	AccessKeyIDKey     = "AWS_ACCESS_KEY_ID"
	SecretAccessKeyKey = "AWS_SECRET_ACCESS_KEY"
)

// s3Client is the one call of the S3 API the probe makes.
type s3Client interface {
	ListObjectsV2(context.Context, *s3.ListObjectsV2Input, ...func(*s3.Options)) (*s3.ListObjectsV2Output, error)
}

// probeS3 lists at most one object of the bucket, as Cortex's first bucket operation does: it needs the
// bucket to exist, the endpoint to answer, the credentials to be valid and allowed s3:ListBucket.
func probeS3(ctx context.Context, spec v1alpha1.S3Storage, secretName string, credentials map[string][]byte) error {
	client, endpoint := newS3Client(spec, credentials)
	_, err := client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(spec.Bucket), MaxKeys: aws.Int32(1)})
	return s3Problem(err, spec, endpoint, secretName)
}

// newS3Client is a client for the bucket the way Cortex reaches it: the endpoint (or AWS S3 in the region),
// plain HTTP when insecure, path-style addressing for a custom endpoint. It makes one attempt, no retries.
func newS3Client(spec v1alpha1.S3Storage, credentials map[string][]byte) (s3Client, string) {
	region := spec.Region
	if region == "" {
		region = "us-east-1" // S3-compatible stores accept any region; this is what Cortex signs with.
	}
	options := s3.Options{
		Region: region,
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{
				AccessKeyID:     string(credentials[AccessKeyIDKey]),
				SecretAccessKey: string(credentials[SecretAccessKeyKey]),
				Source:          "credentials Secret",
			}, nil
		}),
		Retryer:    aws.NopRetryer{},
		HTTPClient: &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()},
	}
	endpoint := fmt.Sprintf("s3.%s.amazonaws.com", region)
	if spec.Endpoint != "" {
		endpoint = spec.Endpoint
		scheme := "https://"
		if spec.Insecure {
			scheme = "http://"
		}
		options.BaseEndpoint = aws.String(scheme + spec.Endpoint)
		options.UsePathStyle = true
	}
	return s3.New(options), endpoint
}

// s3Problem turns the answer of the probe into a Problem naming the field to fix, or nil.
func s3Problem(err error, spec v1alpha1.S3Storage, endpoint, secretName string) error {
	if err == nil {
		return nil
	}
	bucket := fmt.Sprintf("bucket %q at %s", spec.Bucket, endpoint)
	secret := fmt.Sprintf("Secret %s (spec.storage.s3.credentialsSecret)", secretName)
	endpointField := "spec.storage.s3.endpoint"
	if spec.Endpoint == "" {
		endpointField = "spec.storage.s3.region"
	}

	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		switch code := apiErr.ErrorCode(); code {
		case "NoSuchBucket", "NotFound":
			return &Problem{Reason: ReasonBucketNotFound, Message: fmt.Sprintf(
				"spec.storage.s3.bucket: %s does not exist; create it (storage settings are immutable: to use another bucket, recreate the MetricsCluster)", bucket)}
		case "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidClientTokenId":
			return &Problem{Reason: ReasonCredentialsRejected, Message: fmt.Sprintf(
				"%s: the store at %s rejects the credentials (%s); put a valid %s and %s in the Secret", secret, endpoint, code, AccessKeyIDKey, SecretAccessKeyKey)}
		case "AccessDenied", "AllAccessDisabled", "Forbidden":
			return &Problem{Reason: ReasonAccessDenied, Message: fmt.Sprintf(
				"%s: the credentials may not list %s (%s); allow them s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject on the bucket", secret, bucket, code)}
		case "PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException":
			return &Problem{Reason: ReasonMisconfigured, Message: fmt.Sprintf(
				"spec.storage.s3.region: %s is in another region than %q (%s); recreate the MetricsCluster with the bucket's region", bucket, spec.Region, code)}
		}
	}
	// A request that got no answer carries status 0.
	var status interface{ HTTPStatusCode() int }
	if errors.As(err, &status) && status.HTTPStatusCode() > 0 {
		return &Problem{Reason: ReasonMisconfigured, Message: fmt.Sprintf(
			"%s: listing %s answered HTTP %d; check that the endpoint is an S3 API (and spec.storage.s3.insecure matches its scheme)", endpointField, bucket, status.HTTPStatusCode())}
	}
	if strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
		return &Problem{Reason: ReasonMisconfigured, Message: fmt.Sprintf(
			"spec.storage.s3.insecure: the endpoint %s speaks plain HTTP, but insecure is false; recreate the MetricsCluster with insecure: true, or serve the store over HTTPS", endpoint)}
	}
	return &Problem{Reason: ReasonUnreachable, Message: fmt.Sprintf(
		"%s: cannot reach the store at %s (%s); check the address and that the store is running and reachable from the controller", endpointField, endpoint, networkCause(err))}
}

// networkCause is a short, credential-free description of a connection failure.
func networkCause(err error) string {
	var dnsErr *net.DNSError
	var opErr *net.OpError
	switch {
	case errors.As(err, &dnsErr):
		return "no such host " + dnsErr.Name
	case errors.As(err, &opErr) && opErr.Err != nil:
		return opErr.Op + ": " + opErr.Err.Error()
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("no answer within %s", Timeout)
	}
	return "connection failed"
}
