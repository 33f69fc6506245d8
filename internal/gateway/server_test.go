package gateway

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/opstrace/opstrace/internal/remotewrite"
	"github.com/opstrace/opstrace/internal/testenv"
)

// recorder stands in for a Cortex component where only what the gateway forwards matters; the integration
// test talks to a real Cortex.
type recorder struct {
	mu       sync.Mutex
	requests []*http.Request
	bodies   [][]byte
}

func (rec *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rec.mu.Lock()
	rec.requests = append(rec.requests, r.Clone(context.Background()))
	rec.bodies = append(rec.bodies, body)
	rec.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

func (rec *recorder) last(t *testing.T) (*http.Request, []byte) {
	t.Helper()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.requests) == 0 {
		t.Fatal("nothing reached the upstream")
	}
	return rec.requests[len(rec.requests)-1], rec.bodies[len(rec.bodies)-1]
}

type gatewayFixture struct {
	*fixture
	handler       *Handler
	distributor   *recorder
	queryFrontend *recorder
	registry      *prometheus.Registry
}

func newGatewayFixture(t *testing.T, maxBody int64) *gatewayFixture {
	t.Helper()
	g := &gatewayFixture{fixture: newFixture(t), distributor: &recorder{}, queryFrontend: &recorder{}, registry: prometheus.NewRegistry()}
	distributor, err := NewUpstream("distributor", []string{testenv.LoopbackServer(t, g.distributor).URL})
	if err != nil {
		t.Fatal(err)
	}
	queryFrontend, err := NewUpstream("query-frontend", []string{testenv.LoopbackServer(t, g.queryFrontend).URL})
	if err != nil {
		t.Fatal(err)
	}
	g.handler = NewHandler(Config{Distributor: distributor, QueryFrontend: queryFrontend, MaxBodyBytes: maxBody,
		UpstreamTimeout: 5 * time.Second}, g.auth, g.registry, func() bool { return true })
	return g
}

func (g *gatewayFixture) do(method, path, token string, body []byte, header http.Header) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, bytes.NewReader(body))
	for k, v := range header {
		req.Header[k] = v
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res := httptest.NewRecorder()
	g.handler.ServeHTTP(res, req)
	return res
}

func writeBody(samples int) []byte {
	s := remotewrite.Series{Labels: map[string]string{"__name__": "up"}}
	for i := range samples {
		s.Samples = append(s.Samples, remotewrite.Sample{Value: 1, TimestampMsec: int64(i)})
	}
	return remotewrite.Encode([]remotewrite.Series{s})
}

func errorBody(t *testing.T, res *httptest.ResponseRecorder) string {
	t.Helper()
	var body struct{ Status, ErrorType, Error string }
	if err := json.Unmarshal(res.Body.Bytes(), &body); err != nil || body.Status != "error" {
		t.Fatalf("error response is not Prometheus-shaped JSON: %q", res.Body.String())
	}
	return body.Error
}

func TestRemoteWriteIsForwardedAsTheTokensTenantOnly(t *testing.T) {
	g := newGatewayFixture(t, 1<<20)
	body := writeBody(3)
	res := g.do("POST", "/api/v1/push", g.valid, body, http.Header{
		"X-Scope-Orgid": {"team-b"}, "Cookie": {"session=1"}, "Content-Encoding": {"snappy"},
	})
	if res.Code != http.StatusOK {
		t.Fatalf("push: %d %s", res.Code, res.Body)
	}
	forwarded, forwardedBody := g.distributor.last(t)
	if got := forwarded.Header.Values(TenantHeader); len(got) != 1 || got[0] != "team-a" {
		t.Fatalf("X-Scope-OrgID upstream = %v, want only the token's tenant team-a", got)
	}
	if forwarded.Header.Get("Authorization") != "" || forwarded.Header.Get("Cookie") != "" {
		t.Fatal("the client's credentials were forwarded to Cortex")
	}
	if forwarded.URL.Path != "/api/v1/push" || !bytes.Equal(forwardedBody, body) {
		t.Fatalf("forwarded %s with %d bytes, want /api/v1/push with the %d bytes sent", forwarded.URL.Path, len(forwardedBody), len(body))
	}
	if got := testutil.ToFloat64(g.handler.metrics.samples.WithLabelValues("team-a")); got != 3 {
		t.Fatalf("samples counted for team-a = %v, want 3", got)
	}
}

func TestPrometheusAPIIsServedAtTheRootForGrafana(t *testing.T) {
	g := newGatewayFixture(t, 1<<20)
	for _, path := range []string{
		"/api/v1/query?query=up", "/api/v1/query_range?query=up&start=1&end=2&step=1", "/api/v1/series?match[]=up",
		"/api/v1/labels", "/api/v1/label/job/values", "/api/v1/metadata", "/api/v1/query_exemplars?query=up",
		"/api/v1/status/buildinfo",
	} {
		res := g.do("GET", path, g.valid, nil, nil)
		if res.Code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, res.Code, res.Body)
		}
		forwarded, _ := g.queryFrontend.last(t)
		if want := "/prometheus" + strings.SplitN(path, "?", 2)[0]; forwarded.URL.Path != want {
			t.Errorf("GET %s reached %s, want %s", path, forwarded.URL.Path, want)
		}
		if forwarded.Header.Get(TenantHeader) != "team-a" {
			t.Errorf("GET %s reached Cortex as tenant %q", path, forwarded.Header.Get(TenantHeader))
		}
	}
	res := g.do("POST", "/api/v1/query", g.valid, []byte("query=up"), http.Header{"Content-Type": {"application/x-www-form-urlencoded"}})
	if forwarded, body := g.queryFrontend.last(t); res.Code != 200 || forwarded.Method != "POST" || string(body) != "query=up" {
		t.Fatalf("POST /api/v1/query: %d, forwarded %s %q", res.Code, forwarded.Method, body)
	}
}

func TestRefusalsAreJSONWithAReasonAndCounted(t *testing.T) {
	g := newGatewayFixture(t, 1<<20)
	res := g.do("POST", "/api/v1/push", "", writeBody(1), nil)
	if res.Code != 401 || errorBody(t, res) != "missing token" || res.Header().Get("WWW-Authenticate") == "" {
		t.Fatalf("no token: %d %s", res.Code, res.Body)
	}
	res = g.do("GET", "/api/v1/query?query=up", "not.a.token", nil, nil)
	if res.Code != 401 || errorBody(t, res) != "malformed token" {
		t.Fatalf("malformed token: %d %s", res.Code, res.Body)
	}
	if got := testutil.ToFloat64(g.handler.metrics.authFailures.WithLabelValues("missing token")); got != 1 {
		t.Fatalf("auth failures for missing token = %v, want 1", got)
	}
	if len(g.distributor.requests)+len(g.queryFrontend.requests) != 0 {
		t.Fatal("a refused request reached Cortex")
	}
}

func TestLogsSayTheyAreNotEnabled(t *testing.T) {
	g := newGatewayFixture(t, 1<<20)
	res := g.do("POST", "/loki/api/v1/push", g.valid, []byte("{}"), nil)
	if res.Code != http.StatusNotImplemented || errorBody(t, res) != "logs are not enabled on this cluster" {
		t.Fatalf("loki push: %d %s", res.Code, res.Body)
	}
	if res := g.do("GET", "/loki/api/v1/query", "", nil, nil); res.Code != 401 {
		t.Fatalf("an unauthenticated logs request answered %d, want 401 before anything else", res.Code)
	}
}

func TestIngestionLimitsAnswer429WithRetryAfter(t *testing.T) {
	g := newGatewayFixture(t, 1<<20)
	g.auth.SetTenants(TenantList{Tenants: map[string]TenantPolicy{"team-a": {IngestionRate: 10, IngestionBurst: 20}}})

	if res := g.do("POST", "/api/v1/push", g.valid, writeBody(15), nil); res.Code != 200 {
		t.Fatalf("first push within the burst: %d %s", res.Code, res.Body)
	}
	res := g.do("POST", "/api/v1/push", g.valid, writeBody(15), nil)
	if res.Code != http.StatusTooManyRequests || res.Header().Get("Retry-After") == "" {
		t.Fatalf("second push beyond the burst: %d Retry-After %q", res.Code, res.Header().Get("Retry-After"))
	}
	if msg := errorBody(t, res); !strings.Contains(msg, "10 samples/s") {
		t.Fatalf("429 does not say the limit: %q", msg)
	}
	res = g.do("POST", "/api/v1/push", g.valid, writeBody(21), nil)
	if res.Code != http.StatusRequestEntityTooLarge || !strings.Contains(errorBody(t, res), "burst of 20") {
		t.Fatalf("a request larger than the burst: %d %s", res.Code, res.Body)
	}
	if got := len(g.distributor.requests); got != 1 {
		t.Fatalf("%d pushes reached Cortex, want only the first", got)
	}
}

func TestOversizedAndMalformedBodiesAreRefused(t *testing.T) {
	g := newGatewayFixture(t, 64)
	if res := g.do("POST", "/api/v1/push", g.valid, bytes.Repeat([]byte("x"), 65), nil); res.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("body over the limit: %d %s", res.Code, res.Body)
	}
	if res := g.do("POST", "/api/v1/push", g.valid, []byte("plain text"), nil); res.Code != http.StatusBadRequest {
		t.Fatalf("body that is not remote write: %d %s", res.Code, res.Body)
	}
}

// selfSigned writes a certificate and key for 127.0.0.1 and returns the certificate.
func selfSigned(t *testing.T, certFile, keyFile, commonName string) *x509.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	template := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: commonName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	writeFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	writeFile(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	cert, _ := x509.ParseCertificate(der)
	return cert
}

// writeFile replaces a file atomically, as the kubelet's symlink swap does.
func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestCertificateReloadsWithoutRestart(t *testing.T) {
	g := newGatewayFixture(t, 1<<20)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	selfSigned(t, certFile, keyFile, "first")

	certificate := NewCertificate(certFile, keyFile, slog.New(slog.DiscardHandler))
	if err := certificate.Load(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	watching := make(chan struct{})
	go func() { certificate.Watch(ctx, 20*time.Millisecond); close(watching) }()
	defer cancel()

	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := &http.Server{Handler: g.handler, TLSConfig: certificate.TLSConfig()}
	go func() { _ = server.ServeTLS(listener, "", "") }()
	t.Cleanup(func() { _ = server.Close() })

	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, // the test checks which certificate is served
		ForceAttemptHTTP2: true, DisableKeepAlives: true,
	}}
	served := func() string {
		t.Helper()
		req, _ := http.NewRequest("GET", "https://"+listener.Addr().String()+"/api/v1/labels", nil)
		req.Header.Set("Authorization", "Bearer "+g.valid)
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || res.ProtoMajor != 2 {
			t.Fatalf("GET /api/v1/labels: %d %s over HTTP/%d", res.StatusCode, body, res.ProtoMajor)
		}
		return res.TLS.PeerCertificates[0].Subject.CommonName
	}
	if got := served(); got != "first" {
		t.Fatalf("serving certificate %q, want first", got)
	}

	selfSigned(t, certFile, keyFile, "second")
	eventually(t, func() bool { return served() == "second" }, "the new certificate to be served")

	// From here the files are checked synchronously, to know exactly which update has been seen.
	cancel()
	<-watching
	writeFile(t, certFile, []byte("-----BEGIN CERTIFICATE-----\nhalf-written\n"))
	certificate.file.check(certificate.log)
	if got := served(); got != "second" || !certificate.Loaded() {
		t.Fatalf("after an invalid certificate: serving %q (loaded %v), want the previous one (second) kept", got, certificate.Loaded())
	}
	selfSigned(t, certFile, keyFile, "third")
	certificate.file.check(certificate.log)
	if got := served(); got != "third" {
		t.Fatalf("after a valid certificate again: serving %q, want third", got)
	}
}

// eventually polls cond for up to five seconds; the certificate is re-read every 20 ms in these tests.
func eventually(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BenchmarkHandlerRemoteWrite measures the gateway's own work for one Prometheus-shaped remote-write request
// (500 samples of 500 series): authentication, sample counting, rate limiting and proxying to a loopback
// upstream that discards the body. Unlike BenchmarkRemoteWrite, it is stable on a busy machine, so it shows
// what a change to the hot path saves (ns/op, B/op, allocs/op).
func BenchmarkHandlerRemoteWrite(b *testing.B) {
	f := newFixture(b)
	f.auth.SetTenants(TenantList{Tenants: map[string]TenantPolicy{"team-a": {IngestionRate: 1e12, IngestionBurst: 1e12}}})
	discard := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(io.Discard, r.Body) })
	distributor, err := NewUpstream("distributor", []string{testenv.LoopbackServer(b, discard).URL})
	if err != nil {
		b.Fatal(err)
	}
	handler := NewHandler(Config{Distributor: distributor, QueryFrontend: distributor, MaxBodyBytes: 16 << 20,
		UpstreamTimeout: 5 * time.Second}, f.auth, prometheus.NewRegistry(), func() bool { return true })
	series := make([]remotewrite.Series, 500)
	for i := range series {
		series[i] = remotewrite.Series{
			Labels:  map[string]string{"__name__": "bench_metric", "instance": strconv.Itoa(i), "job": "bench"},
			Samples: []remotewrite.Sample{{Value: 1, TimestampMsec: 1}},
		}
	}
	body := remotewrite.Encode(series)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := httptest.NewRequest("POST", "/api/v1/push", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+f.valid)
			res := httptest.NewRecorder()
			handler.ServeHTTP(res, req)
			if res.Code != http.StatusOK {
				b.Fatalf("push: %d %s", res.Code, res.Body)
			}
		}
	})
}
