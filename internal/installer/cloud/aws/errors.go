package aws

import (
	"errors"
	"net/http"
	"strings"

	smithy "github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

// classify wraps an SDK error in a plan.Error so the runner knows whether to retry. permission is the IAM
// action of the call (e.g. "ec2:CreateVpc"), named when the call is denied.
func classify(op, permission string, err error) error {
	if err == nil {
		return nil
	}
	switch kind := kindOf(err); kind {
	case plan.PermissionDenied:
		return plan.PermissionError(op, permission, err)
	case plan.Quota:
		e := plan.Errorf(plan.Quota, op, err)
		e.Hint = "raise the quota in the AWS console (Service Quotas) or free resources, then run the command again"
		return e
	default:
		e := plan.Errorf(kind, op, err)
		if isExpiredCredentials(err) {
			e.Hint = "the AWS credentials expired: refresh them (aws sso login, new session token) and run the command again; it resumes where it stopped"
		}
		return e
	}
}

// kindOf maps AWS error codes (and HTTP status codes when no code is known) to a plan.Kind.
func kindOf(err error) plan.Kind {
	var api smithy.APIError
	if errors.As(err, &api) {
		code := api.ErrorCode()
		switch code {
		case "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
			"SlowDown", "RequestThrottled", "RequestThrottledException", "PriorRequestNotComplete":
			return plan.Throttled
		case "AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedAccess",
			"AuthorizationError", "Forbidden":
			return plan.PermissionDenied
		case "NoSuchBucket", "NoSuchEntity", "NotFound", "ResourceNotFoundException", "NoSuchTagSet", "NoSuchHostedZone", "NoSuchChange", "LoadBalancerNotFound",
			"NoSuchLifecycleConfiguration", "ServerSideEncryptionConfigurationNotFoundError",
			"NoSuchPublicAccessBlockConfiguration":
			return plan.NotFound
		case "DependencyViolation", "ResourceInUseException", "IncorrectState", "OperationAborted",
			"ConcurrentModification", "ConcurrentModificationException", "IncorrectInstanceState",
			"InvalidRouteTableID.NotFound",
			// Route 53: a change batch whose CREATE or exact DELETE no longer matches the records.
			"InvalidChangeBatch":
			return plan.Conflict
		case "BucketAlreadyExists":
			return plan.NotOwned
		}
		switch {
		case strings.HasSuffix(code, "LimitExceeded") || strings.HasSuffix(code, "LimitExceededException") ||
			code == "ServiceQuotaExceededException" || code == "ResourceLimitExceededException":
			return plan.Quota
		case strings.HasSuffix(code, ".NotFound"):
			return plan.NotFound
		}
	}
	var resp *smithyhttp.ResponseError
	if errors.As(err, &resp) {
		switch resp.HTTPStatusCode() {
		case http.StatusTooManyRequests, http.StatusServiceUnavailable:
			return plan.Throttled
		case http.StatusForbidden:
			return plan.PermissionDenied
		case http.StatusNotFound:
			return plan.NotFound
		case http.StatusConflict:
			return plan.Conflict
		}
	}
	return plan.Other
}

func isExpiredCredentials(err error) bool {
	var api smithy.APIError
	if !errors.As(err, &api) {
		return false
	}
	switch api.ErrorCode() {
	case "ExpiredToken", "ExpiredTokenException", "RequestExpired", "InvalidClientTokenId", "TokenRefreshRequired":
		return true
	}
	return false
}

// isNotFound says whether err means the resource does not exist.
func isNotFound(err error) bool { return err != nil && kindOf(err) == plan.NotFound }

// tagged reports whether the tags carry the owned tag for cluster. get maps a tag to its key and value.
func ownedBy[T any](tags []T, cluster string, get func(T) (string, string)) bool {
	for _, t := range tags {
		if k, v := get(t); k == cloud.OwnerTag && v == cluster {
			return true
		}
	}
	return false
}
