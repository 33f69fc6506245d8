package plan

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Order checks the step graph and returns the steps in dependency order: every step after the steps it
// depends on, ties kept in the given order. Duplicate names, unknown dependencies and cycles are errors.
func Order(steps []Step) ([]Step, error) {
	index := map[string]int{}
	for i, s := range steps {
		if _, dup := index[s.Name()]; dup {
			return nil, fmt.Errorf("plan: two steps are named %q", s.Name())
		}
		index[s.Name()] = i
	}
	var problems []string
	for _, s := range steps {
		for _, d := range s.DependsOn() {
			if _, ok := index[d]; !ok {
				problems = append(problems, fmt.Sprintf("step %q depends on unknown step %q", s.Name(), d))
			}
		}
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("plan: %s", strings.Join(problems, "; "))
	}

	done := make([]bool, len(steps))
	var out []Step
	for len(out) < len(steps) {
		progressed := false
		for i, s := range steps {
			if done[i] || !depsDone(s, index, done) {
				continue
			}
			done[i] = true
			out = append(out, s)
			progressed = true
			break // restart from the top so ties keep the given order
		}
		if !progressed {
			return nil, fmt.Errorf("plan: dependency cycle: %s", findCycle(steps, index, done))
		}
	}
	return out, nil
}

func depsDone(s Step, index map[string]int, done []bool) bool {
	for _, d := range s.DependsOn() {
		if !done[index[d]] {
			return false
		}
	}
	return true
}

// findCycle returns a cycle among the steps not done, as "a → b → a".
func findCycle(steps []Step, index map[string]int, done []bool) string {
	start := 0
	for done[start] {
		start++
	}
	// Follow undone dependencies until a step repeats; every undone step has one.
	seen := map[int]int{}
	var path []string
	for i := start; ; {
		if at, ok := seen[i]; ok {
			return strings.Join(append(path[at:], steps[i].Name()), " → ")
		}
		seen[i] = len(path)
		path = append(path, steps[i].Name())
		for _, d := range steps[i].DependsOn() {
			if !done[index[d]] {
				i = index[d]
				break
			}
		}
	}
}

// dependents maps each step name to the steps that depend on it.
func dependents(steps []Step) map[string][]string {
	out := map[string][]string{}
	for _, s := range steps {
		for _, d := range s.DependsOn() {
			out[d] = append(out[d], s.Name())
		}
	}
	return out
}

// Reverse returns the steps for destroy: the same steps with the dependencies turned around (a step runs
// after every step that depended on it), in reverse dependency order, each planning to delete what it
// observes. A step that needs its own delete plan implements Destroyer.
func Reverse(steps []Step) ([]Step, error) {
	ordered, err := Order(steps)
	if err != nil {
		return nil, err
	}
	deps := dependents(ordered)
	out := make([]Step, 0, len(ordered))
	for i := len(ordered) - 1; i >= 0; i-- {
		s := ordered[i]
		out = append(out, reversed{Step: s, deps: deps[s.Name()]})
	}
	return out, nil
}

// Destroyer is implemented by steps whose delete needs more than "delete it if it exists", e.g. emptying
// a bucket first. PlanDestroy must be pure, like Plan.
type Destroyer interface {
	PlanDestroy(obs Observation) Change
}

type reversed struct {
	Step
	deps []string
}

func (r reversed) DependsOn() []string { return r.deps }

func (r reversed) Plan(obs Observation) Change {
	if d, ok := r.Step.(Destroyer); ok {
		return d.PlanDestroy(obs)
	}
	if !obs.Exists {
		return NoChange()
	}
	id := obs.ID
	if id == "" {
		id = r.Name()
	}
	return Change{Action: Delete, Diff: []string{"delete " + id}}
}

func (r reversed) Apply(ctx context.Context, c Change) error { return r.Step.Apply(ctx, c) }

// CriticalPath returns the longest chain of dependent steps by duration, and its total: the least time
// a run with unbounded parallelism takes. Steps missing from durations count as zero.
func CriticalPath(steps []Step, durations map[string]time.Duration) ([]string, time.Duration, error) {
	ordered, err := Order(steps)
	if err != nil {
		return nil, 0, err
	}
	finish := map[string]time.Duration{} // earliest finish of each step
	via := map[string]string{}           // the dependency that finishes last
	var last string
	for _, s := range ordered {
		var start time.Duration
		for _, d := range s.DependsOn() {
			if via[s.Name()] == "" || finish[d] > start {
				start, via[s.Name()] = finish[d], d
			}
		}
		finish[s.Name()] = start + durations[s.Name()]
		if last == "" || finish[s.Name()] > finish[last] {
			last = s.Name()
		}
	}
	var path []string
	for n := last; n != ""; n = via[n] {
		path = append([]string{n}, path...)
	}
	return path, finish[last], nil
}
