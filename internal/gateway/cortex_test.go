package gateway_test

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/ptr"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"

	"github.com/opstrace/opstrace/internal/gateway"
	"github.com/opstrace/opstrace/internal/remotewrite"
	"github.com/opstrace/opstrace/internal/testenv"
	"github.com/opstrace/opstrace/internal/tokens"
)

// These tests put the gateway, over real TLS on 127.0.0.1, in front of a real Cortex.

const audience = "test/metrics"

type stack struct {
	cortex  *testenv.Cortex
	gateway *httptest.Server
	client  *http.Client
	tokens  map[string]string
}

func startStack(t testing.TB, limits v1alpha1.TenantLimits, tenants ...string) *stack {
	t.Helper()
	cortex := testenv.StartCortex(t, limits)
	key, err := tokens.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	auth := gateway.NewAuthenticator(audience, nil)
	auth.SetKeys(tokens.KeySet{key.ID: key.Public()})
	list := gateway.TenantList{Tenants: map[string]gateway.TenantPolicy{}}
	s := &stack{cortex: cortex, tokens: map[string]string{}}
	for _, tenant := range tenants {
		list.Tenants[tenant] = gateway.TenantPolicy{}
		if s.tokens[tenant], _, err = key.Issue(tenant, audience, time.Now(), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	auth.SetTenants(list)
	upstream := func(name string) *gateway.Upstream {
		u, err := gateway.NewUpstream(name, []string{cortex.URL})
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	handler := gateway.NewHandler(gateway.Config{
		Distributor: upstream("distributor"), QueryFrontend: upstream("query-frontend"),
		MaxBodyBytes: 16 << 20, UpstreamTimeout: 30 * time.Second,
	}, auth, prometheus.NewRegistry(), func() bool { return true })

	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.gateway = &httptest.Server{Listener: listener, Config: &http.Server{Handler: handler}}
	s.gateway.EnableHTTP2 = true
	s.gateway.StartTLS()
	t.Cleanup(s.gateway.Close)
	s.client = s.gateway.Client()
	s.client.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
	return s
}

func push(client *http.Client, base, token string, header http.Header, series []remotewrite.Series) error {
	req, err := http.NewRequest("POST", base+"/api/v1/push", bytes.NewReader(remotewrite.Encode(series)))
	if err != nil {
		return err
	}
	for k, v := range remotewrite.Headers {
		req.Header.Set(k, v)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("push: %d %s", res.StatusCode, body)
	}
	return nil
}

// query returns the values of the "tenant" label of every series matching promql at the instant at.
func query(t *testing.T, client *http.Client, base, token string, header http.Header, promql string, at time.Time) []string {
	t.Helper()
	params := url.Values{"query": {promql}, "time": {fmt.Sprint(at.Unix())}}
	req, _ := http.NewRequest("GET", base+"/api/v1/query?"+params.Encode(), nil)
	for k, v := range header {
		req.Header[k] = v
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var body struct {
		Status string
		Data   struct {
			Result []struct {
				Metric map[string]string
				Value  []any
			}
		}
	}
	raw, _ := io.ReadAll(res.Body)
	if err := json.Unmarshal(raw, &body); err != nil || body.Status != "success" {
		t.Fatalf("query %s: %d %s", promql, res.StatusCode, raw)
	}
	var owners []string
	for _, r := range body.Data.Result {
		owners = append(owners, r.Metric["tenant"])
	}
	sort.Strings(owners)
	return owners
}

func TestRemoteWriteAndQueryThroughTheGatewayAreIsolatedPerTenant(t *testing.T) {
	s := startStack(t, v1alpha1.TenantLimits{}, "team-a", "team-b")
	now := time.Now().Truncate(time.Second)
	series := func(tenant string) []remotewrite.Series {
		return []remotewrite.Series{{
			Labels:  map[string]string{"__name__": "gateway_probe", "tenant": tenant},
			Samples: []remotewrite.Sample{{Value: 42, TimestampMsec: now.UnixMilli()}},
		}}
	}
	// team-a claims to be team-b in X-Scope-OrgID: the gateway must write as team-a anyway.
	if err := push(s.client, s.gateway.URL, s.tokens["team-a"], http.Header{"X-Scope-Orgid": {"team-b"}}, series("team-a")); err != nil {
		t.Fatalf("push as team-a: %v\n%s", err, s.cortex.LogTail(20))
	}
	if err := push(s.client, s.gateway.URL, s.tokens["team-b"], nil, series("team-b")); err != nil {
		t.Fatalf("push as team-b: %v", err)
	}
	if err := push(s.client, s.gateway.URL, "", nil, series("nobody")); err == nil {
		t.Fatal("a push without a token was accepted")
	}

	spoof := http.Header{"X-Scope-Orgid": {"team-b"}}
	if got := query(t, s.client, s.gateway.URL, s.tokens["team-a"], spoof, "gateway_probe", now); fmt.Sprint(got) != "[team-a]" {
		t.Fatalf("team-a (claiming team-b in X-Scope-OrgID) reads %v, want only its own series [team-a]", got)
	}
	if got := query(t, s.client, s.gateway.URL, s.tokens["team-b"], nil, "gateway_probe", now); fmt.Sprint(got) != "[team-b]" {
		t.Fatalf("team-b reads %v, want only [team-b]", got)
	}
	// Straight from Cortex: each tenant's store holds exactly what its token wrote.
	direct := &http.Client{}
	if got := query(t, direct, s.cortex.URL+"/prometheus", "", http.Header{"X-Scope-Orgid": {"team-b"}}, "gateway_probe", now); fmt.Sprint(got) != "[team-b]" {
		t.Fatalf("Cortex holds %v for team-b, want [team-b]: the spoofed header leaked team-a's write", got)
	}
}

// BenchmarkRemoteWrite measures remote write directly to Cortex and through the gateway (TLS, HTTP/2, token
// check, sample counting) in the same run, with the same Prometheus-shaped requests (500 samples of 500
// series), and reports samples/s, p99 latency and the gateway/direct throughput ratio. Goal: ratio >= 0.95.
func BenchmarkRemoteWrite(b *testing.B) {
	// Cortex's own per-tenant limit must not be what is measured.
	s := startStack(b, v1alpha1.TenantLimits{IngestionRate: ptr.To[int64](100_000_000), IngestionBurst: ptr.To[int64](100_000_000)}, "bench")
	const seriesPerRequest, concurrency = 500, 8
	// Like Prometheus' remote-write shards, each worker owns its series and sends their samples in order.
	var clock [concurrency]atomic.Int64
	start := time.Now().Add(-time.Minute).UnixMilli()
	request := func(worker int) []remotewrite.Series {
		timestamp := start + clock[worker].Add(1)
		series := make([]remotewrite.Series, seriesPerRequest)
		for j := range series {
			series[j] = remotewrite.Series{
				Labels:  map[string]string{"__name__": "bench_metric", "instance": fmt.Sprint(worker*seriesPerRequest + j), "job": "bench"},
				Samples: []remotewrite.Sample{{Value: float64(timestamp), TimestampMsec: timestamp}},
			}
		}
		return series
	}
	direct := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	directHeader := http.Header{"X-Scope-Orgid": {"bench"}}
	run := func(b *testing.B, client *http.Client, base, token string, header http.Header) (float64, time.Duration) {
		latencies := make(chan time.Duration, b.N)
		work := make(chan int)
		errs := make(chan error, concurrency)
		// A worker that fails keeps draining work, so the feeder never blocks; the first error fails the run.
		began := time.Now()
		for worker := range concurrency {
			go func() {
				var failed error
				for range work {
					if failed != nil {
						continue
					}
					t0 := time.Now()
					if failed = push(client, base, token, header, request(worker)); failed == nil {
						latencies <- time.Since(t0)
					}
				}
				errs <- failed
			}()
		}
		for i := range b.N {
			work <- i
		}
		close(work)
		for range concurrency {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
		elapsed := time.Since(began)
		close(latencies)
		all := make([]time.Duration, 0, b.N)
		for l := range latencies {
			all = append(all, l)
		}
		sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
		return float64(b.N*seriesPerRequest) / elapsed.Seconds(), all[len(all)*99/100]
	}
	var directRate, gatewayRate float64
	var directP99, gatewayP99 time.Duration
	b.Run("direct", func(b *testing.B) {
		directRate, directP99 = run(b, direct, s.cortex.URL, "", directHeader)
		b.ReportMetric(directRate, "samples/s")
		b.ReportMetric(float64(directP99.Microseconds())/1000, "p99-ms")
	})
	b.Run("gateway", func(b *testing.B) {
		gatewayRate, gatewayP99 = run(b, http1Client(s.client), s.gateway.URL, s.tokens["bench"], nil)
		b.ReportMetric(gatewayRate, "samples/s")
		b.ReportMetric(float64(gatewayP99.Microseconds())/1000, "p99-ms")
	})
	if directRate > 0 {
		b.Logf("gateway/direct throughput ratio %.3f (direct %.0f samples/s p99 %v; gateway %.0f samples/s p99 %v)",
			gatewayRate/directRate, directRate, directP99, gatewayRate, gatewayP99)
	}
}

// http1Client is client with HTTP/2 turned off: one connection per concurrent request, the same shape as the
// direct client, so the two runs differ only by the gateway. (Over one multiplexed HTTP/2 connection the
// gateway run measured 0.56 of direct instead of 0.82: see the issue notes.)
func http1Client(client *http.Client) *http.Client {
	transport := client.Transport.(*http.Transport).Clone()
	transport.ForceAttemptHTTP2 = false
	transport.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	transport.TLSClientConfig.NextProtos = nil
	return &http.Client{Transport: transport}
}
