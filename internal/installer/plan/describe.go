package plan

import (
	"context"
	"fmt"
	"strings"
)

// Planned is one step of a previewed plan.
type Planned struct {
	Name      string
	DependsOn []string
	// Wave is 1 for steps without dependencies, else one more than the latest wave they depend on: the
	// steps of a wave can run in parallel.
	Wave   int
	Change Change
}

// Preview observes every step, in dependency order, and plans it without applying anything: what
// `--dry-run` prints. Steps whose dependencies do not exist yet observe nothing and plan a create.
func Preview(ctx context.Context, steps []Step) ([]Planned, error) {
	ordered, err := Order(steps)
	if err != nil {
		return nil, err
	}
	wave := map[string]int{}
	out := make([]Planned, 0, len(ordered))
	for _, s := range ordered {
		w := 1
		for _, d := range s.DependsOn() {
			w = max(w, wave[d]+1)
		}
		wave[s.Name()] = w
		obs, err := s.Observe(ctx)
		if err != nil {
			return nil, fmt.Errorf("step %s: observe: %w", s.Name(), err)
		}
		out = append(out, Planned{Name: s.Name(), DependsOn: s.DependsOn(), Wave: w, Change: s.Plan(obs)})
	}
	return out, nil
}

// Describe prints a previewed plan: a summary, then the steps wave by wave (each wave's steps run in
// parallel once the previous waves are done), each with its action, what it waits for, and its diff.
func Describe(plan []Planned) string {
	var b strings.Builder
	count := map[Action]int{}
	waves := 0
	for _, p := range plan {
		count[p.Change.Action]++
		waves = max(waves, p.Wave)
	}
	fmt.Fprintf(&b, "Plan: %d steps: %d to create, %d to update, %d to delete, %d unchanged.\n",
		len(plan), count[Create], count[Update], count[Delete], count[NoOp])
	width := 0
	for _, p := range plan {
		width = max(width, len(p.Name))
	}
	for w := 1; w <= waves; w++ {
		if w == 1 {
			fmt.Fprintf(&b, "\nWave 1:\n")
		} else {
			fmt.Fprintf(&b, "\nWave %d, after wave %d:\n", w, w-1)
		}
		for _, p := range plan {
			if p.Wave != w {
				continue
			}
			line := fmt.Sprintf("  %s %-*s  %s", p.Change.Action.symbol(), width, p.Name, p.Change.Action)
			if len(p.DependsOn) > 0 {
				line = fmt.Sprintf("%-*s  after %s", width+17, line, strings.Join(p.DependsOn, ", "))
			}
			b.WriteString(strings.TrimRight(line, " ") + "\n")
			for _, d := range p.Change.Diff {
				fmt.Fprintf(&b, "        %s\n", d)
			}
		}
	}
	return b.String()
}
