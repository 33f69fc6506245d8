package installer

// verify aws|gcp against real components: the cluster's objects on the real test API server (envtest), and
// the gateway's real handler over real TLS on 127.0.0.1 in front of a real Cortex and a real Loki, reached
// through a LoadBalancer Service whose status says 127.0.0.1, as the cloud's load balancer controller would
// write it.

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/certs"
	"github.com/opstrace/opstrace/internal/gateway"
	"github.com/opstrace/opstrace/internal/manifests"
	"github.com/opstrace/opstrace/internal/testenv"
	"github.com/opstrace/opstrace/internal/tokens"
)

// cloudGatewayStack is a cloud cluster's data path on this machine: Cortex and Loki processes, the gateway
// handler with TLS from a CA of the test, and the tokens of the tenants.
type cloudGatewayStack struct {
	ca     certs.KeyPair
	port   int
	tokens map[string]string
}

const testGatewayHost = "prod-gateway.opstrace.svc"

func startCloudGatewayStack(t *testing.T, tenants ...string) *cloudGatewayStack {
	t.Helper()
	cortex := testenv.StartCortex(t, v1alpha1.TenantLimits{})
	loki := testenv.StartLoki(t, testenv.MinimalLokiConfig)
	key, err := tokens.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	const audience = "opstrace/prod"
	auth := gateway.NewAuthenticator(audience, nil)
	auth.SetKeys(tokens.KeySet{key.ID: key.Public()})
	s := &cloudGatewayStack{tokens: map[string]string{}}
	list := gateway.TenantList{Tenants: map[string]gateway.TenantPolicy{}}
	for _, tenant := range tenants {
		list.Tenants[tenant] = gateway.TenantPolicy{}
		if s.tokens[tenant], _, err = key.Issue(tenant, audience, time.Now(), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	auth.SetTenants(list)
	upstream := func(name, target string) *gateway.Upstream {
		u, err := gateway.NewUpstream(name, []string{target})
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	handler := gateway.NewHandler(gateway.Config{
		Distributor: upstream("distributor", cortex.URL), QueryFrontend: upstream("query-frontend", cortex.URL),
		Loki: &gateway.LokiUpstreams{Distributor: upstream("loki-distributor", loki.URL),
			QueryFrontend: upstream("loki-query-frontend", loki.URL), Querier: upstream("loki-querier", loki.URL)},
		MaxBodyBytes: 16 << 20, UpstreamTimeout: 30 * time.Second,
	}, auth, prometheus.NewRegistry(), func() bool { return true })

	if s.ca, err = certs.NewCA("opstrace opstrace/prod CA", time.Now(), time.Hour); err != nil {
		t.Fatal(err)
	}
	serving, err := certs.IssueServing(s.ca, []string{testGatewayHost}, nil, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	server := httptest.NewUnstartedServer(handler)
	if server.Listener, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if server.TLS, err = tlsPair(serving); err != nil {
		t.Fatal(err)
	}
	server.EnableHTTP2 = true
	server.StartTLS()
	t.Cleanup(server.Close)
	s.port = server.Listener.Addr().(*net.TCPAddr).Port
	return s
}

// publish writes what the controller and the cloud would for the MetricsCluster prod: the gateway's
// certificate Secret (its ca.crt), the LoadBalancer Service with 127.0.0.1 as its load balancer, the
// tenants' token Secrets and the endpoint in the status.
func (s *cloudGatewayStack) publish(t *testing.T, env *testenv.Env) {
	t.Helper()
	ctx := context.Background()
	objects := []client.Object{
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "opstrace", Name: manifests.GatewayTLSSecretName("prod")},
			Data: map[string][]byte{manifests.TLSCAKey: s.ca.CertPEM}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "opstrace", Name: "prod-gateway"},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer,
				Ports: []corev1.ServicePort{{Name: "metrics", Port: 8080}, {Name: manifests.PortHTTPS, Port: int32(s.port)}}}},
	}
	for tenant, token := range s.tokens {
		objects = append(objects, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "opstrace", Name: manifests.TenantTokenSecretName(tenant)},
			Data: map[string][]byte{manifests.TenantTokenKey: []byte(token)}})
	}
	for _, o := range objects {
		if err := env.Client.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	svc := objects[1].(*corev1.Service)
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "127.0.0.1"}}
	if err := env.Client.Status().Update(ctx, svc); err != nil {
		t.Fatal(err)
	}
	var mc v1alpha1.MetricsCluster
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: "opstrace", Name: "prod"}, &mc); err != nil {
		t.Fatal(err)
	}
	mc.Status.GatewayEndpoint = "https://" + testGatewayHost
	if err := env.Client.Status().Update(ctx, &mc); err != nil {
		t.Fatal(err)
	}
}

// testCloudVerify: verify aws as the system tenant and as another, writing and reading a series and a log
// line through the load balancer's address; the failures say what is wrong, and no output holds a token.
func testCloudVerify(t *testing.T, env *testenv.Env, stack *cloudGatewayStack, c cloudCluster) {
	ctx := context.Background()
	for _, tenant := range []string{v1alpha1.SystemTenant, "team-a"} {
		var out syncBuffer
		if err := verifyCloud(ctx, c, tenant, &out); err != nil {
			t.Fatalf("verify as %s: %v\n%s", tenant, err, out.String())
		}
		got := out.String()
		for _, want := range []string{
			"gateway https://" + testGatewayHost + " via 127.0.0.1:",
			"trusting the cluster's CA (Secret opstrace/prod-gateway-tls)",
			"verified AWS cluster prod in us-west-2 as tenant " + tenant + ": write ",
			"read back ",
			"verified logs of AWS cluster prod in us-west-2 as tenant " + tenant + ": push ",
		} {
			if !strings.Contains(got, want) {
				t.Errorf("verify as %s: output lacks %q:\n%s", tenant, want, got)
			}
		}
		if strings.Contains(got, stack.tokens[tenant]) {
			t.Errorf("verify printed the token of %s", tenant)
		}
		t.Logf("verify as %s:\n%s", tenant, got)
	}

	// A tenant without a token Secret: the error names the Secret and how to list the tenants.
	var out syncBuffer
	err := verifyCloud(ctx, c, "nobody", &out)
	if err == nil || !strings.Contains(err.Error(), "read the token of tenant nobody (Secret opstrace/tenant-nobody-token)") ||
		!strings.Contains(err.Error(), "kubectl get tenants -n opstrace") {
		t.Errorf("verify as a tenant without a token: %v", err)
	}

	// A token the gateway does not accept (signed by another key): the gateway's 401, non-zero exit, and
	// the token is in neither the output nor the error.
	forged, _, err := mustKey(t).Issue("team-b", "opstrace/prod", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "opstrace", Name: manifests.TenantTokenSecretName("team-b")},
		Data: map[string][]byte{manifests.TenantTokenKey: []byte(forged)}}); err != nil {
		t.Fatal(err)
	}
	out = syncBuffer{}
	err = verifyCloud(ctx, c, "team-b", &out)
	if err == nil || !strings.Contains(err.Error(), "verify: write as tenant team-b to https://"+testGatewayHost+": gateway answered 401") {
		t.Errorf("verify with a token the gateway refuses: %v", err)
	}
	if err != nil && strings.Contains(err.Error()+out.String(), forged) {
		t.Error("verify printed a token")
	}

	// An empty token (the controller has not issued it yet).
	if err := env.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "opstrace", Name: manifests.TenantTokenSecretName("team-c")}}); err != nil {
		t.Fatal(err)
	}
	if err := verifyCloud(ctx, c, "team-c", &out); err == nil || !strings.Contains(err.Error(), "the token of tenant team-c (Secret opstrace/tenant-team-c-token, key token) is empty") {
		t.Errorf("verify with an empty token: %v", err)
	}

	// An API server that does not answer: the error says which cluster could not be reached.
	unreachable := c
	unreachable.connect = func(context.Context) (*rest.Config, error) { return nil, errors.New("EKS cluster prod: not found") }
	if err := verifyCloud(ctx, unreachable, "team-a", &out); err == nil || err.Error() != "verify: connect to AWS cluster prod in us-west-2: EKS cluster prod: not found" {
		t.Errorf("verify of an unreachable cluster: %v", err)
	}
}

func mustKey(t *testing.T) tokens.SigningKey {
	t.Helper()
	key, err := tokens.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// Where verify connects: the load balancer's host name (AWS) or IP (GCP) at the Service's https port, or
// the configured host name at the endpoint's port when dns is set; and what it says when it cannot.
func TestVerifyGatewayDialAddress(t *testing.T) {
	lb := func(ingress corev1.LoadBalancerIngress) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "opstrace", Name: "prod-gateway"},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer,
				Ports: []corev1.ServicePort{{Name: "metrics", Port: 8080}, {Name: manifests.PortHTTPS, Port: 443}}},
			Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{ingress}}}}
	}
	mc := func(hostname string) *v1alpha1.MetricsCluster {
		return &v1alpha1.MetricsCluster{ObjectMeta: metav1.ObjectMeta{Namespace: "opstrace", Name: "prod"},
			Spec: v1alpha1.MetricsClusterSpec{Gateway: v1alpha1.GatewaySpec{Hostname: hostname}}}
	}
	clusterIP := lb(corev1.LoadBalancerIngress{})
	clusterIP.Spec.Type = corev1.ServiceTypeClusterIP
	for _, tc := range []struct {
		name     string
		mc       *v1alpha1.MetricsCluster
		endpoint string
		svc      *corev1.Service
		want     string
		wantErr  string
	}{
		{"AWS load balancer", mc(""), "https://prod-gateway.opstrace.svc", lb(corev1.LoadBalancerIngress{Hostname: "a1b2-123.elb.us-west-2.amazonaws.com"}), "a1b2-123.elb.us-west-2.amazonaws.com:443", ""},
		{"GCP load balancer", mc(""), "https://prod-gateway.opstrace.svc", lb(corev1.LoadBalancerIngress{IP: "203.0.113.7"}), "203.0.113.7:443", ""},
		{"dns configured", mc("metrics.example.com"), "https://metrics.example.com", lb(corev1.LoadBalancerIngress{IP: "203.0.113.7"}), "metrics.example.com:443", ""},
		{"dns with a port", mc("metrics.example.com"), "https://metrics.example.com:8443", lb(corev1.LoadBalancerIngress{}), "metrics.example.com:8443", ""},
		{"no address yet", mc(""), "https://prod-gateway.opstrace.svc", &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "opstrace", Name: "prod-gateway"},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer}}, "",
			"the gateway's load balancer (Service opstrace/prod-gateway) has no address yet: the cloud is still making it; try again in a minute"},
		{"ingress without an address", mc(""), "https://prod-gateway.opstrace.svc", lb(corev1.LoadBalancerIngress{}), "",
			"the gateway's load balancer (Service opstrace/prod-gateway) has no address yet"},
		{"not a load balancer", mc(""), "https://prod-gateway.opstrace.svc", clusterIP, "",
			"the gateway Service opstrace/prod-gateway is of type ClusterIP, not LoadBalancer"},
	} {
		endpoint, err := url.Parse(tc.endpoint)
		if err != nil {
			t.Fatal(err)
		}
		got, err := gatewayDialAddress(tc.mc, endpoint, tc.svc)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: %q, %v; want error %q", tc.name, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

// The gateway found from what the cluster holds, before any traffic: the system's CAs when the
// certificate Secret has no ca.crt (a public issuer), and errors naming what is missing.
func TestVerifyCloudGatewayDiscovery(t *testing.T) {
	env := startCloudEnv(t)
	ctx := context.Background()
	kube, err := newKubeClient(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "opstrace"}}); err != nil {
		t.Fatal(err)
	}
	mc := &v1alpha1.MetricsCluster{ObjectMeta: metav1.ObjectMeta{Namespace: "opstrace", Name: "prod"},
		Spec: v1alpha1.MetricsClusterSpec{Storage: v1alpha1.StorageSpec{Type: v1alpha1.StorageFilesystem},
			Gateway: v1alpha1.GatewaySpec{Hostname: "metrics.example.com"}}}
	if err := env.Client.Create(ctx, mc); err != nil {
		t.Fatal(err)
	}
	if _, _, err := cloudGateway(ctx, kube, mc); err == nil || !strings.Contains(err.Error(), "MetricsCluster opstrace/prod has no gateway endpoint in its status yet") {
		t.Errorf("no endpoint: %v", err)
	}
	mc.Status.GatewayEndpoint = "https://metrics.example.com"
	if _, _, err := cloudGateway(ctx, kube, mc); err == nil || !strings.Contains(err.Error(), "read the gateway certificate (Secret opstrace/prod-gateway-tls)") {
		t.Errorf("no certificate: %v", err)
	}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "opstrace", Name: "prod-gateway-tls"},
		Data: map[string][]byte{manifests.TLSCAKey: []byte("not PEM")}}
	if err := env.Client.Create(ctx, secret); err != nil {
		t.Fatal(err)
	}
	if _, _, err := cloudGateway(ctx, kube, mc); err == nil || !strings.Contains(err.Error(), "the gateway certificate Secret opstrace/prod-gateway-tls: ca.crt holds no PEM certificate") {
		t.Errorf("bad ca.crt: %v", err)
	}
	secret.Data = map[string][]byte{"tls.crt": []byte("issued by Let's Encrypt")}
	if err := env.Client.Update(ctx, secret); err != nil {
		t.Fatal(err)
	}
	if _, _, err := cloudGateway(ctx, kube, mc); err == nil || !strings.Contains(err.Error(), "read the gateway Service opstrace/prod-gateway") {
		t.Errorf("no Service: %v", err)
	}
	if err := env.Client.Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "opstrace", Name: "prod-gateway"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: []corev1.ServicePort{{Name: manifests.PortHTTPS, Port: 443}}}}); err != nil {
		t.Fatal(err)
	}
	gw, via, err := cloudGateway(ctx, kube, mc)
	if err != nil {
		t.Fatal(err)
	}
	transport := gw.Client.Transport.(*http.Transport)
	if gw.URL != "https://metrics.example.com" || via != "metrics.example.com:443, trusting the system's CAs" ||
		transport.TLSClientConfig.RootCAs != nil || transport.TLSClientConfig.ServerName != "metrics.example.com" {
		t.Errorf("gateway with a public certificate: %s via %q, server name %q, own CAs %v", gw.URL, via,
			transport.TLSClientConfig.ServerName, transport.TLSClientConfig.RootCAs != nil)
	}
}
