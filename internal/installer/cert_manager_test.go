package installer

// cert-manager's step, the gateway's load balancer address and the MetricsCluster of a Let's Encrypt config
// against the real test API server (envtest). The cert-manager chart is a local stand-in
// (testdata/cert-manager-chart, see its Chart.yaml) with the real CRDs of CertManagerVersion: the real
// chart is on quay.io, which tests cannot reach, and its webhook would need pods that envtest does not run.

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/release"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/installer/cloud"
	awscloud "github.com/opstrace/opstrace/internal/installer/cloud/aws"
	gcpcloud "github.com/opstrace/opstrace/internal/installer/cloud/gcp"
	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/installer/plan"
	"github.com/opstrace/opstrace/internal/testenv"
)

// fixtureCharts loads testdata/cert-manager-chart with the CRDs of bin/cert-manager-crds added as templates
// that only crds.enabled installs, as in the real chart; it counts its loads.
type fixtureCharts struct{ loads int }

func (f *fixtureCharts) Load(version string) (*chart.Chart, error) {
	f.loads++
	ch, err := loader.LoadDir(filepath.Join("testdata", "cert-manager-chart"))
	if err != nil {
		return nil, err
	}
	dir := testenv.ThirdPartyCRDs()[0]
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		return nil, &os.PathError{Op: "glob", Path: dir, Err: os.ErrNotExist}
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		ch.Templates = append(ch.Templates, &chart.File{Name: "templates/crd-" + filepath.Base(file),
			Data: []byte("{{- if .Values.crds.enabled }}\n" + string(data) + "\n{{- end }}\n")})
	}
	return ch, nil
}

const testCertManagerRole = "arn:aws:iam::123456789012:role/opstrace/opstrace-prod-cert-manager"

func letsEncryptConfig(t *testing.T, issuer string) config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte("dns: {domain: acme.example.com}\ncert_issuer: "+issuer+"\n"), config.ProviderAWS)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestCertManagerVersionIsTheMakefiles(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^CERT_MANAGER_VERSION \?= (\S+)$`).FindSubmatch(data)
	if m == nil || string(m[1]) != CertManagerVersion {
		t.Fatalf("Makefile CERT_MANAGER_VERSION %q, CertManagerVersion %s: the controller's tests must install the CRDs of the version create installs", m, CertManagerVersion)
	}
}

func TestCertManagerStepOnARealAPIServer(t *testing.T) {
	env := startCloudEnv(t)
	ctx := context.Background()
	cfg := letsEncryptConfig(t, config.CertIssuerLetsEncryptStaging)
	role := testCertManagerRole
	charts := &fixtureCharts{}
	var out syncBuffer
	step := &certManagerStep{
		connect: func(context.Context) (*rest.Config, error) { return env.Config, nil },
		cfg:     cfg,
		setup: func(context.Context) (certManagerSetup, error) {
			return certManagerSetup{ServiceAccountAnnotations: map[string]string{awsRoleAnnotation: role},
				Solver: map[string]any{"route53": map[string]any{"region": "us-west-2", "hostedZoneID": "Z0PUBLIC"}}}, nil
		},
		charts: charts,
		out:    &out,
	}

	c := previewOne(t, step)
	if c.Action != plan.Create || !slices.Equal(c.Diff, []string{
		"Helm release cert-manager v1.21.2 in cert-manager (oci://quay.io/jetstack/charts/cert-manager, CRDs included)",
		"ClusterIssuer opstrace-letsencrypt-staging: ACME letsencrypt-staging, DNS01 for metrics.acme.example.com"}) {
		t.Fatalf("first plan: %s %q", c.Action, c.Diff)
	}
	if _, err := runSteps(t, step); err != nil {
		t.Fatal(err)
	}

	// The release: the pinned version, the chart's CRDs (the ClusterIssuer went in: the API server serves
	// the kind), and cert-manager's service account with its IRSA role.
	rel := certManagerRelease(t, env)
	if rel.Chart.Metadata.Version != "v1.21.2" || rel.Namespace != "cert-manager" || rel.Version != 1 {
		t.Errorf("release %s %s revision %d", rel.Namespace, rel.Chart.Metadata.Version, rel.Version)
	}
	if got, _ := json.Marshal(rel.Config); string(got) != `{"crds":{"enabled":true,"keep":true},"serviceAccount":{"annotations":{"eks.amazonaws.com/role-arn":"`+testCertManagerRole+`"}}}` {
		t.Errorf("release values %s", got)
	}
	var sa corev1.ServiceAccount
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: cloud.CertManagerNamespace, Name: cloud.CertManagerServiceAccount}, &sa); err != nil ||
		sa.Annotations[awsRoleAnnotation] != testCertManagerRole {
		t.Errorf("cert-manager's service account: %v %v", err, sa.Annotations)
	}
	issuer := clusterIssuer(t, env, "opstrace-letsencrypt-staging")
	spec, _ := json.Marshal(issuer.Object["spec"])
	if want := `{"acme":{"privateKeySecretRef":{"name":"opstrace-letsencrypt-staging-account"},"server":"https://acme-staging-v02.api.letsencrypt.org/directory",` +
		`"solvers":[{"dns01":{"route53":{"hostedZoneID":"Z0PUBLIC","region":"us-west-2"}},"selector":{"dnsNames":["metrics.acme.example.com"]}}]}}`; string(spec) != want {
		t.Errorf("ClusterIssuer spec\n got %s\nwant %s", spec, want)
	}

	// A rerun reads and writes nothing, and does not pull the chart.
	version := issuer.GetResourceVersion()
	rep, err := runSteps(t, step)
	if err != nil || rep.Steps[0].Action != plan.NoOp {
		t.Fatalf("rerun: %v %+v", err, rep.Steps)
	}
	if certManagerRelease(t, env).Version != 1 || clusterIssuer(t, env, "opstrace-letsencrypt-staging").GetResourceVersion() != version || charts.loads != 1 {
		t.Errorf("rerun wrote (release revision %d) or pulled the chart again (%d loads)", certManagerRelease(t, env).Version, charts.loads)
	}

	// Another identity (a recreated role): the release is upgraded with it.
	role = "arn:aws:iam::123456789012:role/opstrace/opstrace-prod-cert-manager-2"
	if c := previewOne(t, step); c.Action != plan.Update || !strings.Contains(c.Diff[0], "other values (service account identity)") {
		t.Fatalf("plan after an identity change: %s %q", c.Action, c.Diff)
	}
	if _, err := runSteps(t, step); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(&sa), &sa); err != nil || sa.Annotations[awsRoleAnnotation] != role || certManagerRelease(t, env).Version != 2 {
		t.Errorf("after the upgrade: %v %v", err, sa.Annotations)
	}

	// Production: its own ClusterIssuer and account key, with the production server.
	step.cfg = letsEncryptConfig(t, config.CertIssuerLetsEncryptProd)
	if c := previewOne(t, step); c.Action != plan.Update || !slices.Equal(c.Diff, []string{"ClusterIssuer opstrace-letsencrypt-prod: ACME letsencrypt-prod, DNS01 for metrics.acme.example.com"}) {
		t.Fatalf("plan for letsencrypt-prod: %s %q", c.Action, c.Diff)
	}
	if _, err := runSteps(t, step); err != nil {
		t.Fatal(err)
	}
	prod := clusterIssuer(t, env, "opstrace-letsencrypt-prod")
	if server, _, _ := unstructured.NestedString(prod.Object, "spec", "acme", "server"); server != "https://acme-v02.api.letsencrypt.org/directory" {
		t.Errorf("production server %q", server)
	}
	if !strings.Contains(out.String(), "ClusterIssuer opstrace-letsencrypt-prod applied (letsencrypt-prod)") {
		t.Errorf("progress:\n%s", out.String())
	}

	// destroy leaves cert-manager to the cluster's deletion, also when the API server does not answer.
	rev, err := plan.Reverse([]plan.Step{step})
	if err != nil {
		t.Fatal(err)
	}
	if c := previewOne(t, rev[0]); c.Action != plan.NoOp {
		t.Errorf("destroy plan: %s %q", c.Action, c.Diff)
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := listener.Addr().String()
	listener.Close()
	gone := *step
	gone.connect = func(context.Context) (*rest.Config, error) {
		return &rest.Config{Host: "https://" + closed, Timeout: 2 * time.Second}, nil
	}
	if c := previewOne(t, &gone); c.Action != plan.Update || !strings.HasPrefix(c.Diff[0], "the API server could not be used (") {
		t.Errorf("create plan with an unreachable API server: %s %q", c.Action, c.Diff)
	}
	if rev, err = plan.Reverse([]plan.Step{&gone}); err != nil {
		t.Fatal(err)
	}
	if c := previewOne(t, rev[0]); c.Action != plan.NoOp {
		t.Errorf("destroy plan with an unreachable API server: %s %q", c.Action, c.Diff)
	}

	t.Run("MetricsCluster", func(t *testing.T) { testLetsEncryptMetricsCluster(t, env) })
	t.Run("gateway address", func(t *testing.T) { testGatewayAddress(t, env) })
	t.Run("gateway certificate", func(t *testing.T) { testGatewayCertificate(t, env) })
}

// What create's wait and status say about the gateway's certificate while cert-manager issues it: the
// Certificate's Ready message and each pending challenge's reason (a DNS01 permission problem shows there),
// then that it is issued. Here the test writes the statuses cert-manager would write.
func testGatewayCertificate(t *testing.T, env *testenv.Env) {
	ctx := context.Background()
	mc := &v1alpha1.MetricsCluster{ObjectMeta: metav1.ObjectMeta{Namespace: cloud.Namespace, Name: "prod"}}
	mc.Spec.Gateway.Hostname = "metrics.acme.example.com"
	if applies, _, _ := gatewayCertificate(ctx, env.Client, mc); applies {
		t.Error("a gateway certificate of the built-in CA reported as cert-manager's")
	}
	mc.Spec.Gateway.TLS = gatewayIssuer(letsEncryptConfig(t, config.CertIssuerLetsEncryptProd))
	if applies, ready, detail := gatewayCertificate(ctx, env.Client, mc); !applies || ready || !strings.Contains(detail, "Certificate opstrace/prod-gateway-tls: ") {
		t.Errorf("before the controller made the Certificate: %v %v %q", applies, ready, detail)
	}
	withStatus := func(obj *unstructured.Unstructured, status map[string]any) {
		t.Helper()
		if err := env.Client.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
		obj.Object["status"] = status
		if err := env.Client.Status().Update(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
	certificate := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
		"metadata": map[string]any{"namespace": cloud.Namespace, "name": "prod-gateway-tls"},
		"spec": map[string]any{"secretName": "prod-gateway-tls", "dnsNames": []any{"metrics.acme.example.com"},
			"issuerRef": map[string]any{"name": "opstrace-letsencrypt-prod", "kind": "ClusterIssuer"}}}}
	withStatus(certificate, map[string]any{"conditions": []any{map[string]any{"type": "Ready", "status": "False", "reason": "DoesNotExist",
		"message": "Issuing certificate as Secret does not exist", "lastTransitionTime": "2026-01-01T00:00:00Z"}}})
	challenge := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "acme.cert-manager.io/v1", "kind": "Challenge",
		"metadata": map[string]any{"namespace": cloud.Namespace, "name": "prod-gateway-tls-1-2-3"},
		"spec": map[string]any{"dnsName": "metrics.acme.example.com", "type": "DNS-01", "key": "k", "token": "t",
			"url": "https://acme-v02.api.letsencrypt.org/acme/chall/1", "authorizationURL": "https://acme-v02.api.letsencrypt.org/acme/authz/1",
			"issuerRef": map[string]any{"name": "opstrace-letsencrypt-prod", "kind": "ClusterIssuer"}, "solver": map[string]any{}}}}
	withStatus(challenge, map[string]any{"state": "pending", "processing": true, "presented": false,
		"reason": "Error presenting challenge: AccessDenied: not authorized to perform: route53:ChangeResourceRecordSets"})
	applies, ready, detail := gatewayCertificate(ctx, env.Client, mc)
	if want := "Certificate prod-gateway-tls not ready: Issuing certificate as Secret does not exist; ACME challenge prod-gateway-tls-1-2-3 pending: " +
		"Error presenting challenge: AccessDenied: not authorized to perform: route53:ChangeResourceRecordSets"; !applies || ready || detail != want {
		t.Errorf("while issuing: %v %v\n got %q\nwant %q", applies, ready, detail, want)
	}
	certificate.Object["status"] = map[string]any{"conditions": []any{map[string]any{"type": "Ready", "status": "True", "reason": "Ready",
		"message": "Certificate is up to date and has not expired", "lastTransitionTime": "2026-01-01T00:01:00Z"}}}
	if err := env.Client.Status().Update(ctx, certificate); err != nil {
		t.Fatal(err)
	}
	if _, ready, detail := gatewayCertificate(ctx, env.Client, mc); !ready || detail != "Certificate prod-gateway-tls issued by ClusterIssuer opstrace-letsencrypt-prod" {
		t.Errorf("issued: %v %q", ready, detail)
	}

	// status shows cert-manager's release and the certificate (the MetricsCluster prod of the Let's Encrypt
	// config is there from the MetricsCluster subtest).
	var out strings.Builder
	if _, err := kubeStatus(ctx, &out, env.Config, "prod"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"helm/cert-manager                    true  -",
		"gateway/certificate                  true  Certificate prod-gateway-tls issued by ClusterIssuer opstrace-letsencrypt-prod"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}
}

func certManagerRelease(t *testing.T, env *testenv.Env) *release.Release {
	t.Helper()
	var rel *release.Release
	if err := withKubeconfigFile(env.Config, func(kubeconfig string) error {
		cfg, err := helmConfigIn(kubeconfig, cloud.CertManagerNamespace)
		if err != nil {
			return err
		}
		r, err := action.NewGet(cfg).Run(CertManagerRelease)
		rel = r
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return rel
}

func clusterIssuer(t *testing.T, env *testenv.Env, name string) *unstructured.Unstructured {
	t.Helper()
	issuer := &unstructured.Unstructured{}
	issuer.SetAPIVersion("cert-manager.io/v1")
	issuer.SetKind("ClusterIssuer")
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: name}, issuer); err != nil {
		t.Fatalf("ClusterIssuer %s: %v", name, err)
	}
	return issuer
}

// The MetricsCluster of a Let's Encrypt config names the ClusterIssuer for the gateway only, with the
// gateway's DNS name; the API server accepts it (its CEL rule wants the hostname with the issuer). A
// self-signed config with dns keeps the built-in CA, with the name in the certificate.
func testLetsEncryptMetricsCluster(t *testing.T, env *testenv.Env) {
	ctx := context.Background()
	// Helm made this namespace in a real install (the controller's release).
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ControllerNamespace}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		issuer  string
		wantTLS *v1alpha1.GatewayTLSSpec
	}{
		{config.CertIssuerSelfSigned, nil},
		{config.CertIssuerLetsEncryptProd, &v1alpha1.GatewayTLSSpec{IssuerRef: &v1alpha1.IssuerReference{Name: "opstrace-letsencrypt-prod", Kind: "ClusterIssuer", Group: "cert-manager.io"}}},
	} {
		for _, obj := range BuildCloudObjects(testWorkload(letsEncryptConfig(t, tc.issuer)), cloud.Namespace) {
			if err := env.Client.Patch(ctx, obj, client.Apply, installerFieldOwner, client.ForceOwnership); err != nil {
				t.Fatalf("%s: apply %s: %v", tc.issuer, objectRef(obj), err)
			}
		}
		var mc v1alpha1.MetricsCluster
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: cloud.Namespace, Name: "prod"}, &mc); err != nil {
			t.Fatal(err)
		}
		got, _ := json.Marshal(mc.Spec.Gateway.TLS)
		want, _ := json.Marshal(tc.wantTLS)
		if mc.Spec.Gateway.Hostname != "metrics.acme.example.com" || string(got) != string(want) || mc.Spec.TLS.IssuerRef != nil {
			t.Errorf("%s: gateway %s %s, spec.tls %+v; want metrics.acme.example.com %s and no spec.tls.issuerRef",
				tc.issuer, mc.Spec.Gateway.Hostname, got, mc.Spec.TLS, want)
		}
	}
}

// The DNS step's target: the gateway Service's load balancer hostname (AWS) or IP (GCP), NotFound until
// there is one.
func testGatewayAddress(t *testing.T, env *testenv.Env) {
	ctx := context.Background()
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: cloud.Namespace}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	connect := func(context.Context) (*rest.Config, error) { return env.Config, nil }
	hostname, ip := gatewayAddress(connect, "lb", addressHostname), gatewayAddress(connect, "lb", addressIP)
	if _, err := hostname(ctx); plan.Classify(err) != plan.NotFound || !strings.Contains(err.Error(), "opstrace/lb-gateway") {
		t.Errorf("without a Service: %v", err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: cloud.Namespace, Name: "lb-gateway"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: []corev1.ServicePort{{Name: "https", Port: 443}}}}
	if err := env.Client.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	if _, err := hostname(ctx); plan.Classify(err) != plan.NotFound || !strings.Contains(err.Error(), "has no load balancer hostname yet") {
		t.Errorf("without an address: %v", err)
	}
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{Hostname: "a1b2-123.elb.us-west-2.amazonaws.com"}}
	if err := env.Client.Status().Update(ctx, svc); err != nil {
		t.Fatal(err)
	}
	if got, err := hostname(ctx); err != nil || got != "a1b2-123.elb.us-west-2.amazonaws.com" {
		t.Errorf("hostname: %q %v", got, err)
	}
	if _, err := ip(ctx); plan.Classify(err) != plan.NotFound || !strings.Contains(err.Error(), "has no load balancer IP yet") {
		t.Errorf("IP of a load balancer with a hostname: %v", err)
	}
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.10"}}
	if err := env.Client.Status().Update(ctx, svc); err != nil {
		t.Fatal(err)
	}
	if got, err := ip(ctx); err != nil || got != "203.0.113.10" {
		t.Errorf("IP: %q %v", got, err)
	}
}

// The step graphs of create: with Let's Encrypt, cert-manager before the MetricsCluster (which names its
// ClusterIssuer) and after the identity it uses; the DNS record after the Kubernetes step (the load
// balancer); with self-signed, the record only; without dns, neither.
func TestCertificateStepsInTheCreateGraph(t *testing.T) {
	deps := func(steps []plan.Step) map[string][]string {
		t.Helper()
		if _, err := plan.Order(steps); err != nil {
			t.Fatal(err)
		}
		out := map[string][]string{}
		for _, s := range steps {
			out[s.Name()] = s.DependsOn()
		}
		return out
	}
	aws := &awscloud.Clients{Region: "us-west-2"}
	gcp := &gcpcloud.Clients{Project: "acme-prod", Region: "europe-west1"}
	for _, provider := range []string{config.ProviderAWS, config.ProviderGCP} {
		for _, issuer := range []string{config.CertIssuerLetsEncryptProd, config.CertIssuerSelfSigned, ""} {
			file := "dns: {domain: acme.example.com}\ncert_issuer: " + issuer + "\n"
			if issuer == "" {
				file = "tenants: [default]\n"
			}
			if provider == config.ProviderGCP {
				file += "gcp: {project: acme-prod}\n"
			}
			cfg, err := config.Parse([]byte(file), provider)
			if err != nil {
				t.Fatal(err)
			}
			var graph map[string][]string
			if provider == config.ProviderAWS {
				graph = deps(awsSteps(aws, "prod", cfg, io.Discard))
			} else {
				graph = deps(gcpSteps(gcp, "prod", cfg, io.Discard))
			}
			record, identity := provider+"/dns-record", map[string]string{config.ProviderAWS: "aws/cert-manager-role", config.ProviderGCP: "gcp/cert-manager-identity"}[provider]
			_, hasCertManager := graph[certManagerStepName]
			_, hasRecord := graph[record]
			switch issuer {
			case config.CertIssuerLetsEncryptProd:
				if !hasCertManager || !slices.Contains(graph[certManagerStepName], identity) || !slices.Contains(graph[kubeStepName], certManagerStepName) {
					t.Errorf("%s %s: cert-manager %v, kubernetes %v", provider, issuer, graph[certManagerStepName], graph[kubeStepName])
				}
			default:
				if hasCertManager || slices.Contains(graph[kubeStepName], certManagerStepName) {
					t.Errorf("%s %q: cert-manager without Let's Encrypt", provider, issuer)
				}
			}
			if hasRecord != (issuer != "") || (hasRecord && !slices.Equal(graph[record], []string{provider + "/dns-zone", kubeStepName})) {
				t.Errorf("%s %q: DNS record step %v %v", provider, issuer, hasRecord, graph[record])
			}
		}
	}
}

// The real chart source says which registry it could not reach.
func TestOCIChartSourceNamesTheRegistry(t *testing.T) {
	_, err := ociChart{ref: "oci://127.0.0.1:1/jetstack/charts/cert-manager"}.Load(CertManagerVersion)
	if err == nil || !strings.Contains(err.Error(), "pull the chart oci://127.0.0.1:1/jetstack/charts/cert-manager:v1.21.2") ||
		!strings.Contains(err.Error(), "this machine must reach 127.0.0.1:1") {
		t.Fatalf("pull from a closed port: %v", err)
	}
}
