package upgrade

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/opstrace/opstrace/internal/manifests"
)

// Version skew policy.
//
// Engine versions (Cortex's spec.version, Loki's spec.logs.version), checked by the controller before it
// rolls out a version (CheckVersion), the same policy for both:
//   - never older than any pod runs: Cortex writes blocks, WAL segments and ring entries, Loki chunks, TSDB
//     index files, WAL segments and ring entries, that an older release may not read, so an in-place
//     downgrade can lose data;
//   - at most one minor version ahead of the oldest version any pod runs, and never a new major version:
//     Cortex supports upgrading one minor version at a time, and Loki's upgrade guide asks for sequential
//     upgrades, so each release's migrations and deprecations apply in order. Patch releases may be skipped.
//
// The controller pins one Loki version per release too (manifests.DefaultLokiVersion), and moves it the same
// way.
//
// The controller pins one Cortex version per release (manifests.DefaultCortexVersion), and each controller
// minor release moves the pin at most one Cortex minor version. That is why the CLI, which installs the
// controller, upgrades a controller at most one minor version at a time (CheckCLIControllerSkew):
//   - the CLI must not be older than the installed controller: it would downgrade the controller and its
//     CRDs, whose stored fields the older release may not know;
//   - the CLI may be at most one minor version ahead of the controller, within one major version;
//   - dev builds (any version that is not a plain release vMAJOR.MINOR.PATCH, such as "dev", a release
//     candidate or a git describe) on either side are allowed: they are for people who know what they run.
//     An empty controller version means no controller is installed yet.

// release is a plain release version vMAJOR.MINOR.PATCH.
type release struct{ major, minor, patch int }

// parseRelease parses vMAJOR.MINOR.PATCH; anything else (pre-releases, build metadata, "dev") is not a
// release.
func parseRelease(s string) (release, bool) {
	rest, ok := strings.CutPrefix(s, "v")
	if !ok {
		return release{}, false
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 3 {
		return release{}, false
	}
	var numbers [3]int
	for i, part := range parts {
		if part == "" || strings.TrimLeft(part, "0123456789") != "" || (len(part) > 1 && part[0] == '0') {
			return release{}, false
		}
		n, err := strconv.Atoi(part)
		if err != nil {
			return release{}, false
		}
		numbers[i] = n
	}
	return release{numbers[0], numbers[1], numbers[2]}, true
}

// IsRelease says whether s is a release version such as v1.21.1.
func IsRelease(s string) bool {
	_, ok := parseRelease(s)
	return ok
}

func (r release) String() string { return fmt.Sprintf("v%d.%d.%d", r.major, r.minor, r.patch) }

// compare is -1, 0 or 1 as r is older than, the same as, or newer than o.
func (r release) compare(o release) int {
	for _, d := range []int{r.major - o.major, r.minor - o.minor, r.patch - o.patch} {
		if d < 0 {
			return -1
		}
		if d > 0 {
			return 1
		}
	}
	return 0
}

// CheckEngineChange says whether Cortex may go from the running version to the desired one in place:
// Cortex.CheckChange.
func CheckEngineChange(running, desired string) error { return Cortex.CheckChange(running, desired) }

// skewFacts are what the skew policy's messages say about an engine.
type skewFacts struct {
	specField, statusField, defaultVersion, writes string
}

func (e Engine) skewFacts() skewFacts {
	if e == Loki {
		return skewFacts{"spec.logs.version", "status.logsVersion", manifests.DefaultLokiVersion,
			"chunks, TSDB index files, WAL segments or ring entries"}
	}
	return skewFacts{"spec.version", "status.version", manifests.DefaultCortexVersion,
		"blocks, WAL segments or ring entries"}
}

// CheckChange says whether the engine may go from the running version to the desired one in place. An empty
// or unparsable running version (nothing runs yet, or a custom image) is not judged.
func (e Engine) CheckChange(running, desired string) error {
	f := e.skewFacts()
	want, ok := parseRelease(desired)
	if !ok {
		return fmt.Errorf("%s version %q is not a release such as %s: set %s to a %s release, "+
			"or remove it to use the controller's default", e, desired, f.defaultVersion, f.specField, e)
	}
	have, ok := parseRelease(running)
	if !ok {
		return nil
	}
	switch {
	case want.compare(have) < 0:
		return fmt.Errorf("%s %s is older than the running %s: %s cannot be downgraded in place, because "+
			"%s may already have written %s that %s cannot read; set "+
			"%s to %s or newer (if %s is empty, %s is the default of an older controller: "+
			"upgrade the controller again, or set %s: %s)",
			e, want, have, e, have, f.writes, want, f.specField, have, f.specField, want, f.specField, have)
	case want.major != have.major:
		return fmt.Errorf("%s %s is a new major version after the running %s: upgrading across major versions "+
			"in place is not supported; keep %s at v%d.x and migrate as the %s release notes describe",
			e, want, have, f.specField, have.major, want)
	case want.minor > have.minor+1:
		return fmt.Errorf("%s %s is more than one minor version ahead of the running %s: %s is upgraded "+
			"one minor version at a time, so that each release's migrations apply in order; upgrade to "+
			"v%d.%d.x first, then to %s once %s is v%d.%d.x",
			e, want, have, e, have.major, have.minor+1, want, f.statusField, have.major, have.minor+1)
	}
	return nil
}

// RunningVersions are the oldest and the newest release of the plan's engine that a pod of the plan runs;
// empty when no pod runs a release.
func RunningVersions(state State) (oldest, newest string) {
	var lo, hi release
	found := false
	for _, name := range state.engine().Order(state.Topology) {
		c, _ := state.component(name)
		for _, p := range c.Pods {
			r, ok := parseRelease(p.Version)
			if !ok {
				continue
			}
			if !found || r.compare(lo) < 0 {
				lo = r
			}
			if !found || r.compare(hi) > 0 {
				hi = r
			}
			found = true
		}
	}
	if !found {
		return "", ""
	}
	return lo.String(), hi.String()
}

// CheckVersion applies the engine's CheckChange to every version the pods of the plan run: state.Version
// must not be older than the newest one (no pod is downgraded, also when an upgrade is changed half-way) and
// not skip a minor version after the oldest one (no pod skips one).
func CheckVersion(state State) error {
	oldest, newest := RunningVersions(state)
	if err := state.engine().CheckChange(newest, state.Version); err != nil {
		return err
	}
	return state.engine().CheckChange(oldest, state.Version)
}

// CheckCLIControllerSkew says whether the CLI of version cli may upgrade the installed controller of version
// controller to its own version (see the policy above).
func CheckCLIControllerSkew(cli, controller string) error {
	c, ok := parseRelease(cli)
	if !ok {
		return nil
	}
	installed, ok := parseRelease(controller)
	if !ok {
		return nil
	}
	switch {
	case c.compare(installed) < 0:
		return fmt.Errorf("opstrace %s is older than the installed controller %s: upgrading with it would "+
			"downgrade the controller and its CRDs; use opstrace %s or newer", c, installed, installed)
	case c.major != installed.major:
		return fmt.Errorf("opstrace %s is a new major version after the installed controller %s: upgrading "+
			"across major versions is not supported by opstrace upgrade; follow the %s release notes",
			c, installed, c)
	case c.minor > installed.minor+1:
		return fmt.Errorf("opstrace %s is more than one minor version ahead of the installed controller %s: the "+
			"controller is upgraded one minor version at a time, so that every release's CRD and Cortex "+
			"migrations run; upgrade with opstrace v%d.%d.x first, then with %s",
			c, installed, installed.major, installed.minor+1, c)
	}
	return nil
}
