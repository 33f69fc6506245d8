package upgrade

import (
	"strings"
	"testing"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/manifests"
)

func TestCheckEngineChange(t *testing.T) {
	for _, tc := range []struct {
		running, desired string
		wantErr          string // substring; empty means allowed
	}{
		{"", "v1.21.1", ""},
		{"v1.21.1", "v1.21.1", ""},
		{"v1.21.1", "v1.21.2", ""},
		{"v1.21.1", "v1.21.9", ""},
		{"v1.21.1", "v1.22.0", ""},
		{"v1.21.1", "v1.22.5", ""},
		{"v1.20.3", "v1.21.1", ""},
		{"custom-build", "v1.21.1", ""},
		{"v1.21.1", "v1.20.0", "Cortex v1.20.0 is older than the running v1.21.1: Cortex cannot be downgraded in place"},
		{"v1.21.1", "v1.21.0", "set spec.version to v1.21.1 or newer"},
		{"v1.20.3", "v1.22.0", "Cortex v1.22.0 is more than one minor version ahead of the running v1.20.3"},
		{"v1.20.3", "v1.22.0", "upgrade to v1.21.x first, then to v1.22.0 once status.version is v1.21.x"},
		{"v1.21.1", "v2.0.0", "new major version"},
		{"v1.21.1", "1.22.0", "is not a release"},
		{"v1.21.1", "v1.22", "is not a release"},
		{"v1.21.1", "v1.22.0-rc.0", "is not a release"},
		{"v1.21.1", "v01.22.0", "is not a release"},
	} {
		err := CheckEngineChange(tc.running, tc.desired)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%s → %s: unexpected error %v", tc.running, tc.desired, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s → %s: error %v, want one containing %q", tc.running, tc.desired, err, tc.wantErr)
		}
	}
}

func TestCheckVersionUsesEveryRunningVersion(t *testing.T) {
	// Half-way from v1.21.1 to v1.22.0: ingester 2 runs v1.22.0, everything else v1.21.1.
	s := allButIngestersAtDesired(desire(clusterAt(v1alpha1.TopologyMicroservices, "v1.21.1", 3), "v1.22.0"))
	ing := componentPtr(&s, manifests.ComponentIngester)
	ing.Pods[2].Version = "v1.22.0"
	ing.Pods[1].Version = "v1.21.1"
	ing.Pods[0].Version = "v1.21.1"
	if oldest, newest := RunningVersions(s); oldest != "v1.21.1" || newest != "v1.22.0" {
		t.Fatalf("RunningVersions %s %s", oldest, newest)
	}
	for _, tc := range []struct {
		desired, wantErr string
	}{
		{"v1.22.0", ""},
		{"v1.22.1", ""},
		{"v1.21.1", "older than the running v1.22.0"},                           // back to where it came from: downgrades ingester 2
		{"v1.23.0", "more than one minor version ahead of the running v1.21.1"}, // skips v1.22 for ingesters 0 and 1
	} {
		s.Version = tc.desired
		err := CheckVersion(s)
		if (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%s: error %v, want %q", tc.desired, err, tc.wantErr)
		}
	}
	if o, n := RunningVersions(State{Topology: v1alpha1.TopologySingle}); o != "" || n != "" {
		t.Errorf("no pods: %q %q", o, n)
	}
}

func TestCheckCLIControllerSkew(t *testing.T) {
	for _, tc := range []struct {
		cli, controller string
		wantErr         string
	}{
		{"v0.4.1", "", ""},    // nothing installed
		{"dev", "v0.4.1", ""}, // dev CLI
		{"v0.5.0", "dev", ""}, // dev controller
		{"v0.5.0-rc.1", "v0.3.0", ""},
		{"v0.4.1", "v0.4.1", ""},
		{"v0.4.2", "v0.4.1", ""},
		{"v0.5.0", "v0.4.1", ""},
		{"v0.5.3", "v0.4.0", ""},
		{"v0.4.0", "v0.4.1", "opstrace v0.4.0 is older than the installed controller v0.4.1"},
		{"v0.3.9", "v0.4.1", "use opstrace v0.4.1 or newer"},
		{"v0.6.0", "v0.4.1", "opstrace v0.6.0 is more than one minor version ahead of the installed controller v0.4.1"},
		{"v0.6.0", "v0.4.1", "upgrade with opstrace v0.5.x first, then with v0.6.0"},
		{"v1.0.0", "v0.9.0", "new major version"},
	} {
		err := CheckCLIControllerSkew(tc.cli, tc.controller)
		if (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("cli %s, controller %s: error %v, want %q", tc.cli, tc.controller, err, tc.wantErr)
		}
	}
}

func TestParseRelease(t *testing.T) {
	for in, want := range map[string]bool{
		"v1.21.1": true, "v0.0.0": true, "v10.200.3000": true,
		"1.21.1": false, "v1.21": false, "v1.21.1.0": false, "v1.21.x": false, "v1.-1.0": false,
		"v1.21.1-rc.0": false, "v1.21.1+build": false, "dev": false, "": false, "v1.021.1": false,
	} {
		if _, ok := parseRelease(in); ok != want {
			t.Errorf("parseRelease(%q) ok=%v, want %v", in, ok, want)
		}
	}
	if _, ok := parseRelease(manifests.DefaultCortexVersion); !ok {
		t.Errorf("the pinned default %s is not a release", manifests.DefaultCortexVersion)
	}
}

// Loki's version is held to the same policy by the same function, with Loki's names and fields.
func TestCheckLokiChange(t *testing.T) {
	for _, tc := range []struct {
		running, desired string
		wantErr          string // the whole message; empty means allowed
	}{
		{"", "v3.7.8", ""},
		{"v3.7.8", "v3.7.8", ""},
		{"v3.7.8", "v3.7.9", ""},
		{"v3.7.8", "v3.8.2", ""},
		{"v3.7.8", "v3.7.7", "Loki v3.7.7 is older than the running v3.7.8: Loki cannot be downgraded in place, because " +
			"v3.7.8 may already have written chunks, TSDB index files, WAL segments or ring entries that v3.7.7 cannot read; " +
			"set spec.logs.version to v3.7.8 or newer (if spec.logs.version is empty, v3.7.7 is the default of an older " +
			"controller: upgrade the controller again, or set spec.logs.version: v3.7.8)"},
		{"v3.6.0", "v3.8.0", "Loki v3.8.0 is more than one minor version ahead of the running v3.6.0: Loki is upgraded " +
			"one minor version at a time, so that each release's migrations apply in order; upgrade to v3.7.x first, " +
			"then to v3.8.0 once status.logsVersion is v3.7.x"},
		{"v3.7.8", "v4.0.0", "Loki v4.0.0 is a new major version after the running v3.7.8: upgrading across major " +
			"versions in place is not supported; keep spec.logs.version at v3.x and migrate as the v4.0.0 release notes describe"},
		{"v3.7.8", "3.7.9", `Loki version "3.7.9" is not a release such as ` + manifests.DefaultLokiVersion +
			": set spec.logs.version to a Loki release, or remove it to use the controller's default"},
	} {
		err := Loki.CheckChange(tc.running, tc.desired)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tc.wantErr {
			t.Errorf("%s → %s:\n got %q\nwant %q", tc.running, tc.desired, got, tc.wantErr)
		}
	}
	// A Loki plan half-way: going back to where it came from downgrades the replaced ingester.
	s := lokiIngesterState(func(s *State, ing *Component) {
		ing.Pods[2].Revision, ing.Pods[2].Version = ing.DesiredRevision, lokiTo
	})
	s.Version = lokiFrom
	if err := CheckVersion(s); err == nil || !strings.Contains(err.Error(), "Loki v3.7.8 is older than the running v3.8.0") {
		t.Errorf("Loki back to %s half-way: %v", lokiFrom, err)
	}
	if _, ok := parseRelease(manifests.DefaultLokiVersion); !ok {
		t.Errorf("the pinned default %s is not a release", manifests.DefaultLokiVersion)
	}
}
