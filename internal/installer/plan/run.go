package plan

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// State is where a step is in a run.
type State int

const (
	Pending State = iota
	Observing
	Applying
	Retrying // waiting out a backoff after a retryable error
	Done
	Failed
	Skipped // not started: a dependency failed, or the run stopped
)

func (s State) String() string {
	return [...]string{"pending", "observing", "applying", "retrying", "done", "failed", "skipped"}[s]
}

// Event reports a step's progress.
type Event struct {
	Step    string
	State   State
	Action  Action        // the planned action, once planned
	Attempt int           // 1 for the first attempt
	Elapsed time.Duration // since the step started
	Delay   time.Duration // the backoff, for Retrying
	Err     error         // for Retrying and Failed
}

// Options tune Run. The zero value is usable.
type Options struct {
	// Concurrency bounds how many steps run at once; default 4.
	Concurrency int
	// Timeout bounds the whole run, retries included; default 45 minutes.
	Timeout time.Duration
	// Backoff after a retryable error: InitialBackoff doubling per attempt up to MaxBackoff (defaults 2s
	// and 1m), each delay jittered to a random value in [delay/2, delay].
	InitialBackoff, MaxBackoff time.Duration
	// Progress, if set, is called for every state change, one call at a time.
	Progress func(Event)
	// Clock defaults to the wall clock; Rand (a value in [0,1)) to math/rand/v2.
	Clock Clock
	Rand  func() float64
}

func (o Options) withDefaults() Options {
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	if o.Timeout <= 0 {
		o.Timeout = 45 * time.Minute
	}
	if o.InitialBackoff <= 0 {
		o.InitialBackoff = 2 * time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = time.Minute
	}
	if o.Clock == nil {
		o.Clock = RealClock{}
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	return o
}

// StepResult is how one step ended.
type StepResult struct {
	Name     string
	State    State // Done, Failed or Skipped
	Action   Action
	Attempts int
	Elapsed  time.Duration
	Err      error
}

// Report is the outcome of a run, the steps in dependency order.
type Report struct {
	Steps   []StepResult
	Elapsed time.Duration
}

// Run applies the steps: each once all its dependencies are done, up to opts.Concurrency at a time.
// A retryable error (see Retryable) is retried with exponential backoff and jitter, from Observe, until
// opts.Timeout. On the first error that is not retryable, or when ctx is done, no new step starts; the
// running steps finish (or see ctx done) and the rest are Skipped. The error joins every step's error.
func Run(ctx context.Context, steps []Step, opts Options) (Report, error) {
	opts = opts.withDefaults()
	ordered, err := Order(steps)
	if err != nil {
		return Report{}, err
	}
	r := &runner{opts: opts, deadline: opts.Clock.Now().Add(opts.Timeout)}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	start := opts.Clock.Now()

	position := map[string]int{}
	waiting := map[string]int{} // unfinished dependencies
	for i, s := range ordered {
		position[s.Name()] = i
		waiting[s.Name()] = len(s.DependsOn())
	}
	after := dependents(ordered)
	results := make([]StepResult, len(ordered))
	started := make([]bool, len(ordered))
	finished := make(chan StepResult)
	running, stopping := 0, false
	var errs []error

	for {
		for i, s := range ordered {
			if stopping || ctx.Err() != nil || running >= opts.Concurrency {
				break
			}
			if started[i] || waiting[s.Name()] > 0 {
				continue
			}
			started[i] = true
			running++
			go func(s Step) { finished <- r.step(ctx, s) }(s)
		}
		if running == 0 {
			break
		}
		res := <-finished
		running--
		results[position[res.Name]] = res
		if res.State == Failed {
			stopping = true
			errs = append(errs, fmt.Errorf("step %s: %w", res.Name, res.Err))
			continue
		}
		for _, d := range after[res.Name] {
			waiting[d]--
		}
	}

	for i, s := range ordered {
		if !started[i] {
			results[i] = StepResult{Name: s.Name(), State: Skipped}
			r.emit(Event{Step: s.Name(), State: Skipped})
		}
	}
	if err := ctx.Err(); err != nil && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("run stopped: %w", context.Cause(ctx)))
	}
	return Report{Steps: results, Elapsed: opts.Clock.Now().Sub(start)}, errors.Join(errs...)
}

type runner struct {
	opts     Options
	deadline time.Time
	mu       sync.Mutex // serialises Progress calls
}

func (r *runner) emit(e Event) {
	if r.opts.Progress == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.opts.Progress(e)
}

// step runs one step to the end: Observe → Plan → Apply, again from Observe after a retryable error.
func (r *runner) step(ctx context.Context, s Step) StepResult {
	start := r.opts.Clock.Now()
	res := StepResult{Name: s.Name()}
	event := func(state State, err error, delay time.Duration) {
		r.emit(Event{Step: s.Name(), State: state, Action: res.Action, Attempt: res.Attempts,
			Elapsed: r.opts.Clock.Now().Sub(start), Delay: delay, Err: err})
	}
	end := func(state State, err error) StepResult {
		res.State, res.Err, res.Elapsed = state, err, r.opts.Clock.Now().Sub(start)
		event(state, err, 0)
		return res
	}
	for {
		res.Attempts++
		event(Observing, nil, 0)
		err := r.attempt(ctx, s, &res, event)
		if err == nil {
			return end(Done, nil)
		}
		if ctx.Err() != nil {
			return end(Failed, fmt.Errorf("interrupted: %w (the next run resumes from what is observed)", err))
		}
		if !Retryable(err) {
			return end(Failed, err)
		}
		delay := r.backoff(res.Attempts)
		if r.opts.Clock.Now().Add(delay).After(r.deadline) {
			return end(Failed, fmt.Errorf("gave up after %d attempts, the run's timeout of %s is near: %w",
				res.Attempts, r.opts.Timeout, err))
		}
		event(Retrying, err, delay)
		if err := r.opts.Clock.Sleep(ctx, delay); err != nil {
			return end(Failed, fmt.Errorf("interrupted while retrying: %w", err))
		}
	}
}

func (r *runner) attempt(ctx context.Context, s Step, res *StepResult, event func(State, error, time.Duration)) error {
	obs, err := s.Observe(ctx)
	if err != nil {
		return fmt.Errorf("observe: %w", err)
	}
	change := s.Plan(obs)
	res.Action = change.Action
	if change.Action == NoOp {
		return nil
	}
	event(Applying, nil, 0)
	if err := s.Apply(ctx, change); err != nil {
		return fmt.Errorf("%s: %w", change.Action, err)
	}
	return nil
}

// backoff is the delay before the next attempt: exponential, capped, with jitter in [d/2, d].
func (r *runner) backoff(attempt int) time.Duration {
	d := r.opts.InitialBackoff
	for i := 1; i < attempt && d < r.opts.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, r.opts.MaxBackoff)
	return d/2 + time.Duration(r.opts.Rand()*float64(d/2))
}
