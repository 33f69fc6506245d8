package installer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/release"
	"helm.sh/helm/v3/pkg/storage/driver"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/opstrace/opstrace/charts"
)

// ControllerRelease is the Helm release name of the controller in every install.
const ControllerRelease = "opstrace"

// installerFieldOwner owns the CRDs the installer applies.
const installerFieldOwner = client.FieldOwner("opstrace-installer")

// LoadChart reads the chart embedded in this binary.
func LoadChart() (*chart.Chart, error) {
	var files []*loader.BufferedFile
	err := fs.WalkDir(charts.Opstrace, "opstrace", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := charts.Opstrace.ReadFile(path)
		if err != nil {
			return err
		}
		files = append(files, &loader.BufferedFile{Name: strings.TrimPrefix(path, "opstrace/"), Data: data})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read embedded chart: %w", err)
	}
	return loader.LoadFiles(files)
}

// InstallController applies the chart's CRDs with server-side apply, waits until the API server serves them,
// then installs the controller's Helm release, or upgrades it when it exists. Helm itself installs CRDs only
// on the first install and never upgrades them, which would leave an upgraded controller on old schemas.
// It returns the release's revision.
func InstallController(ctx context.Context, kubeconfig, namespace string, values map[string]any) (int, error) {
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig = &kubeconfig
	flags.Namespace = &namespace
	restConfig, err := flags.ToRESTConfig()
	if err != nil {
		return 0, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	ch, err := LoadChart()
	if err != nil {
		return 0, err
	}
	if err := ApplyCRDs(ctx, restConfig, ch); err != nil {
		return 0, err
	}

	cfg := new(action.Configuration)
	if err := cfg.Init(flags, namespace, "secret", func(string, ...any) {}); err != nil {
		return 0, fmt.Errorf("helm: %w", err)
	}
	var rel *release.Release
	// Get is the highest revision; History would be in the storage's order (v1, v10, v2, ...).
	if latest, err := action.NewGet(cfg).Run(ControllerRelease); errors.Is(err, driver.ErrReleaseNotFound) {
		install := action.NewInstall(cfg)
		install.ReleaseName, install.Namespace = ControllerRelease, namespace
		install.CreateNamespace, install.SkipCRDs = true, true
		rel, err = install.RunWithContext(ctx, ch, values)
		if err != nil {
			return 0, fmt.Errorf("helm install %s: %w", ControllerRelease, err)
		}
	} else if err != nil {
		return 0, fmt.Errorf("read Helm release %s: %w", ControllerRelease, err)
	} else if sameRelease(latest, ch, values) {
		// Nothing to change: a new revision would only make the history longer.
		return latest.Version, nil
	} else {
		upgrade := action.NewUpgrade(cfg)
		upgrade.Namespace, upgrade.SkipCRDs = namespace, true
		rel, err = upgrade.RunWithContext(ctx, ControllerRelease, ch, values)
		if err != nil {
			return 0, fmt.Errorf("helm upgrade %s: %w", ControllerRelease, err)
		}
	}
	return rel.Version, nil
}

// sameRelease says whether rel is deployed with the chart ch and the values.
func sameRelease(rel *release.Release, ch *chart.Chart, values map[string]any) bool {
	if rel.Info == nil || rel.Info.Status != release.StatusDeployed || rel.Chart == nil || chartDigest(rel.Chart) != chartDigest(ch) {
		return false
	}
	deployed, err1 := json.Marshal(rel.Config)
	wanted, err2 := json.Marshal(values)
	return err1 == nil && err2 == nil && bytes.Equal(deployed, wanted)
}

// ApplyCRDs server-side applies the chart's CRDs and waits until each is Established.
func ApplyCRDs(ctx context.Context, restConfig *rest.Config, ch *chart.Chart) error {
	c, err := client.New(restConfig, client.Options{})
	if err != nil {
		return err
	}
	var names []string
	for _, file := range ch.CRDObjects() {
		decoder := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(file.File.Data), 4096)
		for {
			crd := &unstructured.Unstructured{}
			if err := decoder.Decode(&crd.Object); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return fmt.Errorf("chart CRD %s: %w", file.Name, err)
			}
			if len(crd.Object) == 0 {
				continue
			}
			if err := c.Patch(ctx, crd, client.Apply, installerFieldOwner, client.ForceOwnership); err != nil {
				return fmt.Errorf("apply CRD %s: %w", crd.GetName(), err)
			}
			names = append(names, crd.GetName())
		}
	}
	for _, name := range names {
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			crd := &unstructured.Unstructured{}
			crd.SetGroupVersionKind(apiextensionsv1.SchemeGroupVersion.WithKind("CustomResourceDefinition"))
			if err := c.Get(ctx, client.ObjectKey{Name: name}, crd); err != nil {
				return false, nil
			}
			conditions, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, raw := range conditions {
				condition, _ := raw.(map[string]any)
				if condition["type"] == "Established" && condition["status"] == "True" {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			return fmt.Errorf("CRD %s was not established within a minute: %w", name, err)
		}
	}
	return nil
}
