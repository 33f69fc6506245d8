// Package gateway is the one HTTPS endpoint of a cluster: it authenticates every request by its tenant token,
// sets X-Scope-OrgID to the token's tenant, enforces the tenant's ingestion limits, and proxies Prometheus
// remote write and the Prometheus HTTP API to Cortex, and Loki's push, query and tail API to Loki.
package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/opstrace/opstrace/internal/remotewrite"
)

// TenantHeader is the header Cortex and Loki read the tenant from.
const TenantHeader = "X-Scope-OrgID"

// cortexPrometheusPrefix is where Cortex serves the Prometheus HTTP API (its default http_prefix).
const cortexPrometheusPrefix = "/prometheus"

// Config is what the handler needs besides the authenticator.
type Config struct {
	// Distributor receives remote write; QueryFrontend serves the Prometheus HTTP API.
	Distributor   *Upstream
	QueryFrontend *Upstream
	// Loki, when not nil, receives the Loki API; nil answers it 501: logs are not enabled on the cluster.
	Loki *LokiUpstreams
	// MaxBodyBytes bounds a request body.
	MaxBodyBytes int64
	// UpstreamTimeout bounds every call to Cortex and Loki, except a live tail once Loki has accepted it.
	UpstreamTimeout time.Duration
	// DialContext connects to Cortex and Loki; nil means the standard library's dialer. Tests use it to reach
	// loopback servers through the addresses of EndpointSlices, where the API server refuses 127.0.0.0/8.
	DialContext func(ctx context.Context, network, address string) (net.Conn, error)
}

type (
	tenantKey struct{}
	// targetKey carries the backend picked for a request from the handler, which answers 503 when there is
	// none, to the proxy's Rewrite.
	targetKey struct{}
)

// Handler serves the gateway's routes.
type Handler struct {
	cfg      Config
	auth     *Authenticator
	metrics  *metrics
	limiters *limiters
	// logLimiters are the tenants' log ingestion buckets, in bytes.
	logLimiters *limiters
	mux         *http.ServeMux
	ready       func() bool
}

// NewHandler wires the routes. ready reports whether the TLS certificate and the auth Secret have been loaded.
func NewHandler(cfg Config, auth *Authenticator, registerer prometheus.Registerer, ready func() bool) *Handler {
	h := &Handler{cfg: cfg, auth: auth, metrics: newMetrics(registerer), limiters: newLimiters(),
		logLimiters: newLimiters(), ready: ready}
	write := h.proxy(cfg.Distributor, "", cfg.UpstreamTimeout)
	query := h.proxy(cfg.QueryFrontend, cortexPrometheusPrefix, cfg.UpstreamTimeout)

	mux := http.NewServeMux()
	mux.Handle("POST /api/v1/push", h.authenticated("remote_write", h.limitIngestion(write)))
	for _, path := range []string{
		"/api/v1/query", "/api/v1/query_range", "/api/v1/series", "/api/v1/labels",
		"/api/v1/label/{name}/values", "/api/v1/metadata", "/api/v1/query_exemplars", "/api/v1/status/buildinfo",
	} {
		mux.Handle(path, h.authenticated("query", query))
	}
	h.handleLoki(mux)
	mux.HandleFunc("GET /-/healthy", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "OK\n") })
	mux.HandleFunc("GET /-/ready", h.serveReady)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no such endpoint: "+r.URL.Path)
	})
	h.mux = mux
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Handler) serveReady(w http.ResponseWriter, _ *http.Request) {
	if !h.ready() {
		writeError(w, http.StatusServiceUnavailable, "not_ready", "waiting for the TLS certificate and the auth Secret (key set and tenant list)")
		return
	}
	_, _ = io.WriteString(w, "ready\n")
}

// authenticated refuses requests without a valid token and records each request's outcome per tenant.
func (h *Handler) authenticated(route string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		tenant, refused := h.auth.Authenticate(r.Header.Get("Authorization"))
		if refused != nil {
			h.metrics.authFailures.WithLabelValues(string(refused.Reason)).Inc()
			errorType := "unauthorized"
			if refused.Status == http.StatusForbidden {
				errorType = "forbidden"
			}
			if refused.Status == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="opstrace"`)
			}
			writeError(w, refused.Status, errorType, string(refused.Reason))
			return
		}
		recorder := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(recorder, r.WithContext(context.WithValue(r.Context(), tenantKey{}, tenant)))
		h.metrics.requests.WithLabelValues(tenant, route, strconv.Itoa(recorder.status)).Inc()
		// An upgraded connection (a live tail) lasts as long as the client wants: not a latency.
		if recorder.status != http.StatusSwitchingProtocols {
			h.metrics.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
		}
	})
}

// limitIngestion reads the bounded body, counts its samples and takes them from the tenant's token bucket.
func (h *Handler) limitIngestion(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tenant := r.Context().Value(tenantKey{}).(string)
		body, ok := h.readBody(w, r, "send fewer samples per request")
		if !ok {
			return
		}
		samples, err := remotewrite.CountSamples(body)
		if err != nil {
			writeError(w, http.StatusBadRequest, "bad_data", err.Error())
			return
		}
		policy, _ := h.auth.Policy(tenant)
		if delay, ok := h.limiters.take(tenant, policy.IngestionRate, policy.IngestionBurst, samples, time.Now()); !ok {
			h.metrics.rateLimited.WithLabelValues(tenant, "remote_write").Inc()
			if delay < 0 {
				writeError(w, http.StatusRequestEntityTooLarge, "bad_data", fmt.Sprintf(
					"request has %d samples, more than the tenant's ingestion burst of %d", samples, policy.IngestionBurst))
				return
			}
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(delay.Seconds()))))
			writeError(w, http.StatusTooManyRequests, "rate_limited", fmt.Sprintf(
				"ingestion rate limit of %d samples/s exceeded", policy.IngestionRate))
			return
		}
		h.metrics.samples.WithLabelValues(tenant).Add(float64(samples))
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		next.ServeHTTP(w, r)
	})
}

// readBody reads the request body up to MaxBodyBytes, or answers the client (with the hint for a body that is
// too large) and returns false.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request, hint string) ([]byte, bool) {
	// Sized by Content-Length when the client sent one, so the body is read without regrowing.
	body := bytes.NewBuffer(make([]byte, 0, min(max(r.ContentLength, 0), h.cfg.MaxBodyBytes)+bytes.MinRead))
	_, err := body.ReadFrom(http.MaxBytesReader(w, r.Body, h.cfg.MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			writeError(w, http.StatusRequestEntityTooLarge, "bad_data",
				fmt.Sprintf("request body exceeds %d bytes; %s", h.cfg.MaxBodyBytes, hint))
			return nil, false
		}
		writeError(w, http.StatusBadRequest, "bad_data", "reading the request body failed")
		return nil, false
	}
	return body.Bytes(), true
}

// proxy forwards to the upstream under prefix, with the tenant as X-Scope-OrgID and without the client's
// credentials or any X-Scope-OrgID it sent. A positive timeout bounds the whole exchange; without one, only
// the wait for the response header is bounded (by UpstreamTimeout), as for a live tail, which
// httputil.ReverseProxy closes when the request's context ends.
func (h *Handler) proxy(upstream *Upstream, prefix string, timeout time.Duration) http.Handler {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.ResponseHeaderTimeout = h.cfg.UpstreamTimeout
	// Keep a connection per concurrent request to every backend: Prometheus sends with up to 50 shards (its
	// default max_shards), each one request at a time. The default total of 100 idle connections would close
	// and reopen connections as soon as several backends share that load.
	transport.MaxIdleConnsPerHost = 256
	transport.MaxIdleConns = 0
	if h.cfg.DialContext != nil {
		transport.DialContext = h.cfg.DialContext
	}
	proxy := &httputil.ReverseProxy{
		Transport:  transport,
		BufferPool: copyBuffers,
		Rewrite: func(pr *httputil.ProxyRequest) {
			target := pr.In.Context().Value(targetKey{}).(*url.URL)
			pr.Out.URL.Scheme = target.Scheme
			pr.Out.URL.Host = target.Host
			pr.Out.URL.Path = target.Path + prefix + pr.In.URL.Path
			pr.Out.URL.RawPath = ""
			pr.Out.Host = target.Host
			pr.Out.Header.Del("Authorization")
			pr.Out.Header.Del("Cookie")
			pr.Out.Header.Set(TenantHeader, pr.In.Context().Value(tenantKey{}).(string))
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			status := http.StatusBadGateway
			if errors.Is(err, context.DeadlineExceeded) {
				status = http.StatusGatewayTimeout
			}
			writeError(w, status, "unavailable", upstream.Name+" did not answer")
		},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		target := upstream.pick()
		if target == nil {
			writeError(w, http.StatusServiceUnavailable, "unavailable", "no ready "+upstream.Name+" endpoints")
			return
		}
		ctx := context.WithValue(r.Context(), targetKey{}, target)
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		proxy.ServeHTTP(w, r.WithContext(ctx))
	})
}

// copyBuffers lend httputil.ReverseProxy its 32 KiB response-copy buffers, which it would otherwise allocate
// for every request.
var copyBuffers = &bufferPool{pool: sync.Pool{New: func() any { return new([32 << 10]byte) }}}

type bufferPool struct{ pool sync.Pool }

func (p *bufferPool) Get() []byte { return p.pool.Get().(*[32 << 10]byte)[:] }

func (p *bufferPool) Put(b []byte) {
	if cap(b) == 32<<10 {
		p.pool.Put((*[32 << 10]byte)(b[:32<<10]))
	}
}

// writeError answers in the Prometheus API's error shape, which Grafana shows to the user.
func writeError(w http.ResponseWriter, status int, errorType, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"status": "error", "errorType": errorType, "error": message})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(status int) {
	s.status = status
	s.ResponseWriter.WriteHeader(status)
}

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Hijack hands the connection to httputil.ReverseProxy for a protocol upgrade; ReverseProxy writes the 101
// itself on the hijacked connection, so it is recorded here.
func (s *statusRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, rw, err := http.NewResponseController(s.ResponseWriter).Hijack()
	if err == nil {
		s.status = http.StatusSwitchingProtocols
	}
	return conn, rw, err
}

// Unwrap lets http.ResponseController reach the server's ResponseWriter.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// limiters keeps one token bucket per tenant, rebuilt when the tenant's limits change. A tenant's samples and
// log bytes have separate limiters.
type limiters struct {
	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	rate, burst int64
	limiter     *rate.Limiter
}

func newLimiters() *limiters { return &limiters{buckets: map[string]*bucket{}} }

// take returns ok when n (samples or bytes) may pass now at limit per second with the given burst (0: no
// limit); otherwise how long to wait, or a negative delay when the request can never pass because it is
// larger than the burst.
func (l *limiters) take(tenant string, limit, burst int64, n int, now time.Time) (time.Duration, bool) {
	if limit <= 0 {
		return 0, true
	}
	burst = max(burst, limit)
	l.mu.Lock()
	b := l.buckets[tenant]
	if b == nil || b.rate != limit || b.burst != burst {
		b = &bucket{rate: limit, burst: burst, limiter: rate.NewLimiter(rate.Limit(limit), int(burst))}
		l.buckets[tenant] = b
	}
	l.mu.Unlock()

	reservation := b.limiter.ReserveN(now, n)
	if !reservation.OK() {
		return -1, false
	}
	if delay := reservation.DelayFrom(now); delay > 0 {
		reservation.CancelAt(now)
		return delay, false
	}
	return 0, true
}

type metrics struct {
	requests     *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	authFailures *prometheus.CounterVec
	rateLimited  *prometheus.CounterVec
	samples      *prometheus.CounterVec
	logBytes     *prometheus.CounterVec
}

func newMetrics(registerer prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "opstrace_gateway_requests_total", Help: "Authenticated requests by tenant, route and status code.",
		}, []string{"tenant", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "opstrace_gateway_request_duration_seconds", Help: "Time to answer authenticated requests, by route.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}, []string{"route"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "opstrace_gateway_auth_failures_total", Help: "Refused requests by reason.",
		}, []string{"reason"}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "opstrace_gateway_rate_limited_total", Help: "Pushes refused by the tenant's ingestion limits, by tenant and route (remote_write, logs_push).",
		}, []string{"tenant", "route"}),
		samples: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "opstrace_gateway_samples_total", Help: "Samples accepted for forwarding, by tenant.",
		}, []string{"tenant"}),
		logBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "opstrace_gateway_log_bytes_total", Help: "Uncompressed bytes of Loki pushes accepted for forwarding, by tenant.",
		}, []string{"tenant"}),
	}
	registerer.MustRegister(m.requests, m.duration, m.authFailures, m.rateLimited, m.samples, m.logBytes)
	return m
}
