package gateway

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/golang/snappy"
)

// LokiUpstreams are the Loki components the gateway sends the Loki API to. In topology single, all three are
// the same Service.
type LokiUpstreams struct {
	// Distributor receives pushes; QueryFrontend serves queries, labels and series; Querier serves live
	// tails, which the query-frontend does not.
	Distributor, QueryFrontend, Querier *Upstream
}

// lokiQueryPaths are Loki's read API as a Grafana Loki data source with URL = gateway URL uses it: queries
// (the data source's health check is the instant query vector(1)+vector(1)), the label browser, the query
// editor's size estimate (index/stats), the logs volume histogram (index/volume*), and Explore's detected
// fields and patterns. All read one tenant's data only, by X-Scope-OrgID.
var lokiQueryPaths = []string{
	"/loki/api/v1/query", "/loki/api/v1/query_range", "/loki/api/v1/labels", "/loki/api/v1/label/{name}/values",
	"/loki/api/v1/series", "/loki/api/v1/index/stats", "/loki/api/v1/index/volume",
	"/loki/api/v1/index/volume_range", "/loki/api/v1/detected_labels", "/loki/api/v1/detected_fields",
	"/loki/api/v1/detected_field/{name}/values", "/loki/api/v1/patterns",
}

// handleLoki adds the Loki API, or answers every /loki/ path 501 when the cluster runs no Loki. Either way
// the token is checked first, so an unauthenticated client learns nothing about the cluster.
func (h *Handler) handleLoki(mux *http.ServeMux) {
	loki := h.cfg.Loki
	if loki == nil {
		mux.Handle("/loki/", h.authenticated("logs", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			writeError(w, http.StatusNotImplemented, "not_enabled", "logs are not enabled on this cluster")
		})))
		return
	}
	mux.Handle("POST /loki/api/v1/push", h.authenticated("logs_push",
		h.limitLogIngestion(h.proxy(loki.Distributor, "", h.cfg.UpstreamTimeout))))
	query := h.proxy(loki.QueryFrontend, "", h.cfg.UpstreamTimeout)
	for _, path := range lokiQueryPaths {
		mux.Handle(path, h.authenticated("logs_query", query))
	}
	// A tail is a websocket that stays open for as long as the client watches: only the upgrade is bounded.
	mux.Handle("GET /loki/api/v1/tail", h.authenticated("logs_tail", h.proxy(loki.Querier, "", 0)))
}

// limitLogIngestion reads the bounded body of a Loki push, measures its uncompressed payload and takes that
// many bytes from the tenant's log token bucket.
//
// The unit is the uncompressed push payload: the JSON document, or the protobuf PushRequest inside the snappy
// block, after any Content-Encoding is undone. It costs no decoding (a snappy block states its decoded
// length up front; Loki refuses a block that does not match it), it is what the client really sends, and it
// is an upper bound of what Loki's own ingestion_rate_mb counts (log lines and structured metadata, without
// labels and timestamps), so the gateway never lets through more than Loki's limit of the same figure.
func (h *Handler) limitLogIngestion(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tenant := r.Context().Value(tenantKey{}).(string)
		body, ok := h.readBody(w, r, "send fewer log lines per push")
		if !ok {
			return
		}
		size, status, err := lokiPayloadBytes(body, r.Header.Get("Content-Encoding"), r.Header.Get("Content-Type"), h.cfg.MaxBodyBytes)
		if err != nil {
			writeError(w, status, "bad_data", err.Error())
			return
		}
		policy, _ := h.auth.Policy(tenant)
		if delay, ok := h.logLimiters.take(tenant, policy.LogIngestionRate, policy.LogIngestionBurst, int(size), time.Now()); !ok {
			h.metrics.rateLimited.WithLabelValues(tenant, "logs_push").Inc()
			if delay < 0 {
				writeError(w, http.StatusRequestEntityTooLarge, "bad_data", fmt.Sprintf(
					"push has %d bytes uncompressed, more than the tenant's log ingestion burst of %d bytes; send fewer log lines per push",
					size, max(policy.LogIngestionBurst, policy.LogIngestionRate)))
				return
			}
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(delay.Seconds()))))
			writeError(w, http.StatusTooManyRequests, "rate_limited", fmt.Sprintf(
				"log ingestion rate limit of %d bytes/s exceeded", policy.LogIngestionRate))
			return
		}
		h.metrics.logBytes.WithLabelValues(tenant).Add(float64(size))
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		next.ServeHTTP(w, r)
	})
}

// lokiPayloadBytes returns the uncompressed size of a Loki push body, decoded the way Loki decodes it: first
// the Content-Encoding (none, snappy — a no-op some clients announce —, gzip or deflate), then JSON when the
// Content-Type says so and a snappy-compressed protobuf otherwise. A payload larger than limit is refused
// (413) before it is fully decompressed; on error the HTTP status to answer is returned.
func lokiPayloadBytes(body []byte, contentEncoding, contentType string, limit int64) (int64, int, error) {
	payload := body
	var decompress io.Reader
	switch contentEncoding {
	case "", "snappy":
	case "gzip":
		reader, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			return 0, http.StatusBadRequest, fmt.Errorf("the body is not gzip-compressed as Content-Encoding says: %v", err)
		}
		decompress = reader
	case "deflate":
		decompress = flate.NewReader(bytes.NewReader(body))
	default:
		return 0, http.StatusUnsupportedMediaType, fmt.Errorf(
			"Content-Encoding %q is not supported; use gzip, deflate or none", contentEncoding)
	}
	if decompress != nil {
		var err error
		payload, err = io.ReadAll(io.LimitReader(decompress, limit+1))
		if err != nil {
			return 0, http.StatusBadRequest, fmt.Errorf("decompressing the body (Content-Encoding %s) failed: %v", contentEncoding, err)
		}
	}
	size := int64(len(payload))
	if mediaType, _, _ := mime.ParseMediaType(contentType); mediaType != "application/json" {
		decoded, err := snappy.DecodedLen(payload)
		if err != nil {
			return 0, http.StatusBadRequest, fmt.Errorf(
				"the body is not a snappy-compressed protobuf push request (%v); send JSON with Content-Type: application/json", err)
		}
		size = int64(decoded)
	}
	if size > limit {
		return 0, http.StatusRequestEntityTooLarge, fmt.Errorf(
			"push payload exceeds %d bytes uncompressed; send fewer log lines per push", limit)
	}
	return size, 0, nil
}
