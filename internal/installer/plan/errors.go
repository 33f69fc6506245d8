package plan

import (
	"context"
	"errors"
	"fmt"
)

// Kind classifies a cloud error by what the runner should do about it.
type Kind int

const (
	// Other is anything unclassified: not retried.
	Other Kind = iota
	// NotFound: something the call needs is not there (yet). Retried: cloud APIs are eventually consistent,
	// e.g. an IAM role just created is not yet visible to EKS.
	NotFound
	// Conflict: the resource is busy or changed underneath (an operation in progress, a precondition
	// failed). Retried: the next attempt observes again.
	Conflict
	// Throttled: rate limited. Retried.
	Throttled
	// PermissionDenied: the credentials lack a permission. Not retried; the error names the permission.
	PermissionDenied
	// Quota: an account limit is reached. Not retried; the user must raise the quota or free resources.
	Quota
	// NotOwned: a resource with the expected name exists but does not carry this cluster's owned tag.
	// Not retried, and never touched; the error says how to fix it.
	NotOwned
)

func (k Kind) String() string {
	switch k {
	case NotFound:
		return "not found"
	case Conflict:
		return "conflict"
	case Throttled:
		return "throttled"
	case PermissionDenied:
		return "permission denied"
	case Quota:
		return "quota exceeded"
	case NotOwned:
		return "not owned by this cluster"
	}
	return "error"
}

// Retryable says whether an error of this kind may go away by itself.
func (k Kind) Retryable() bool { return k == NotFound || k == Conflict || k == Throttled }

// Error is a classified error. Steps wrap their SDK errors in one (see the constructors) so that the runner
// can decide to retry without knowing any SDK.
type Error struct {
	Kind Kind
	// Op is what was being done, e.g. "create VPC opstrace-prod".
	Op string
	// Permission is the missing permission of a PermissionDenied error, e.g. "eks:CreateCluster".
	Permission string
	// Hint says how to fix a user-fixable error (PermissionDenied, Quota, NotOwned).
	Hint string
	Err  error
}

func (e *Error) Error() string {
	msg := e.Op + ": " + e.Kind.String()
	if e.Kind == PermissionDenied {
		if e.Permission != "" {
			msg += ": missing permission " + e.Permission
		} else {
			msg += ": the provider did not name the missing permission"
		}
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	if e.Hint != "" {
		msg += " (" + e.Hint + ")"
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf builds a classified error.
func Errorf(kind Kind, op string, err error) *Error { return &Error{Kind: kind, Op: op, Err: err} }

// PermissionError is a PermissionDenied error naming the missing permission.
func PermissionError(op, permission string, err error) *Error {
	return &Error{Kind: PermissionDenied, Op: op, Permission: permission, Err: err,
		Hint: "grant " + permission + " to the credentials running opstrace, then run the command again"}
}

// NotOwnedError refuses to touch a look-alike resource that lacks the owned tag.
func NotOwnedError(op, resource, tag string) *Error {
	return &Error{Kind: NotOwned, Op: op, Err: fmt.Errorf("%s exists but is not tagged %s", resource, tag),
		Hint: "opstrace never changes resources it did not create: delete or rename " + resource +
			", or choose another cluster name"}
}

// Classify returns the kind of err: the Kind of the first *Error in its chain, else Other.
func Classify(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return Other
}

// Retryable says whether the runner retries err. Cancellation and deadlines are never retried.
func Retryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	return Classify(err).Retryable()
}
