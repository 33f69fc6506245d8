package gateway_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/opstrace/opstrace/internal/gateway"
	"github.com/opstrace/opstrace/internal/manifests"
	"github.com/opstrace/opstrace/internal/testenv"
	"github.com/opstrace/opstrace/internal/tokens"
)

// answer is a request through the gateway's handler: the status and, for a refusal, its reason.
func answer(h http.Handler, method, path, token string) (int, string) {
	req := httptest.NewRequest(method, path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res := httptest.NewRecorder()
	h.ServeHTTP(res, req)
	var body struct{ Error string }
	_ = json.Unmarshal(res.Body.Bytes(), &body)
	return res.Code, body.Error
}

func gauge(t *testing.T, registry *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, family := range families {
		if family.GetName() == name && len(family.GetMetric()) == 1 {
			return family.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no gauge %s", name)
	return 0
}

// poll checks cond every half millisecond for up to ten seconds and returns how long it took to hold.
func poll(t *testing.T, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(500 * time.Microsecond)
	}
	return time.Since(start)
}

func TestTheAuthSecretIsWatchedThroughTheAPIServer(t *testing.T) {
	const namespace = "auth-secret"
	admin := kube(t, namespace)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	key, err := tokens.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	token, tokenID, err := key.Issue("team-a", audience, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := tokens.KeySet{key.ID: key.Public()}.MarshalJWKS()
	if err != nil {
		t.Fatal(err)
	}

	ref := gateway.AuthSecret{Namespace: namespace, Name: manifests.GatewayAuthSecretName("prod"),
		KeysKey: manifests.GatewayAuthKeysKey, TenantsKey: manifests.GatewayAuthTenantsKey}
	auth := gateway.NewAuthenticator(audience, nil)
	registry := prometheus.NewRegistry()
	watcher, err := gateway.NewAuthWatcher(gatewayClient(t, admin, namespace, ref.Name), ref, auth, registry, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	watching := make(chan struct{})
	go func() { watcher.Run(ctx); close(watching) }()
	defer func() { cancel(); <-watching }()

	upstream, err := gateway.NewUpstream("query-frontend", []string{testenv.LoopbackServer(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})).URL})
	if err != nil {
		t.Fatal(err)
	}
	handler := gateway.NewHandler(gateway.Config{Distributor: upstream, QueryFrontend: upstream,
		MaxBodyBytes: 1 << 20, UpstreamTimeout: 5 * time.Second}, auth, registry, watcher.Loaded)
	query := func() (int, string) { return answer(handler, "GET", "/api/v1/labels", token) }

	if status, _ := answer(handler, "GET", "/-/ready", ""); status != http.StatusServiceUnavailable {
		t.Fatalf("ready before the auth Secret exists: %d, want 503", status)
	}

	secrets := admin.CoreV1().Secrets(namespace)
	secret, err := secrets.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: ref.Name},
		Data:       map[string][]byte{ref.KeysKey: jwks, ref.TenantsKey: []byte(`{"tenants":{"team-a":{}}}`)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	created := poll(t, "the created Secret to admit team-a's token", func() bool { status, _ := query(); return status == 200 })
	t.Logf("Secret created -> token accepted: %v", created)
	if status, _ := answer(handler, "GET", "/-/ready", ""); status != http.StatusOK {
		t.Fatalf("ready after the auth Secret was loaded: %d, want 200", status)
	}

	// update writes one data key and returns when the API server has stored it.
	update := func(dataKey, value string) {
		t.Helper()
		secret.Data[dataKey] = []byte(value)
		if secret, err = secrets.Update(ctx, secret, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// takesEffect measures from the Update returning to the gateway answering wantStatus with wantReason.
	takesEffect := func(what, tenants string, wantStatus int, wantReason string) {
		t.Helper()
		update(ref.TenantsKey, tenants)
		start := time.Now()
		poll(t, what, func() bool { status, reason := query(); return status == wantStatus && reason == wantReason })
		t.Logf("Secret updated (%s) -> gateway answers %d %q: %v", what, wantStatus, wantReason, time.Since(start))
	}
	restore := func() {
		t.Helper()
		takesEffect("team-a restored", `{"tenants":{"team-a":{}}}`, 200, "")
	}

	takesEffect("token id revoked", `{"tenants":{"team-a":{"revokedIDs":["`+tokenID+`"]}}}`, 401, string(gateway.ReasonTokenRevoked))
	restore()
	takesEffect("tenant deleted", `{"tenants":{"team-b":{}}}`, 401, string(gateway.ReasonUnknownTenant))
	restore()
	takesEffect("tenant suspended", `{"tenants":{"team-a":{"suspended":true}}}`, 403, string(gateway.ReasonTenantSuspended))

	// Invalid updates are refused as a whole: neither part of the Secret is applied.
	reloadOK := func() float64 { return gauge(t, registry, "opstrace_gateway_auth_secret_last_reload_successful") }
	for _, invalid := range []struct{ what, dataKey, value string }{
		{"a tenant list with an unknown field", ref.TenantsKey, `{"tenants":{"team-a":{}},"unexpected":1}`},
		{"a tenant list that is not JSON", ref.TenantsKey, `{"tenants":`},
		{"a key set that is not JSON", ref.KeysKey, `not json`},
	} {
		update(invalid.dataKey, invalid.value)
		poll(t, "the gateway to see "+invalid.what, func() bool { return reloadOK() == 0 })
		if status, reason := query(); status != 403 {
			t.Fatalf("after %s: %d %q, want the previous state (team-a suspended, 403) kept", invalid.what, status, reason)
		}
		secret.Data[ref.KeysKey] = jwks
		update(ref.TenantsKey, `{"tenants":{"team-a":{"suspended":true}}}`)
		poll(t, "a valid Secret after "+invalid.what+" to be applied", func() bool { return reloadOK() == 1 })
	}
	restore()

	secret.Data[ref.KeysKey] = []byte(`{"keys":[]}`)
	takesEffect("signing key removed", `{"tenants":{"team-a":{}}}`, 401, string(tokens.ReasonUnknownKey))
	secret.Data[ref.KeysKey] = jwks
	restore()

	if err := secrets.Delete(ctx, ref.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	poll(t, "the deleted Secret to refuse every tenant", func() bool {
		status, reason := query()
		return status == 401 && reason == string(gateway.ReasonUnknownTenant)
	})
	t.Logf("Secret deleted -> gateway refuses: %v", time.Since(start))
}
