package gcp

import (
	"errors"
	"net/http"
	"regexp"
	"strings"

	"cloud.google.com/go/storage"
	"github.com/googleapis/gax-go/v2/apierror"
	"google.golang.org/api/googleapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/opstrace/opstrace/internal/installer/plan"
)

// classify wraps a Google Cloud error in a plan.Error so the runner knows whether to retry. permission is
// the IAM permission the call needs (e.g. "compute.networks.create"); the error names the one Google
// reports when it reports one, else this one.
func classify(op, permission string, err error) error {
	if err == nil {
		return nil
	}
	switch kind := kindOf(err); kind {
	case plan.PermissionDenied:
		if p := deniedPermission(err); p != "" {
			permission = p
		}
		return plan.PermissionError(op, permission, err)
	case plan.Quota:
		e := plan.Errorf(plan.Quota, op, err)
		e.Hint = "raise the quota in the Google Cloud console (IAM & Admin → Quotas) or free resources, then run the command again"
		return e
	default:
		e := plan.Errorf(kind, op, err)
		if isUnauthenticated(err) {
			e.Hint = "the Google Cloud credentials are missing or expired: run `gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS) and run the command again; it resumes where it stopped"
		}
		return e
	}
}

// Reasons of googleapi errors (the JSON APIs: storage, compute).
var (
	throttledReasons = map[string]bool{"rateLimitExceeded": true, "userRateLimitExceeded": true, "RATE_LIMIT_EXCEEDED": true,
		"backendError": true}
	quotaReasons = map[string]bool{"quotaExceeded": true, "QUOTA_EXCEEDED": true, "dailyLimitExceeded": true,
		"ZONE_RESOURCE_POOL_EXHAUSTED": true, "limitExceeded": true}
	conflictReasons = map[string]bool{"resourceInUseByAnotherResource": true, "resourceNotReady": true, "conflict": true}
)

// kindOf maps a Google Cloud error to a plan.Kind: from the error's reason when it has one (403 is both
// "permission denied" and "rate limited", told apart only by the reason), then from the gRPC code or the
// HTTP status.
func kindOf(err error) plan.Kind {
	if errors.Is(err, storage.ErrBucketNotExist) || errors.Is(err, storage.ErrObjectNotExist) {
		return plan.NotFound
	}
	for _, r := range reasons(err) {
		switch {
		case throttledReasons[r]:
			return plan.Throttled
		case quotaReasons[r]:
			return plan.Quota
		case conflictReasons[r]:
			return plan.Conflict
		}
	}
	code := grpcCode(err)
	switch code {
	case codes.NotFound:
		return plan.NotFound
	case codes.AlreadyExists, codes.Aborted, codes.FailedPrecondition:
		return plan.Conflict
	case codes.PermissionDenied:
		return plan.PermissionDenied
	case codes.Unavailable:
		return plan.Throttled
	case codes.ResourceExhausted:
		if strings.Contains(strings.ToLower(err.Error()), "quota") {
			return plan.Quota
		}
		return plan.Throttled
	}
	switch httpCode(err) {
	case http.StatusNotFound:
		return plan.NotFound
	case http.StatusConflict, http.StatusPreconditionFailed:
		return plan.Conflict
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		return plan.Throttled
	case http.StatusForbidden:
		return plan.PermissionDenied
	}
	return plan.Other
}

// reasons are the error reasons Google attached: googleapi.Error items, and the ErrorInfo of gRPC errors.
func reasons(err error) []string {
	var out []string
	var g *googleapi.Error
	if errors.As(err, &g) {
		for _, e := range g.Errors {
			out = append(out, e.Reason)
		}
	}
	if a, ok := apierror.FromError(err); ok && a.Reason() != "" {
		out = append(out, a.Reason())
	}
	return out
}

func grpcCode(err error) codes.Code {
	if a, ok := apierror.FromError(err); ok && a.GRPCStatus() != nil {
		return a.GRPCStatus().Code()
	}
	if s, ok := status.FromError(err); ok {
		return s.Code()
	}
	return codes.Unknown
}

func httpCode(err error) int {
	var g *googleapi.Error
	if errors.As(err, &g) {
		return g.Code
	}
	if a, ok := apierror.FromError(err); ok {
		return a.HTTPCode()
	}
	return 0
}

// Google names the missing permission in the ErrorInfo metadata, or only in the message:
// "Permission 'container.clusters.create' denied on resource ..." (GKE, IAM), "Required
// 'compute.networks.create' permission for ..." (compute) or
// "x@y does not have storage.buckets.create access to ..." (storage).
var permissionInMessage = []*regexp.Regexp{
	regexp.MustCompile(`[Pp]ermission '([a-z]+\.[A-Za-z]+\.[A-Za-z]+)'`),
	regexp.MustCompile(`Required '([a-z]+\.[A-Za-z]+\.[A-Za-z]+)' permission`),
	regexp.MustCompile(`does not have ([a-z]+\.[A-Za-z]+\.[A-Za-z]+) access`),
	regexp.MustCompile(`[Pp]ermission "([a-z]+\.[A-Za-z]+\.[A-Za-z]+)"`),
	regexp.MustCompile(`requires? permission ([a-z]+\.[A-Za-z]+\.[A-Za-z]+)`),
}

func deniedPermission(err error) string {
	if a, ok := apierror.FromError(err); ok {
		if p := a.Metadata()["permission"]; p != "" {
			return p
		}
	}
	for _, re := range permissionInMessage {
		if m := re.FindStringSubmatch(err.Error()); m != nil {
			return m[1]
		}
	}
	return ""
}

func isUnauthenticated(err error) bool {
	return grpcCode(err) == codes.Unauthenticated || httpCode(err) == http.StatusUnauthorized
}

// isNotFound says whether err means the resource does not exist.
func isNotFound(err error) bool { return err != nil && kindOf(err) == plan.NotFound }
