package installer

// cert-manager in a cloud cluster whose cert_issuer is Let's Encrypt (certManagerStep): its Helm release,
// pinned, with the cloud identity of its service account, and the ACME ClusterIssuer that answers Let's
// Encrypt's DNS01 challenges in the gateway's DNS zone. The MetricsCluster then names that issuer in
// spec.gateway.tls.issuerRef: the gateway's certificate for metrics.DOMAIN is publicly trusted, while the
// components' mutual TLS stays on the controller's own CA (Let's Encrypt cannot sign *.svc names).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/registry"
	"helm.sh/helm/v3/pkg/storage/driver"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/installer/plan"
	"github.com/opstrace/opstrace/internal/manifests"
)

// CertManagerVersion is the cert-manager release a cloud install runs. Keep it in step with
// CERT_MANAGER_VERSION of the Makefile: the controller's tests install the CRDs of that version.
const CertManagerVersion = "v1.21.2"

const (
	// CertManagerRelease is the Helm release of cert-manager, in namespace cloud.CertManagerNamespace.
	CertManagerRelease = "cert-manager"
	// certManagerChart is where Jetstack publishes the chart.
	certManagerChart    = "oci://quay.io/jetstack/charts/cert-manager"
	certManagerStepName = "kubernetes/cert-manager"

	acmeProduction = "https://acme-v02.api.letsencrypt.org/directory"
	acmeStaging    = "https://acme-staging-v02.api.letsencrypt.org/directory"
)

// letsEncrypt says whether the config's certificates come from Let's Encrypt (and so need cert-manager).
func letsEncrypt(cfg config.Config) bool {
	return cfg.DNS != nil && (cfg.CertIssuer == config.CertIssuerLetsEncryptProd || cfg.CertIssuer == config.CertIssuerLetsEncryptStaging)
}

// certIssuerName is the ClusterIssuer of a Let's Encrypt cert_issuer: one per ACME server, so that
// switching between staging and production never reuses an account key with the other server.
func certIssuerName(cfg config.Config) string { return "opstrace-" + cfg.CertIssuer }

// gatewayIssuer is spec.gateway.tls.issuerRef of a cloud install's MetricsCluster; nil for self-signed.
func gatewayIssuer(cfg config.Config) *v1alpha1.GatewayTLSSpec {
	if !letsEncrypt(cfg) {
		return nil
	}
	return &v1alpha1.GatewayTLSSpec{IssuerRef: &v1alpha1.IssuerReference{Name: certIssuerName(cfg), Kind: "ClusterIssuer", Group: "cert-manager.io"}}
}

// chartSource loads a chart by version. The real one pulls cert-manager's chart from its OCI registry; tests
// load a local chart.
type chartSource interface {
	Load(version string) (*chart.Chart, error)
}

// ociChart pulls a chart from an OCI registry with the credentials Helm uses (helm registry login).
type ociChart struct{ ref string }

func (o ociChart) Load(version string) (*chart.Chart, error) {
	c, err := registry.NewClient()
	if err != nil {
		return nil, fmt.Errorf("helm registry client: %w", err)
	}
	res, err := c.Pull(o.ref+":"+version, registry.PullOptWithChart(true))
	if err != nil {
		return nil, fmt.Errorf("pull the chart %s:%s (the Let's Encrypt certificates of cert_issuer need cert-manager; this machine must reach %s): %w",
			o.ref, version, strings.Split(strings.TrimPrefix(o.ref, "oci://"), "/")[0], err)
	}
	return loader.LoadArchive(bytes.NewReader(res.Chart.Data))
}

// certManagerSetup is what the cloud gives cert-manager: the identity of its service account, and the
// ClusterIssuer's DNS01 solver for the gateway's zone (cert-manager's "route53" or "cloudDNS" block, with
// ambient credentials: that identity).
type certManagerSetup struct {
	ServiceAccountAnnotations map[string]string
	Solver                    map[string]any
}

// certManagerValues are the Helm values of cert-manager's release: its CRDs installed and kept by the
// chart, and its service account's cloud identity. Everything else is the chart's default.
func certManagerValues(setup certManagerSetup) map[string]any {
	// Helm merges only map[string]any into the chart's values.
	annotations := map[string]any{}
	for k, v := range setup.ServiceAccountAnnotations {
		annotations[k] = v
	}
	return map[string]any{
		"crds":           map[string]any{"enabled": true, "keep": true},
		"serviceAccount": map[string]any{"annotations": annotations},
	}
}

// BuildClusterIssuer is the ACME ClusterIssuer of cfg's Let's Encrypt server, answering DNS01 challenges
// for the gateway's name only with solver, annotated with the hash of its content. Pure.
func BuildClusterIssuer(cfg config.Config, solver map[string]any) *unstructured.Unstructured {
	server := acmeProduction
	if cfg.CertIssuer == config.CertIssuerLetsEncryptStaging {
		server = acmeStaging
	}
	name := certIssuerName(cfg)
	issuer := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cert-manager.io/v1",
		"kind":       "ClusterIssuer",
		"metadata":   map[string]any{"name": name},
		"spec": map[string]any{"acme": map[string]any{
			"server": server,
			// The ACME account's key, which cert-manager makes in its own namespace.
			"privateKeySecretRef": map[string]any{"name": name + "-account"},
			"solvers": []any{map[string]any{
				"selector": map[string]any{"dnsNames": []any{cloud.GatewayHostname(cfg.DNS.Domain)}},
				"dns01":    solver,
			}},
		}},
	}}
	issuer.SetAnnotations(map[string]string{installerHashAnnotation: contentHash(issuer.Object)})
	return issuer
}

// certManagerStep installs cert-manager (CertManagerVersion) with Helm and applies the ClusterIssuer.
// Destroy leaves both to the cluster's deletion: cert-manager makes no cloud resource that outlives it,
// except a DNS01 challenge TXT record while a challenge is under way.
type certManagerStep struct {
	deps    []string
	connect func(ctx context.Context) (*rest.Config, error)
	cfg     config.Config
	// setup is what the cloud gives cert-manager; plan.NotFound while that does not exist yet.
	setup  func(ctx context.Context) (certManagerSetup, error)
	charts chartSource
	// wait is how long Helm waits for cert-manager's Deployments to be ready (its webhook must answer
	// before the API server accepts the ClusterIssuer); 0 does not wait (envtest runs no pods).
	wait time.Duration
	out  io.Writer
}

type certManagerState struct {
	// Absent says why there is no cluster (or no identity) to install into yet.
	Absent string
	// Unreachable is why the API server could not be used ("" when it could).
	Unreachable string
	// Release is "" when the Helm release is as desired, else what differs.
	Release string
	// Issuer is false while the ClusterIssuer is missing or differs.
	Issuer bool
}

func (s *certManagerStep) Name() string        { return certManagerStepName }
func (s *certManagerStep) DependsOn() []string { return s.deps }

func (s *certManagerStep) Observe(ctx context.Context) (plan.Observation, error) {
	restConfig, err := s.connect(ctx)
	if plan.Classify(err) == plan.NotFound {
		return plan.Observation{Detail: certManagerState{Absent: "the Kubernetes cluster does not exist yet"}}, nil
	}
	if err != nil {
		return plan.Observation{}, err
	}
	setup, err := s.setup(ctx)
	if plan.Classify(err) == plan.NotFound {
		return plan.Observation{Detail: certManagerState{Absent: "cert-manager's cloud identity does not exist yet: " + err.Error()}}, nil
	}
	if err != nil {
		return plan.Observation{}, err
	}
	kube, err := newKubeClient(restConfig)
	if err != nil {
		return plan.Observation{}, err
	}
	// One cheap call first: an API server that does not answer (or refuses the credentials) is a state
	// to report, not an error, so that destroy goes on without it.
	if err := kube.Get(ctx, client.ObjectKey{Name: cloud.CertManagerNamespace}, &corev1.Namespace{}); err != nil && !apierrors.IsNotFound(err) {
		if isUnreachable(err) || apierrors.IsForbidden(err) {
			return plan.Observation{Exists: true, Detail: certManagerState{Unreachable: err.Error()}}, nil
		}
		return plan.Observation{}, fmt.Errorf("read namespace %s: %w", cloud.CertManagerNamespace, err)
	}
	var st certManagerState
	if st.Release, err = certManagerReleaseDiff(restConfig, certManagerValues(setup)); err != nil {
		return plan.Observation{}, err
	}
	desired := BuildClusterIssuer(s.cfg, setup.Solver)
	live := &unstructured.Unstructured{}
	live.SetGroupVersionKind(desired.GroupVersionKind())
	err = kube.Get(ctx, client.ObjectKeyFromObject(desired), live)
	if err != nil && !apierrors.IsNotFound(err) && !meta.IsNoMatchError(err) {
		return plan.Observation{}, fmt.Errorf("read ClusterIssuer %s: %w", desired.GetName(), err)
	}
	st.Issuer = err == nil && live.GetAnnotations()[installerHashAnnotation] == desired.GetAnnotations()[installerHashAnnotation]
	return plan.Observation{Exists: st.Release != "not installed", Detail: st}, nil
}

func (s *certManagerStep) Plan(obs plan.Observation) plan.Change {
	st := obs.Detail.(certManagerState)
	release := "Helm release " + CertManagerRelease + " " + CertManagerVersion + " in " + cloud.CertManagerNamespace + " (" + certManagerChart + ", CRDs included)"
	issuer := "ClusterIssuer " + certIssuerName(s.cfg) + ": ACME " + s.cfg.CertIssuer + ", DNS01 for " + cloud.GatewayHostname(s.cfg.DNS.Domain)
	switch {
	case st.Absent != "" || st.Release == "not installed":
		return plan.Change{Action: plan.Create, Diff: []string{release, issuer}, Desired: st}
	case st.Unreachable != "":
		return plan.Change{Action: plan.Update, Diff: []string{"the API server could not be used (" + st.Unreachable + "); apply all of:", release, issuer}, Desired: st}
	case st.Release != "":
		return plan.Change{Action: plan.Update, Diff: []string{release + ": " + st.Release, issuer}, Desired: st}
	case !st.Issuer:
		return plan.Change{Action: plan.Update, Diff: []string{issuer}, Desired: st}
	}
	return plan.NoChange()
}

// PlanDestroy leaves cert-manager to the cluster's deletion.
func (s *certManagerStep) PlanDestroy(plan.Observation) plan.Change { return plan.NoChange() }

func (s *certManagerStep) Apply(ctx context.Context, c plan.Change) error {
	st := c.Desired.(certManagerState)
	restConfig, err := s.connect(ctx)
	if err != nil {
		return err
	}
	setup, err := s.setup(ctx)
	if err != nil {
		return err
	}
	if st.Release != "" || st.Absent != "" || st.Unreachable != "" {
		ch, err := s.charts.Load(CertManagerVersion)
		if err != nil {
			return plan.Errorf(plan.Other, "load the cert-manager chart", err)
		}
		if ch.Metadata == nil || ch.Metadata.Name != "cert-manager" || ch.Metadata.Version != CertManagerVersion {
			return plan.Errorf(plan.Other, "load the cert-manager chart", fmt.Errorf("got chart %v, want cert-manager %s", ch.Metadata, CertManagerVersion))
		}
		if err := withKubeconfigFile(restConfig, func(kubeconfig string) error {
			return s.installRelease(ctx, kubeconfig, ch, certManagerValues(setup))
		}); err != nil {
			return plan.Errorf(kubeKind(err), "install cert-manager", err)
		}
	}
	kube, err := newKubeClient(restConfig)
	if err != nil {
		return err
	}
	issuer := BuildClusterIssuer(s.cfg, setup.Solver)
	if err := kube.Patch(ctx, issuer, client.Apply, installerFieldOwner, client.ForceOwnership); err != nil {
		// Just installed: the API server may not serve the CRD yet, or cert-manager's webhook may not
		// answer yet (its CA is injected after it starts). Both pass: retried.
		if meta.IsNoMatchError(err) || webhookNotReady(err) {
			return plan.Errorf(plan.Conflict, "apply ClusterIssuer "+issuer.GetName(), fmt.Errorf("cert-manager is not ready yet: %w", err))
		}
		return plan.Errorf(kubeKind(err), "apply ClusterIssuer "+issuer.GetName(), err)
	}
	if s.out != nil {
		fmt.Fprintf(s.out, "%-24s ClusterIssuer %s applied (%s)\n", certManagerStepName, issuer.GetName(), s.cfg.CertIssuer)
	}
	return nil
}

// webhookNotReady says whether err is the API server failing to call cert-manager's admission webhook.
func webhookNotReady(err error) bool {
	return apierrors.IsInternalError(err) && strings.Contains(err.Error(), "failed calling webhook")
}

// installRelease installs cert-manager's release, or upgrades it when it exists.
func (s *certManagerStep) installRelease(ctx context.Context, kubeconfig string, ch *chart.Chart, values map[string]any) error {
	cfg, err := helmConfigIn(kubeconfig, cloud.CertManagerNamespace)
	if err != nil {
		return err
	}
	history := action.NewHistory(cfg)
	history.Max = 1
	if _, err := history.Run(CertManagerRelease); errors.Is(err, driver.ErrReleaseNotFound) {
		install := action.NewInstall(cfg)
		install.ReleaseName, install.Namespace, install.CreateNamespace = CertManagerRelease, cloud.CertManagerNamespace, true
		install.Wait, install.Timeout = s.wait > 0, s.wait
		if _, err := install.RunWithContext(ctx, ch, values); err != nil {
			return fmt.Errorf("helm install %s: %w", CertManagerRelease, err)
		}
		return nil
	} else if err != nil {
		return fmt.Errorf("helm history %s: %w", CertManagerRelease, err)
	}
	upgrade := action.NewUpgrade(cfg)
	upgrade.Namespace = cloud.CertManagerNamespace
	upgrade.Wait, upgrade.Timeout = s.wait > 0, s.wait
	if _, err := upgrade.RunWithContext(ctx, CertManagerRelease, ch, values); err != nil {
		return fmt.Errorf("helm upgrade %s: %w", CertManagerRelease, err)
	}
	return nil
}

// certManagerReleaseDiff compares cert-manager's release with CertManagerVersion and, unless nil, values:
// "" when they match, "not installed", or what differs.
func certManagerReleaseDiff(restConfig *rest.Config, values map[string]any) (string, error) {
	rel, err := readRelease(restConfig, cloud.CertManagerNamespace, CertManagerRelease)
	if err != nil || rel == nil {
		return orNotInstalled(err)
	}
	diff := releaseStatus(rel)
	if rel.Chart == nil || rel.Chart.Metadata == nil || rel.Chart.Metadata.Version != CertManagerVersion {
		version := "unknown"
		if rel.Chart != nil && rel.Chart.Metadata != nil {
			version = rel.Chart.Metadata.Version
		}
		diff = append(diff, "version "+version+", not "+CertManagerVersion)
	}
	if values != nil && contentHash(rel.Config) != contentHash(values) {
		diff = append(diff, "other values (service account identity)")
	}
	return strings.Join(diff, ", "), nil
}

// gatewayCertificate says how cert-manager stands with the gateway's certificate of a MetricsCluster whose
// spec.gateway.tls.issuerRef names an issuer: ready, and otherwise why not, from the Certificate's Ready
// condition and the state of each ACME challenge for the gateway's name (where a DNS01 permission problem
// shows). applies is false when the controller's own CA issues the gateway's certificate.
func gatewayCertificate(ctx context.Context, kube client.Client, mc *v1alpha1.MetricsCluster) (applies, ready bool, detail string) {
	if mc.Spec.Gateway.TLS == nil || mc.Spec.Gateway.TLS.IssuerRef == nil {
		return false, false, ""
	}
	name := manifests.GatewayTLSSecretName(mc.Name)
	certificate := &unstructured.Unstructured{}
	certificate.SetAPIVersion("cert-manager.io/v1")
	certificate.SetKind("Certificate")
	if err := kube.Get(ctx, client.ObjectKey{Namespace: mc.Namespace, Name: name}, certificate); err != nil {
		if meta.IsNoMatchError(err) {
			return true, false, "cert-manager is not installed (no Certificate kind): run create again"
		}
		return true, false, "Certificate " + mc.Namespace + "/" + name + ": " + err.Error()
	}
	status, message := readyCondition(certificate)
	if status == "True" {
		return true, true, "Certificate " + name + " issued by " + mc.Spec.Gateway.TLS.IssuerRef.Kind + " " + mc.Spec.Gateway.TLS.IssuerRef.Name
	}
	parts := []string{"Certificate " + name + " not ready: " + orDash(message)}
	challenges := &unstructured.UnstructuredList{}
	challenges.SetAPIVersion("acme.cert-manager.io/v1")
	challenges.SetKind("ChallengeList")
	if err := kube.List(ctx, challenges, client.InNamespace(mc.Namespace)); err == nil {
		for _, ch := range challenges.Items {
			dnsName, _, _ := unstructured.NestedString(ch.Object, "spec", "dnsName")
			state, _, _ := unstructured.NestedString(ch.Object, "status", "state")
			reason, _, _ := unstructured.NestedString(ch.Object, "status", "reason")
			if dnsName == mc.Spec.Gateway.Hostname && state != "valid" {
				parts = append(parts, "ACME challenge "+ch.GetName()+" "+orDash(state)+": "+orDash(reason))
			}
		}
	}
	return true, false, strings.Join(parts, "; ")
}

// readyCondition is the status and message of an object's Ready condition, as cert-manager writes it.
func readyCondition(obj *unstructured.Unstructured) (status, message string) {
	conditions, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	for _, raw := range conditions {
		if c, ok := raw.(map[string]any); ok && c["type"] == "Ready" {
			status, _ = c["status"].(string)
			message, _ = c["message"].(string)
		}
	}
	return status, message
}
