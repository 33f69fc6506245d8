// Package testenv starts a real kube-apiserver and etcd (controller-runtime envtest) with the project's CRDs
// installed, for tests whose behaviour the API server owns: validation, defaulting, server-side apply.
//
// The binaries come from bin/ (or KUBEBUILDER_ASSETS), where `make test-tools` links the ones it built from
// the Go module proxy; setup-envtest cannot be used because it downloads from the internet.
package testenv

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	apiruntime "k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	opstracev1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
)

// Env is a running control plane with a client that knows the project's types.
type Env struct {
	Config *rest.Config
	Client client.Client
	Scheme *apiruntime.Scheme

	environment *envtest.Environment
}

// RepoRoot is the directory holding go.mod, found from this source file so tests work from any package.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// ThirdPartyCRDs are the cert-manager and prometheus-operator CRDs that `make test-tools` links into bin/
// from those projects' Go modules.
func ThirdPartyCRDs() []string {
	bin := filepath.Join(RepoRoot(), "bin")
	return []string{filepath.Join(bin, "cert-manager-crds"), filepath.Join(bin, "prometheus-operator-crds")}
}

// Start starts etcd and kube-apiserver on 127.0.0.1 and installs the CRDs from config/crd/bases and from
// extraCRDDirs.
func Start(extraCRDDirs ...string) (*Env, error) {
	root := RepoRoot()
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = filepath.Join(root, "bin")
	}
	for _, name := range []string{"kube-apiserver", "etcd", "kubectl"} {
		if _, err := os.Stat(filepath.Join(assets, name)); err != nil {
			return nil, fmt.Errorf("%s not found in %s: run `make test-tools` once (it builds kube-apiserver, etcd "+
				"and kubectl from the Go module proxy), or run the tests with `make test`", name, assets)
		}
	}

	for _, dir := range extraCRDDirs {
		if _, err := os.Stat(dir); err != nil {
			return nil, fmt.Errorf("CRDs not found in %s: run `make test-tools` once", dir)
		}
	}

	scheme := apiruntime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(opstracev1alpha1.AddToScheme(scheme))

	environment := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     append([]string{filepath.Join(root, "config", "crd", "bases")}, extraCRDDirs...),
		ErrorIfCRDPathMissing: true,
		Scheme:                scheme,
	}
	cfg, err := environment.Start()
	if err != nil {
		return nil, fmt.Errorf("start kube-apiserver and etcd from %s: %w", assets, err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("create client: %w", err), environment.Stop())
	}
	return &Env{Config: cfg, Client: c, Scheme: scheme, environment: environment}, nil
}

// Stop stops kube-apiserver and etcd and removes their data.
func (e *Env) Stop() error {
	return e.environment.Stop()
}

// Kubectl runs the real kubectl against the control plane and returns its combined output.
func (e *Env) Kubectl(args ...string) (string, error) {
	stdout, stderr, err := e.environment.ControlPlane.KubeCtl().Run(args...)
	var out strings.Builder
	for _, r := range []io.Reader{stdout, stderr} {
		if r != nil {
			_, _ = io.Copy(&out, r)
		}
	}
	return out.String(), err
}

// WriteKubeconfig writes a kubeconfig of a cluster administrator (group system:masters) to path, for tools
// that take a kubeconfig file, such as Helm.
func (e *Env) WriteKubeconfig(path string) error {
	user, err := e.environment.AddUser(envtest.User{Name: "test-admin", Groups: []string{"system:masters"}}, e.Config)
	if err != nil {
		return fmt.Errorf("add admin user: %w", err)
	}
	data, err := user.KubeConfig()
	if err != nil {
		return fmt.Errorf("admin kubeconfig: %w", err)
	}
	return os.WriteFile(path, data, 0o600)
}
