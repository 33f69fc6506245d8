package gateway

import (
	"bytes"
	"compress/gzip"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang/snappy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/opstrace/opstrace/internal/testenv"
)

// lokiFixture stands recorders in for Loki's components; lokistack_test.go talks to a real Loki.
type lokiFixture struct {
	*gatewayFixture
	distributor, queryFrontend, querier *recorder
}

func newLokiFixture(t *testing.T, maxBody int64) *lokiFixture {
	t.Helper()
	f := &lokiFixture{gatewayFixture: newGatewayFixture(t, maxBody),
		distributor: &recorder{}, queryFrontend: &recorder{}, querier: &recorder{}}
	upstream := func(name string, h http.Handler) *Upstream {
		u, err := NewUpstream(name, []string{testenv.LoopbackServer(t, h).URL})
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	f.handler = NewHandler(Config{
		Distributor: f.gatewayFixture.handler.cfg.Distributor, QueryFrontend: f.gatewayFixture.handler.cfg.QueryFrontend,
		Loki: &LokiUpstreams{
			Distributor:   upstream("loki-distributor", f.distributor),
			QueryFrontend: upstream("loki-query-frontend", f.queryFrontend),
			Querier:       upstream("loki-querier", f.querier),
		},
		MaxBodyBytes: maxBody, UpstreamTimeout: 5 * time.Second,
	}, f.auth, prometheus.NewRegistry(), func() bool { return true })
	return f
}

func gzipped(t *testing.T, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestLokiPayloadBytesAreTheUncompressedPushPayload(t *testing.T) {
	jsonPush := []byte(`{"streams":[{"stream":{"job":"x"},"values":[["1","line"]]}]}`)
	protobuf := bytes.Repeat([]byte{0x0a, 0x03, 'a', 'b', 'c'}, 100) // stands in for a PushRequest: only its length counts
	for _, tt := range []struct {
		name, encoding, contentType string
		body                        []byte
		limit                       int64
		want                        int64
		status                      int
		message                     string
	}{
		{name: "JSON", contentType: "application/json", body: jsonPush, limit: 1000, want: int64(len(jsonPush))},
		{name: "JSON with charset", contentType: "application/json; charset=utf-8", body: jsonPush, limit: 1000, want: int64(len(jsonPush))},
		{name: "gzip JSON", encoding: "gzip", contentType: "application/json", body: gzipped(t, jsonPush), limit: 1000, want: int64(len(jsonPush))},
		{name: "snappy protobuf", contentType: "application/x-protobuf", body: snappy.Encode(nil, protobuf), limit: 1000, want: 500},
		{name: "protobuf without content type", body: snappy.Encode(nil, protobuf), limit: 1000, want: 500},
		{name: "snappy protobuf announced as snappy", encoding: "snappy", body: snappy.Encode(nil, protobuf), limit: 1000, want: 500},
		{name: "gzip snappy protobuf", encoding: "gzip", body: gzipped(t, snappy.Encode(nil, protobuf)), limit: 1000, want: 500},
		{name: "protobuf larger than the limit uncompressed", body: snappy.Encode(nil, protobuf), limit: 499, status: 413, message: "exceeds 499 bytes uncompressed"},
		{name: "gzip bomb", encoding: "gzip", contentType: "application/json", body: gzipped(t, make([]byte, 1<<20)), limit: 1000, status: 413, message: "exceeds 1000 bytes"},
		{name: "JSON sent as protobuf", contentType: "application/x-protobuf", body: []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, limit: 1000, status: 400, message: "not a snappy-compressed protobuf"},
		{name: "not gzip", encoding: "gzip", body: jsonPush, limit: 1000, status: 400, message: "not gzip-compressed"},
		{name: "unknown encoding", encoding: "br", body: jsonPush, limit: 1000, status: 415, message: `Content-Encoding "br" is not supported`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, status, err := lokiPayloadBytes(tt.body, tt.encoding, tt.contentType, tt.limit)
			if tt.status != 0 {
				if err == nil || status != tt.status || !strings.Contains(err.Error(), tt.message) {
					t.Fatalf("got %d bytes, status %d, error %v; want status %d with %q", got, status, err, tt.status, tt.message)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %d bytes (error %v), want %d", got, err, tt.want)
			}
		})
	}
}

func TestLokiRoutesReachTheirComponentAsTheTokensTenant(t *testing.T) {
	f := newLokiFixture(t, 1<<20)
	push := []byte(`{"streams":[{"stream":{"job":"x"},"values":[["1","line"]]}]}`)
	res := f.do("POST", "/loki/api/v1/push", f.valid, push, http.Header{
		"Content-Type": {"application/json"}, "X-Scope-Orgid": {"team-b"}, "Cookie": {"session=1"},
	})
	if res.Code != 200 {
		t.Fatalf("push: %d %s", res.Code, res.Body)
	}
	forwarded, body := f.distributor.last(t)
	if got := forwarded.Header.Values(TenantHeader); len(got) != 1 || got[0] != "team-a" {
		t.Fatalf("X-Scope-OrgID at the Loki distributor = %v, want only the token's tenant team-a", got)
	}
	if forwarded.Header.Get("Authorization") != "" || forwarded.Header.Get("Cookie") != "" {
		t.Fatal("the client's credentials were forwarded to Loki")
	}
	if forwarded.URL.Path != "/loki/api/v1/push" || !bytes.Equal(body, push) {
		t.Fatalf("forwarded %s %q, want /loki/api/v1/push with the body sent", forwarded.URL.Path, body)
	}
	if got := testutil.ToFloat64(f.handler.metrics.logBytes.WithLabelValues("team-a")); got != float64(len(push)) {
		t.Fatalf("log bytes counted for team-a = %v, want %d", got, len(push))
	}

	for _, path := range lokiQueryPaths {
		path = strings.ReplaceAll(path, "{name}", "job")
		res := f.do("GET", path+"?query=%7Bjob%3D%22x%22%7D", f.valid, nil, http.Header{"X-Scope-Orgid": {"team-b"}})
		if res.Code != 200 {
			t.Fatalf("GET %s: %d %s", path, res.Code, res.Body)
		}
		forwarded, _ := f.queryFrontend.last(t)
		if forwarded.URL.Path != path || forwarded.URL.Query().Get("query") != `{job="x"}` {
			t.Errorf("GET %s reached the query-frontend as %s", path, forwarded.URL)
		}
		if got := forwarded.Header.Values(TenantHeader); len(got) != 1 || got[0] != "team-a" {
			t.Errorf("GET %s reached Loki as tenant %v", path, got)
		}
	}
	res = f.do("POST", "/loki/api/v1/query_range", f.valid, []byte("query=%7Bjob%3D%22x%22%7D"),
		http.Header{"Content-Type": {"application/x-www-form-urlencoded"}})
	if forwarded, body := f.queryFrontend.last(t); res.Code != 200 || forwarded.Method != "POST" || string(body) != "query=%7Bjob%3D%22x%22%7D" {
		t.Fatalf("POST /loki/api/v1/query_range: %d, forwarded %s %q", res.Code, forwarded.Method, body)
	}

	// Without an upgrade, the recorder answers the tail like any GET: what matters is where it went.
	if res := f.do("GET", "/loki/api/v1/tail?query=%7Bjob%3D%22x%22%7D", f.valid, nil, nil); res.Code != 200 {
		t.Fatalf("tail: %d %s", res.Code, res.Body)
	}
	if forwarded, _ := f.querier.last(t); forwarded.URL.Path != "/loki/api/v1/tail" || forwarded.Header.Get(TenantHeader) != "team-a" {
		t.Fatalf("tail reached the querier as %s, tenant %q", forwarded.URL.Path, forwarded.Header.Get(TenantHeader))
	}
	if res := f.do("GET", "/loki/api/v1/rules", f.valid, nil, nil); res.Code != 404 {
		t.Fatalf("a Loki path the gateway does not serve answered %d, want 404", res.Code)
	}
	if len(f.gatewayFixture.distributor.requests)+len(f.gatewayFixture.queryFrontend.requests) != 0 {
		t.Fatal("Loki traffic reached Cortex")
	}
}

func TestLogIngestionLimitsAreInBytes(t *testing.T) {
	f := newLokiFixture(t, 1<<20)
	f.auth.SetTenants(TenantList{Tenants: map[string]TenantPolicy{"team-a": {
		IngestionRate: 1, IngestionBurst: 1, // the sample limit does not apply to logs
		LogIngestionRate: 100, LogIngestionBurst: 150,
	}}})
	json := func(n int) []byte {
		prefix := `{"streams":[{"stream":{"job":"x"},"values":[["1","`
		return []byte(prefix + strings.Repeat("x", n-len(prefix)-6) + `"]]}]}`)
	}
	header := http.Header{"Content-Type": {"application/json"}}
	if res := f.do("POST", "/loki/api/v1/push", f.valid, json(100), header); res.Code != 200 {
		t.Fatalf("first push within the burst: %d %s", res.Code, res.Body)
	}
	res := f.do("POST", "/loki/api/v1/push", f.valid, json(100), header)
	if res.Code != http.StatusTooManyRequests || res.Header().Get("Retry-After") != "1" {
		t.Fatalf("second push beyond the burst: %d Retry-After %q", res.Code, res.Header().Get("Retry-After"))
	}
	if msg := errorBody(t, res); !strings.Contains(msg, "100 bytes/s") {
		t.Fatalf("429 does not say the limit: %q", msg)
	}
	res = f.do("POST", "/loki/api/v1/push", f.valid, json(151), header)
	if res.Code != http.StatusRequestEntityTooLarge || !strings.Contains(errorBody(t, res), "burst of 150 bytes") {
		t.Fatalf("a push larger than the burst: %d %s", res.Code, res.Body)
	}
	if got := len(f.distributor.requests); got != 1 {
		t.Fatalf("%d pushes reached Loki, want only the first", got)
	}
	if got := testutil.ToFloat64(f.handler.metrics.rateLimited.WithLabelValues("team-a", "logs_push")); got != 2 {
		t.Fatalf("rate-limited log pushes counted = %v, want 2", got)
	}
}
