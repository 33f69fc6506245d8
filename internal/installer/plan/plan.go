// Package plan runs the installer's steps: one step per cloud resource, each Observe → Plan → Apply.
//
// Observe finds the resource (by stored ID, else by the owned tag) and reports what exists; Plan is a pure
// function from that observation to a Change (create, update, delete or nothing, with a human diff); Apply
// makes the change idempotently. Steps name the steps they depend on; [Run] applies independent steps in
// parallel in dependency order, retries only retryable errors, and stops scheduling on the first error that
// is not.
//
// # Resuming
//
// The runner keeps no state of its own between runs. Every attempt of every step starts with Observe, so a
// run interrupted at any point (Ctrl-C, kill -9, expired credentials) is resumed by running the same steps
// again: what was applied is observed and planned as a no-op, what was half-applied is observed as it is
// and planned from there. Steps must therefore find their resources from the cloud (tags, names) and not
// from anything only the interrupted process knew.
package plan

import (
	"context"
	"fmt"
	"time"
)

// Step is one resource of the installation.
type Step interface {
	// Name is unique among the steps of a run, e.g. "aws/vpc".
	Name() string
	// DependsOn names the steps that must be done before this one.
	DependsOn() []string
	// Observe reads the resource's current state. A resource that does not exist is not an error:
	// it is Observation{Exists: false}.
	Observe(ctx context.Context) (Observation, error)
	// Plan decides what to change. It must be pure: no I/O, the same observation gives the same change.
	Plan(obs Observation) Change
	// Apply makes the change. It must be idempotent: a retry after a partial apply starts again from
	// Observe and Plan, but Apply may still find parts of its own earlier work.
	Apply(ctx context.Context, change Change) error
}

// Observation is what Observe found.
type Observation struct {
	Exists bool
	// ID is the provider's identifier of the resource when it exists, e.g. "vpc-0abc".
	ID string
	// Detail is the step's own record of what it found, for its Plan to compare with the desired state.
	Detail any
}

// Action is what a Change does.
type Action int

const (
	NoOp Action = iota
	Create
	Update
	Delete
)

func (a Action) String() string {
	switch a {
	case NoOp:
		return "no change"
	case Create:
		return "create"
	case Update:
		return "update"
	case Delete:
		return "delete"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// symbol is the one-character mark of an action in Describe.
func (a Action) symbol() string {
	switch a {
	case Create:
		return "+"
	case Update:
		return "~"
	case Delete:
		return "-"
	}
	return "="
}

// Change is the result of Plan.
type Change struct {
	Action Action
	// Diff is the human-readable change, one line per item, e.g. "cidr: 10.0.0.0/16" or
	// "lifecycle: 7 days → 30 days". Stable: no timestamps or random names.
	Diff []string
	// Desired carries what Apply needs, in the step's own type.
	Desired any
}

// NoChange is the Change of a resource that is as desired.
func NoChange() Change { return Change{Action: NoOp} }

// Clock is the runner's time: real by default, fake in tests.
type Clock interface {
	Now() time.Time
	// Sleep waits for d or until ctx is done, whichever is first, and returns ctx.Err() in the latter case.
	Sleep(ctx context.Context, d time.Duration) error
}

// RealClock is the wall clock.
type RealClock struct{}

func (RealClock) Now() time.Time { return time.Now() }

func (RealClock) Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
