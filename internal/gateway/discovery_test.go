package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/opstrace/opstrace/internal/gateway"
	"github.com/opstrace/opstrace/internal/remotewrite"
	"github.com/opstrace/opstrace/internal/testenv"
	"github.com/opstrace/opstrace/internal/tokens"
)

// backends are loopback servers that count the requests each receives.
type backends struct {
	mu    sync.Mutex
	ports map[string]int32 // by name
	hits  map[string]int
}

func startBackends(t *testing.T, names ...string) *backends {
	t.Helper()
	b := &backends{ports: map[string]int32{}, hits: map[string]int{}}
	for _, name := range names {
		server := testenv.LoopbackServer(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
			b.mu.Lock()
			b.hits[name]++
			b.mu.Unlock()
		}))
		_, port, _ := net.SplitHostPort(server.Listener.Addr().String())
		n, _ := strconv.Atoi(port)
		b.ports[name] = int32(n)
	}
	return b
}

// take returns and resets the counts of requests received.
func (b *backends) take() map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	hits := b.hits
	b.hits = map[string]int{}
	return hits
}

func (b *backends) urls(names ...string) []string {
	var out []string
	for _, name := range names {
		out = append(out, fmt.Sprintf("http://%s:%d", backendAddress, b.ports[name]))
	}
	slices.Sort(out)
	return out
}

func hosts(targets []*url.URL) []string {
	out := make([]string, len(targets))
	for i, target := range targets {
		out[i] = target.String()
	}
	return out
}

// backendAddress stands for 127.0.0.1 in EndpointSlices, where the API server refuses loopback addresses;
// the gateway under test dials 127.0.0.1 instead (toLoopback).
const backendAddress = "192.0.2.10"

func toLoopback(ctx context.Context, network, address string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil || host != backendAddress {
		return nil, fmt.Errorf("the test gateway dials only %s, not %s", backendAddress, address)
	}
	var dialer net.Dialer
	return dialer.DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
}

// endpointSlice is one slice of service with one endpoint, a backend (each backend has its own port, and a
// slice's ports are shared by all its endpoints), and a port named portName.
func endpointSlice(name, service, portName string, port int32, conditions discoveryv1.EndpointConditions) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{backendAddress}, Conditions: conditions}},
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To(portName), Port: ptr.To(port), Protocol: ptr.To(corev1.ProtocolTCP)},
			{Name: ptr.To(portName + "-metrics"), Port: ptr.To[int32](9), Protocol: ptr.To(corev1.ProtocolTCP)},
		},
	}
}

func TestUpstreamsFollowTheReadyEndpointsOfTheirEndpointSlices(t *testing.T) {
	const namespace = "discovery"
	admin := kube(t, namespace)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := startBackends(t, "ready", "ready-unknown", "not-ready", "terminating", "no-http-port", "query-frontend", "other-service")

	distributor, _ := gateway.NewUpstream("distributor", nil)
	queryFrontend, _ := gateway.NewUpstream("query-frontend", nil)
	discovery, err := gateway.NewDiscovery(gatewayClient(t, admin, namespace, "prod-gateway-auth"), namespace, "http", slog.New(slog.DiscardHandler),
		gateway.ServiceUpstream{Service: "prod-distributor", Upstream: distributor},
		gateway.ServiceUpstream{Service: "prod-query-frontend", Upstream: queryFrontend})
	if err != nil {
		t.Fatal(err)
	}
	discovering := make(chan struct{})
	go func() { discovery.Run(ctx); close(discovering) }()
	defer func() { cancel(); <-discovering }()

	endpointSlices := admin.DiscoveryV1().EndpointSlices(namespace)
	create := func(slice *discoveryv1.EndpointSlice) *discoveryv1.EndpointSlice {
		t.Helper()
		created, err := endpointSlices.Create(ctx, slice, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return created
	}
	ready := create(endpointSlice("prod-distributor-a", "prod-distributor", "http", b.ports["ready"],
		discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true)}))
	create(endpointSlice("prod-distributor-b", "prod-distributor", "http", b.ports["ready-unknown"],
		discoveryv1.EndpointConditions{})) // nil ready means ready
	notReady := create(endpointSlice("prod-distributor-c", "prod-distributor", "http", b.ports["not-ready"],
		discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(false)}))
	// Ready but terminating, as with publishNotReadyAddresses: left out while there are better endpoints.
	create(endpointSlice("prod-distributor-d", "prod-distributor", "http", b.ports["terminating"],
		discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(true)}))
	create(endpointSlice("prod-distributor-e", "prod-distributor", "grpc", b.ports["no-http-port"],
		discoveryv1.EndpointConditions{Ready: ptr.To(true)}))
	create(endpointSlice("prod-query-frontend-a", "prod-query-frontend", "http", b.ports["query-frontend"],
		discoveryv1.EndpointConditions{Ready: ptr.To(true)}))
	create(endpointSlice("prod-other-a", "prod-other", "http", b.ports["other-service"],
		discoveryv1.EndpointConditions{Ready: ptr.To(true)}))

	follows := func(u *gateway.Upstream, want []string) {
		t.Helper()
		start := time.Now()
		poll(t, fmt.Sprintf("%s to send to %v", u.Name, want), func() bool { return slices.Equal(hosts(u.Targets()), want) })
		t.Logf("%s follows its EndpointSlices within %v: %v", u.Name, time.Since(start), want)
	}
	follows(distributor, b.urls("ready", "ready-unknown"))
	follows(queryFrontend, b.urls("query-frontend"))
	if !discovery.HasSynced() {
		t.Fatal("discovery has not synced although it applied the slices")
	}

	key, err := tokens.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	token, _, err := key.Issue("team-a", audience, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	auth := gateway.NewAuthenticator(audience, nil)
	auth.SetKeys(tokens.KeySet{key.ID: key.Public()})
	auth.SetTenants(gateway.TenantList{Tenants: map[string]gateway.TenantPolicy{"team-a": {}}})
	handler := gateway.NewHandler(gateway.Config{Distributor: distributor, QueryFrontend: queryFrontend,
		MaxBodyBytes: 1 << 20, UpstreamTimeout: 5 * time.Second, DialContext: toLoopback},
		auth, prometheus.NewRegistry(), func() bool { return true })
	body := remotewrite.Encode([]remotewrite.Series{{Labels: map[string]string{"__name__": "up"},
		Samples: []remotewrite.Sample{{Value: 1, TimestampMsec: 1}}}})
	push := func() *httptest.ResponseRecorder {
		req := httptest.NewRequest("POST", "/api/v1/push", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		res := httptest.NewRecorder()
		handler.ServeHTTP(res, req)
		return res
	}
	roundRobin := func(want ...string) {
		t.Helper()
		const rounds = 3
		for range rounds * len(want) {
			if res := push(); res.Code != http.StatusOK {
				t.Fatalf("push: %d %s", res.Code, res.Body)
			}
		}
		wantHits := map[string]int{}
		for _, name := range want {
			wantHits[name] = rounds
		}
		if got := b.take(); fmt.Sprint(got) != fmt.Sprint(wantHits) {
			t.Fatalf("pushes reached %v, want %v", got, wantHits)
		}
	}
	roundRobin("ready", "ready-unknown")
	if status, reason := answer(handler, "GET", "/api/v1/labels", token); status != http.StatusOK {
		t.Fatalf("query: %d %s", status, reason)
	}
	if got := b.take(); fmt.Sprint(got) != "map[query-frontend:1]" {
		t.Fatalf("the query reached %v, want the query-frontend", got)
	}

	// The ready endpoint becomes not ready and the not-ready one ready.
	ready.Endpoints[0].Conditions = discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}
	if _, err := endpointSlices.Update(ctx, ready, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	notReady.Endpoints[0].Conditions = discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true)}
	if notReady, err = endpointSlices.Update(ctx, notReady, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	follows(distributor, b.urls("ready-unknown", "not-ready"))
	roundRobin("ready-unknown", "not-ready")

	// No ready endpoint left: 503, in the Prometheus API's error shape.
	if err := endpointSlices.Delete(ctx, "prod-distributor-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	notReady.Endpoints[0].Conditions.Ready = ptr.To(false)
	if _, err := endpointSlices.Update(ctx, notReady, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	follows(distributor, []string{})
	res := push()
	var got map[string]string
	if err := json.Unmarshal(res.Body.Bytes(), &got); err != nil || res.Code != http.StatusServiceUnavailable ||
		res.Header().Get("Content-Type") != "application/json" ||
		fmt.Sprint(got) != fmt.Sprint(map[string]string{"status": "error", "errorType": "unavailable", "error": "no ready distributor endpoints"}) {
		t.Fatalf("push without ready endpoints: %d %q", res.Code, res.Body)
	}
	if got := b.take(); len(got) != 0 {
		t.Fatalf("with no ready endpoint, pushes reached %v", got)
	}
}
