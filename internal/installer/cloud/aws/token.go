package aws

import (
	"context"
	"encoding/base64"
	"fmt"
	"time"

	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// STSPresignAPI is the part of *sts.PresignClient the EKS token uses.
type STSPresignAPI interface {
	PresignGetCallerIdentity(context.Context, *sts.GetCallerIdentityInput, ...func(*sts.PresignOptions)) (*v4.PresignedHTTPRequest, error)
}

// eksTokenPrefix and the header are what EKS's authenticator (aws-iam-authenticator) expects: the token is a
// presigned STS GetCallerIdentity URL that names the cluster in a signed header, so it is good for that
// cluster only.
const (
	eksTokenPrefix   = "k8s-aws-v1."
	eksClusterHeader = "x-k8s-aws-id"
)

// EKSTokenLifetime is how long EKS accepts a token after it is made.
const EKSTokenLifetime = 15 * time.Minute

// EKSToken makes a bearer token for the EKS cluster's API server from the caller's AWS credentials, as
// `aws eks get-token` does, without running anything: the installer needs no aws CLI.
func EKSToken(ctx context.Context, api STSPresignAPI, cluster string) (string, error) {
	req, err := api.PresignGetCallerIdentity(ctx, &sts.GetCallerIdentityInput{}, func(o *sts.PresignOptions) {
		o.ClientOptions = append(o.ClientOptions, func(o *sts.Options) {
			o.APIOptions = append(o.APIOptions,
				smithyhttp.SetHeaderValue(eksClusterHeader, cluster),
				smithyhttp.SetHeaderValue("X-Amz-Expires", "60"))
		})
	})
	if err != nil {
		return "", classify("make a token for EKS cluster "+cluster, "sts:GetCallerIdentity", err)
	}
	if req.URL == "" {
		return "", fmt.Errorf("make a token for EKS cluster %s: STS presigned no URL", cluster)
	}
	return eksTokenPrefix + base64.RawURLEncoding.EncodeToString([]byte(req.URL)), nil
}
