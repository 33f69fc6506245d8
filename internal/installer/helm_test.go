package installer

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/release"
	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/opstrace/opstrace/charts"
	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// helmTemplate renders the embedded chart as `helm template opstrace charts/opstrace -n opstrace-system`
// does: client-only, no API server.
func helmTemplate(t *testing.T, values map[string]any) string {
	t.Helper()
	ch, err := LoadChart()
	if err != nil {
		t.Fatal(err)
	}
	install := action.NewInstall(&action.Configuration{})
	install.ReleaseName, install.Namespace = ControllerRelease, ControllerNamespace
	install.DryRun, install.ClientOnly, install.Replace, install.SkipCRDs = true, true, true, true
	install.KubeVersion = &chartutil.KubeVersion{Version: "v1.37.1", Major: "1", Minor: "37"}
	var rel *release.Release
	if rel, err = install.Run(ch, values); err != nil {
		t.Fatalf("helm template: %v", err)
	}
	return rel.Manifest
}

// The chart's templates, rendered with the default values and with the values of a cloud install, match
// the golden files (go test -run TestHelmTemplateMatchesGoldenFiles -update rewrites them).
func TestHelmTemplateMatchesGoldenFiles(t *testing.T) {
	cfg := config.Defaults(config.ProviderAWS)
	cfg.ControllerImage = "registry.example.com:5000/opstrace/opstrace-controller:v1.2.3"
	cfg.GatewayImage = "registry.example.com:5000/opstrace/opstrace-gateway:v1.2.3"
	for name, values := range map[string]map[string]any{
		"helm-template-defaults.golden": nil,
		"helm-template-cloud.golden":    controllerValues(cfg),
	} {
		got := helmTemplate(t, values)
		path := filepath.Join("testdata", name)
		if *update {
			if err := os.MkdirAll("testdata", 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test -run TestHelmTemplateMatchesGoldenFiles -update)", err)
		}
		if got != string(want) {
			t.Errorf("helm template with %s differs from %s; if the change is intended, run go test -run TestHelmTemplateMatchesGoldenFiles -update and review the diff\n%s",
				name, path, firstDifference(got, string(want)))
		}
	}
}

// firstDifference shows the first line that differs, with its number.
func firstDifference(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < max(len(g), len(w)); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return "line " + strconv.Itoa(i+1) + ":\n got: " + gl + "\nwant: " + wl
		}
	}
	return ""
}

func TestEmbeddedChartLintsClean(t *testing.T) {
	result := action.NewLint().Run([]string{filepath.Join(testenv.RepoRoot(), "charts", "opstrace")}, nil)
	for _, msg := range result.Messages {
		if msg.Severity >= 2 { // support.WarningSev and above
			t.Errorf("helm lint: %s", msg)
		}
	}
	if len(result.Errors) > 0 {
		t.Fatalf("helm lint errors: %v", result.Errors)
	}
	// The embedded copy is the chart on disk.
	ch, err := LoadChart()
	if err != nil {
		t.Fatal(err)
	}
	if err := chartutil.ValidateAgainstSchema(ch, ch.Values); err != nil {
		t.Fatal(err)
	}
	if len(ch.CRDObjects()) != 2 {
		t.Fatalf("embedded chart has %d CRDs, want MetricsCluster and Tenant", len(ch.CRDObjects()))
	}
	if _, err := charts.Opstrace.ReadFile("opstrace/files/role.yaml"); err != nil {
		t.Fatalf("embedded chart lacks the generated RBAC rules: %v", err)
	}
}

// Helm against the real API server: install, then upgrade, with the CRDs applied by the installer.
func TestInstallThenUpgradeTheController(t *testing.T) {
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := env.WriteKubeconfig(kubeconfig); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const ns = "opstrace-system"

	revision, err := InstallController(ctx, kubeconfig, ns, map[string]any{"image": map[string]any{"tag": "v0.1.0"}})
	if err != nil || revision != 1 {
		t.Fatalf("install: revision %d, %v", revision, err)
	}
	var deployment appsv1.Deployment
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "opstrace-controller"}, &deployment); err != nil {
		t.Fatal(err)
	}
	container := deployment.Spec.Template.Spec.Containers[0]
	if container.Image != "opstrace/opstrace-controller:v0.1.0" || !strings.Contains(strings.Join(container.Args, " "), "--gateway-image=opstrace/opstrace-gateway:dev") {
		t.Fatalf("controller image %q args %v", container.Image, container.Args)
	}

	var role rbacv1.ClusterRole
	if err := env.Client.Get(ctx, client.ObjectKey{Name: "opstrace-controller"}, &role); err != nil {
		t.Fatal(err)
	}
	generated, err := charts.Opstrace.ReadFile("opstrace/files/role.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var want rbacv1.ClusterRole
	if err := yaml.Unmarshal(generated, &want); err != nil {
		t.Fatal(err)
	}
	if len(role.Rules) == 0 || len(role.Rules) != len(want.Rules) {
		t.Fatalf("ClusterRole has %d rules, the generated role %d", len(role.Rules), len(want.Rules))
	}

	crd := &unstructured.Unstructured{}
	crd.SetGroupVersionKind(apiextensionsv1.SchemeGroupVersion.WithKind("CustomResourceDefinition"))
	if err := env.Client.Get(ctx, client.ObjectKey{Name: "tenants.opstrace.io"}, crd); err != nil {
		t.Fatal(err)
	}
	managers := map[string]bool{}
	for _, entry := range crd.GetManagedFields() {
		managers[entry.Manager] = true
	}
	if !managers[string(installerFieldOwner)] {
		t.Fatalf("the installer does not own the CRD's fields (managers %v): it was not server-side applied", managers)
	}

	revision, err = InstallController(ctx, kubeconfig, ns, map[string]any{"replicas": 2})
	if err != nil || revision != 2 {
		t.Fatalf("upgrade: revision %d, %v", revision, err)
	}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "opstrace-controller"}, &deployment); err != nil {
		t.Fatal(err)
	}
	if *deployment.Spec.Replicas != 2 {
		t.Fatalf("after the upgrade the controller has %d replicas, want 2", *deployment.Spec.Replicas)
	}

	// The same chart and values again: nothing to upgrade, no new revision.
	revision, err = InstallController(ctx, kubeconfig, ns, map[string]any{"replicas": 2})
	if err != nil || revision != 2 {
		t.Fatalf("upgrade with the same chart and values: revision %d, %v; want 2 (unchanged)", revision, err)
	}
	// Other values are an upgrade again.
	revision, err = InstallController(ctx, kubeconfig, ns, map[string]any{"replicas": 1})
	if err != nil || revision != 3 {
		t.Fatalf("upgrade with other values: revision %d, %v; want 3", revision, err)
	}
}
