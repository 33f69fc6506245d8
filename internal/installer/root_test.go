package installer

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/opstrace/opstrace/internal/version"
)

func TestVersionCommandPrintsTheBuildVersion(t *testing.T) {
	root := NewRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs([]string{"version"})
	if err := root.Execute(); err != nil {
		t.Fatalf("opstrace version: %v", err)
	}
	if want := "opstrace " + version.Version + "\n"; out.String() != want {
		t.Fatalf("opstrace version printed %q, want %q", out.String(), want)
	}
}

func TestUnknownCommandIsAnError(t *testing.T) {
	root := NewRootCommand()
	root.SetOut(&bytes.Buffer{})
	root.SetErr(&bytes.Buffer{})
	root.SetArgs([]string{"crate", "local"})
	err := root.Execute()
	if err == nil {
		t.Fatal("opstrace crate local succeeded, want an unknown command error")
	}
	if !bytes.Contains([]byte(err.Error()), []byte(`unknown command "crate"`)) {
		t.Fatalf("error %q does not name the unknown command", err)
	}
}

func TestTokenFilesAreReadableOnlyByTheirOwner(t *testing.T) {
	path := filepath.Join(t.TempDir(), "default.token")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeSecretFile(path, []byte("token\n")); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %o, want 600", info.Mode().Perm())
	}
	if data, _ := os.ReadFile(path); string(data) != "token\n" {
		t.Fatalf("token file holds %q", data)
	}
}

func TestImageTag(t *testing.T) {
	for image, want := range map[string]string{
		"opstrace/opstrace-controller:dev":       "dev",
		"cortexproject/cortex:v1.21.1":           "v1.21.1",
		"registry.local:5000/opstrace/gateway":   "latest",
		"registry.local:5000/opstrace/gw:v0.2.0": "v0.2.0",
	} {
		if got := imageTag(image); got != want {
			t.Errorf("imageTag(%q) = %q, want %q", image, got, want)
		}
	}
}
