// Package gateway is the one HTTPS endpoint of a cluster: it authenticates every request by its tenant token,
// sets X-Scope-OrgID to the token's tenant, enforces the tenant's ingestion limits, and proxies Prometheus
// remote write and the Prometheus HTTP API to Cortex.
package gateway

import (
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
	// MaxBodyBytes bounds a request body.
	MaxBodyBytes int64
	// UpstreamTimeout bounds every call to Cortex.
	UpstreamTimeout time.Duration
	// DialContext connects to Cortex; nil means the standard library's dialer. Tests use it to reach
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
	mux      *http.ServeMux
	ready    func() bool
}

// NewHandler wires the routes. ready reports whether the TLS certificate and the auth Secret have been loaded.
func NewHandler(cfg Config, auth *Authenticator, registerer prometheus.Registerer, ready func() bool) *Handler {
	h := &Handler{cfg: cfg, auth: auth, metrics: newMetrics(registerer), limiters: newLimiters(), ready: ready}
	write := h.proxy(cfg.Distributor, "")
	query := h.proxy(cfg.QueryFrontend, cortexPrometheusPrefix)

	mux := http.NewServeMux()
	mux.Handle("POST /api/v1/push", h.authenticated("remote_write", h.limitIngestion(write)))
	for _, path := range []string{
		"/api/v1/query", "/api/v1/query_range", "/api/v1/series", "/api/v1/labels",
		"/api/v1/label/{name}/values", "/api/v1/metadata", "/api/v1/query_exemplars", "/api/v1/status/buildinfo",
	} {
		mux.Handle(path, h.authenticated("query", query))
	}
	mux.Handle("/loki/", h.authenticated("logs", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, http.StatusNotImplemented, "not_enabled", "logs are not enabled on this cluster")
	})))
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
		h.metrics.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

// limitIngestion reads the bounded body, counts its samples and takes them from the tenant's token bucket.
func (h *Handler) limitIngestion(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tenant := r.Context().Value(tenantKey{}).(string)
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.cfg.MaxBodyBytes))
		if err != nil {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				writeError(w, http.StatusRequestEntityTooLarge, "bad_data",
					fmt.Sprintf("request body exceeds %d bytes; send fewer samples per request", h.cfg.MaxBodyBytes))
				return
			}
			writeError(w, http.StatusBadRequest, "bad_data", "reading the request body failed")
			return
		}
		samples, err := remotewrite.CountSamples(body)
		if err != nil {
			writeError(w, http.StatusBadRequest, "bad_data", err.Error())
			return
		}
		policy, _ := h.auth.Policy(tenant)
		if delay, ok := h.limiters.take(tenant, policy, samples, time.Now()); !ok {
			h.metrics.rateLimited.WithLabelValues(tenant).Inc()
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

// proxy forwards to the upstream under prefix, with the tenant as X-Scope-OrgID and without the client's
// credentials or any X-Scope-OrgID it sent.
func (h *Handler) proxy(upstream *Upstream, prefix string) http.Handler {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.ResponseHeaderTimeout = h.cfg.UpstreamTimeout
	transport.MaxIdleConnsPerHost = 256
	if h.cfg.DialContext != nil {
		transport.DialContext = h.cfg.DialContext
	}
	proxy := &httputil.ReverseProxy{
		Transport: transport,
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
		ctx, cancel := context.WithTimeout(context.WithValue(r.Context(), targetKey{}, target), h.cfg.UpstreamTimeout)
		defer cancel()
		proxy.ServeHTTP(w, r.WithContext(ctx))
	})
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

// limiters keeps one token bucket per tenant, rebuilt when the tenant's limits change.
type limiters struct {
	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	rate, burst int64
	limiter     *rate.Limiter
}

func newLimiters() *limiters { return &limiters{buckets: map[string]*bucket{}} }

// take returns ok when the samples may pass now; otherwise how long to wait, or a negative delay when the
// request can never pass because it is larger than the burst.
func (l *limiters) take(tenant string, policy TenantPolicy, samples int, now time.Time) (time.Duration, bool) {
	if policy.IngestionRate <= 0 {
		return 0, true
	}
	burst := max(policy.IngestionBurst, policy.IngestionRate)
	l.mu.Lock()
	b := l.buckets[tenant]
	if b == nil || b.rate != policy.IngestionRate || b.burst != burst {
		b = &bucket{rate: policy.IngestionRate, burst: burst,
			limiter: rate.NewLimiter(rate.Limit(policy.IngestionRate), int(burst))}
		l.buckets[tenant] = b
	}
	l.mu.Unlock()

	reservation := b.limiter.ReserveN(now, samples)
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
			Name: "opstrace_gateway_rate_limited_total", Help: "Remote-write requests refused by the tenant's ingestion limits.",
		}, []string{"tenant"}),
		samples: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "opstrace_gateway_samples_total", Help: "Samples accepted for forwarding, by tenant.",
		}, []string{"tenant"}),
	}
	registerer.MustRegister(m.requests, m.duration, m.authFailures, m.rateLimited, m.samples)
	return m
}
