package gateway_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang/snappy"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/opstrace/opstrace/internal/gateway"
	"github.com/opstrace/opstrace/internal/testenv"
	"github.com/opstrace/opstrace/internal/tokens"
)

// These tests put the gateway, over real TLS on 127.0.0.1, in front of a real multi-tenant Loki.

type lokiStack struct {
	loki    *testenv.Loki
	gateway *httptest.Server
	client  *http.Client
	key     tokens.SigningKey
	tokens  map[string]string
}

// startLokiStack runs Loki and the gateway with upstreamTimeout as the gateway's per-request deadline; the
// tenants are the policies' keys.
func startLokiStack(t *testing.T, upstreamTimeout time.Duration, policies map[string]gateway.TenantPolicy) *lokiStack {
	t.Helper()
	loki := testenv.StartLoki(t, testenv.MinimalLokiConfig)
	key, err := tokens.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	auth := gateway.NewAuthenticator(audience, nil)
	auth.SetKeys(tokens.KeySet{key.ID: key.Public()})
	auth.SetTenants(gateway.TenantList{Tenants: policies})
	s := &lokiStack{loki: loki, key: key, tokens: map[string]string{}}
	for tenant := range policies {
		if s.tokens[tenant], _, err = key.Issue(tenant, audience, time.Now(), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	upstream := func(name string, urls ...string) *gateway.Upstream {
		u, err := gateway.NewUpstream(name, urls)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	// Topology single: every Loki component is the one process. No Cortex: metrics answer 503.
	handler := gateway.NewHandler(gateway.Config{
		Distributor: upstream("distributor"), QueryFrontend: upstream("query-frontend"),
		Loki: &gateway.LokiUpstreams{
			Distributor:   upstream("loki-distributor", loki.URL),
			QueryFrontend: upstream("loki-query-frontend", loki.URL),
			Querier:       upstream("loki-querier", loki.URL),
		},
		MaxBodyBytes: 1 << 20, UpstreamTimeout: upstreamTimeout,
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
	return s
}

// logLine is a line and the labels of its stream.
type logLine struct {
	labels map[string]string
	at     time.Time
	line   string
}

func jsonPush(lines ...logLine) []byte {
	type stream struct {
		Stream map[string]string `json:"stream"`
		Values [][2]string       `json:"values"`
	}
	var push struct {
		Streams []stream `json:"streams"`
	}
	for _, l := range lines {
		push.Streams = append(push.Streams, stream{Stream: l.labels, Values: [][2]string{{strconv.FormatInt(l.at.UnixNano(), 10), l.line}}})
	}
	data, _ := json.Marshal(push)
	return data
}

// protobufPush encodes Loki's PushRequest (logproto: streams = 1 {labels = 1, entries = 2 {timestamp = 1
// {seconds = 1, nanos = 2}, line = 2}}) and compresses it with snappy, as promtail and Alloy send it. Loki's
// own Go types are AGPL and stay out of this module.
func protobufPush(lines ...logLine) []byte {
	var request []byte
	for _, l := range lines {
		var names []string
		for name := range l.labels {
			names = append(names, name)
		}
		slices.Sort(names)
		var selector []string
		for _, name := range names {
			selector = append(selector, fmt.Sprintf("%s=%q", name, l.labels[name]))
		}
		var timestamp, entry, stream []byte
		timestamp = protowire.AppendTag(timestamp, 1, protowire.VarintType)
		timestamp = protowire.AppendVarint(timestamp, uint64(l.at.Unix()))
		timestamp = protowire.AppendTag(timestamp, 2, protowire.VarintType)
		timestamp = protowire.AppendVarint(timestamp, uint64(l.at.Nanosecond()))
		entry = protowire.AppendTag(entry, 1, protowire.BytesType)
		entry = protowire.AppendBytes(entry, timestamp)
		entry = protowire.AppendTag(entry, 2, protowire.BytesType)
		entry = protowire.AppendString(entry, l.line)
		stream = protowire.AppendTag(stream, 1, protowire.BytesType)
		stream = protowire.AppendString(stream, "{"+strings.Join(selector, ", ")+"}")
		stream = protowire.AppendTag(stream, 2, protowire.BytesType)
		stream = protowire.AppendBytes(stream, entry)
		request = protowire.AppendTag(request, 1, protowire.BytesType)
		request = protowire.AppendBytes(request, stream)
	}
	return snappy.Encode(nil, request)
}

// lokiPush sends a push body (JSON when contentType says so, else snappy protobuf) and returns the status and
// the answer.
func (s *lokiStack) push(t *testing.T, token, contentType string, body []byte, header http.Header) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", s.gateway.URL+"/loki/api/v1/push", bytes.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	for k, v := range header {
		req.Header[k] = v
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	answer, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, string(answer)
}

// queryLines runs a LogQL log query over the last hour against base (the gateway, or Loki itself) and returns
// "<tenant label>:<line>" of every line, sorted.
func queryLines(t *testing.T, client *http.Client, base, token string, header http.Header, logql string) []string {
	t.Helper()
	params := url.Values{"query": {logql}, "limit": {"1000"},
		"start": {strconv.FormatInt(time.Now().Add(-time.Hour).UnixNano(), 10)},
		"end":   {strconv.FormatInt(time.Now().Add(time.Minute).UnixNano(), 10)}}
	req, _ := http.NewRequest("GET", base+"/loki/api/v1/query_range?"+params.Encode(), nil)
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
	raw, _ := io.ReadAll(res.Body)
	var body struct {
		Status string
		Data   struct {
			ResultType string
			Result     []struct {
				Stream map[string]string
				Values [][2]string
			}
		}
	}
	if err := json.Unmarshal(raw, &body); err != nil || body.Status != "success" || body.Data.ResultType != "streams" {
		t.Fatalf("query %s: %d %s", logql, res.StatusCode, raw)
	}
	var lines []string
	for _, r := range body.Data.Result {
		for _, v := range r.Values {
			lines = append(lines, r.Stream["tenant"]+":"+v[1])
		}
	}
	slices.Sort(lines)
	return lines
}

func TestLogsPushAndQueryThroughTheGatewayAreIsolatedPerTenant(t *testing.T) {
	s := startLokiStack(t, 30*time.Second, map[string]gateway.TenantPolicy{"team-a": {}, "team-b": {}})
	now := time.Now()
	line := func(tenant, text string) logLine {
		return logLine{labels: map[string]string{"job": "gwtest", "tenant": tenant}, at: now, line: text}
	}
	// team-a claims to be team-b in X-Scope-OrgID on both pushes: the gateway must write as team-a anyway.
	spoof := http.Header{"X-Scope-Orgid": {"team-b"}}
	for _, push := range []struct {
		tenant, contentType string
		body                []byte
		header              http.Header
	}{
		{"team-a", "application/json", jsonPush(line("team-a", "a json")), spoof},
		{"team-a", "application/x-protobuf", protobufPush(line("team-a", "a protobuf")), spoof},
		{"team-b", "application/json", jsonPush(line("team-b", "b json")), nil},
		{"team-b", "application/x-protobuf", protobufPush(line("team-b", "b protobuf")), nil},
	} {
		if code, _, answer := s.push(t, s.tokens[push.tenant], push.contentType, push.body, push.header); code != http.StatusNoContent {
			t.Fatalf("push %s as %s: %d %s\n%s", push.contentType, push.tenant, code, answer, s.loki.LogTail(20))
		}
	}
	if code, _, _ := s.push(t, "", "application/json", jsonPush(line("nobody", "x")), nil); code != http.StatusUnauthorized {
		t.Fatalf("a push without a token answered %d, want 401", code)
	}

	const logql = `{job="gwtest"}`
	if got := queryLines(t, s.client, s.gateway.URL, s.tokens["team-a"], spoof, logql); !slices.Equal(got, []string{"team-a:a json", "team-a:a protobuf"}) {
		t.Fatalf("team-a (claiming team-b in X-Scope-OrgID) reads %q, want only its own two lines", got)
	}
	if got := queryLines(t, s.client, s.gateway.URL, s.tokens["team-b"], nil, logql); !slices.Equal(got, []string{"team-b:b json", "team-b:b protobuf"}) {
		t.Fatalf("team-b reads %q, want only its own two lines", got)
	}
	// Straight from Loki: each tenant's store holds exactly what its token wrote.
	if got := queryLines(t, &http.Client{}, s.loki.URL, "", http.Header{"X-Scope-Orgid": {"team-b"}}, logql); !slices.Equal(got, []string{"team-b:b json", "team-b:b protobuf"}) {
		t.Fatalf("Loki holds %q for team-b, want team-b's two lines: a spoofed header leaked team-a's writes", got)
	}

	// The label browser of a Grafana Loki data source, and its health check (vector(1)+vector(1)).
	for path, want := range map[string]string{
		"/loki/api/v1/labels":                                                `"tenant"`,
		"/loki/api/v1/label/tenant/values":                                   `["team-a"]`,
		"/loki/api/v1/series?match[]=" + url.QueryEscape(logql):              `"tenant":"team-a"`,
		"/loki/api/v1/query?query=" + url.QueryEscape("vector(1)+vector(1)"): `"2"`,
	} {
		req, _ := http.NewRequest("GET", s.gateway.URL+path, nil)
		req.Header.Set("Authorization", "Bearer "+s.tokens["team-a"])
		res, err := s.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || !strings.Contains(string(body), want) || strings.Contains(string(body), "team-b") {
			t.Errorf("GET %s as team-a: %d %s; want 200 with %s and nothing of team-b", path, res.StatusCode, body, want)
		}
	}
}

// tailURL is the websocket URL of a live tail of logql starting now.
func (s *lokiStack) tailURL(logql string) string {
	params := url.Values{"query": {logql}, "start": {strconv.FormatInt(time.Now().UnixNano(), 10)}}
	return "wss" + strings.TrimPrefix(s.gateway.URL, "https") + "/loki/api/v1/tail?" + params.Encode()
}

// dialer opens websockets to the gateway over HTTP/1.1, as Grafana's Loki data source does.
func (s *lokiStack) dialer() *websocket.Dialer {
	config := s.client.Transport.(*http.Transport).TLSClientConfig.Clone()
	config.NextProtos = []string{"http/1.1"}
	return &websocket.Dialer{TLSClientConfig: config, HandshakeTimeout: 10 * time.Second}
}

func TestLogsTailIsAWebsocketThatOutlivesTheUpstreamTimeout(t *testing.T) {
	// Two seconds per upstream call: the tail below stays open several times longer.
	const upstreamTimeout = 2 * time.Second
	s := startLokiStack(t, upstreamTimeout, map[string]gateway.TenantPolicy{"team-a": {}, "team-b": {}})
	header := http.Header{"Authorization": {"Bearer " + s.tokens["team-a"]}, "X-Scope-Orgid": {"team-b"}}
	conn, res, err := s.dialer().Dial(s.tailURL(`{job="tail"}`), header)
	if err != nil {
		t.Fatalf("tail: %v (response %v)\n%s", err, res, s.loki.LogTail(20))
	}
	defer conn.Close()

	received := make(chan string, 100)
	go func() {
		defer close(received)
		for {
			var message struct {
				Streams []struct {
					Stream map[string]string
					Values [][2]string
				}
			}
			if err := conn.ReadJSON(&message); err != nil {
				return
			}
			for _, stream := range message.Streams {
				for _, v := range stream.Values {
					received <- stream.Stream["tenant"] + ":" + v[1]
				}
			}
		}
	}()

	// Lines are pushed only after the tail is open, and only once it has outlived the upstream timeout; team-b's
	// line, pushed first with the same labels, must never reach team-a's tail.
	time.Sleep(3 * upstreamTimeout)
	labels := func(tenant string) map[string]string { return map[string]string{"job": "tail", "tenant": tenant} }
	if code, _, answer := s.push(t, s.tokens["team-b"], "application/json", jsonPush(logLine{labels("team-b"), time.Now(), "b secret"}), nil); code != http.StatusNoContent {
		t.Fatalf("push as team-b: %d %s", code, answer)
	}
	// The querier registers the tail with the ingester asynchronously: push until a line arrives.
	deadline := time.After(30 * time.Second)
	for i := 0; ; i++ {
		line := fmt.Sprintf("a line %d", i)
		if code, _, answer := s.push(t, s.tokens["team-a"], "application/x-protobuf", protobufPush(logLine{labels("team-a"), time.Now(), line}), nil); code != http.StatusNoContent {
			t.Fatalf("push as team-a: %d %s", code, answer)
		}
		select {
		case got, open := <-received:
			if !open {
				t.Fatalf("the tail closed before any line arrived\n%s", s.loki.LogTail(20))
			}
			if !strings.HasPrefix(got, "team-a:a line ") {
				t.Fatalf("team-a's tail received %q, want one of team-a's lines", got)
			}
			// Whatever else arrives in the next second must be team-a's too.
			timeout := time.After(time.Second)
			for {
				select {
				case got, open := <-received:
					if open && !strings.HasPrefix(got, "team-a:") {
						t.Fatalf("team-a's tail received %q", got)
					}
					if !open {
						return
					}
				case <-timeout:
					return
				}
			}
		case <-deadline:
			t.Fatalf("no line reached the tail within 30s\n%s", s.loki.LogTail(20))
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func TestLogIngestionRateLimitAnswers429WithRetryAfter(t *testing.T) {
	s := startLokiStack(t, 30*time.Second, map[string]gateway.TenantPolicy{
		"team-a": {LogIngestionRate: 1000, LogIngestionBurst: 2000},
	})
	body := func(n int) []byte {
		return jsonPush(logLine{map[string]string{"job": "limit"}, time.Now(), strings.Repeat("x", n)})
	}
	if code, _, answer := s.push(t, s.tokens["team-a"], "application/json", body(1500), nil); code != http.StatusNoContent {
		t.Fatalf("a push within the burst: %d %s", code, answer)
	}
	code, header, answer := s.push(t, s.tokens["team-a"], "application/json", body(1500), nil)
	if code != http.StatusTooManyRequests || header.Get("Retry-After") == "" || !strings.Contains(answer, "1000 bytes/s") {
		t.Fatalf("a push beyond the burst: %d Retry-After %q %s", code, header.Get("Retry-After"), answer)
	}
	if got := queryLines(t, &http.Client{}, s.loki.URL, "", http.Header{"X-Scope-Orgid": {"team-a"}}, `{job="limit"}`); len(got) != 1 {
		t.Fatalf("Loki holds %d lines, want only the first push's", len(got))
	}
}

func TestForgedAndExpiredTokensAreRefusedOnEveryLogsRoute(t *testing.T) {
	s := startLokiStack(t, 30*time.Second, map[string]gateway.TenantPolicy{"team-a": {}})
	_, otherPrivate, _ := ed25519.GenerateKey(rand.Reader)
	forger := tokens.SigningKey{ID: s.key.ID, Private: otherPrivate} // the right key id, the wrong key
	forged, _, err := forger.Issue("team-a", audience, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	expired, _, err := s.key.Issue("team-a", audience, time.Now().Add(-2*time.Hour), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	routes := []struct{ method, path string }{{"POST", "/loki/api/v1/push"}}
	for _, path := range []string{
		"/loki/api/v1/query", "/loki/api/v1/query_range", "/loki/api/v1/labels", "/loki/api/v1/label/job/values",
		"/loki/api/v1/series", "/loki/api/v1/index/stats", "/loki/api/v1/index/volume",
		"/loki/api/v1/index/volume_range", "/loki/api/v1/detected_labels", "/loki/api/v1/detected_fields",
		"/loki/api/v1/detected_field/job/values", "/loki/api/v1/patterns",
	} {
		routes = append(routes, struct{ method, path string }{"GET", path}, struct{ method, path string }{"POST", path})
	}
	for _, token := range []struct{ name, token, reason string }{
		{"forged", forged, string(tokens.ReasonBadSignature)},
		{"expired", expired, string(tokens.ReasonExpired)},
	} {
		for _, route := range routes {
			req, _ := http.NewRequest(route.method, s.gateway.URL+route.path+"?query="+url.QueryEscape(`{job="x"}`),
				strings.NewReader(`{"streams":[]}`))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+token.token)
			res, err := s.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var body struct{ Status, Error string }
			raw, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != http.StatusUnauthorized || json.Unmarshal(raw, &body) != nil || body.Error != token.reason {
				t.Errorf("%s token, %s %s: %d %s; want 401 %q", token.name, route.method, route.path, res.StatusCode, raw, token.reason)
			}
		}
		// The websocket upgrade is refused before anything reaches Loki.
		conn, res, err := s.dialer().Dial(s.tailURL(`{job="x"}`), http.Header{"Authorization": {"Bearer " + token.token}})
		if err == nil {
			conn.Close()
			t.Fatalf("%s token: the tail websocket was opened", token.name)
		}
		if res == nil {
			t.Fatalf("%s token: tail: %v, want a 401 answer", token.name, err)
		}
		raw, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusUnauthorized || !strings.Contains(string(raw), token.reason) {
			t.Errorf("%s token, tail upgrade: %d %s; want 401 %q", token.name, res.StatusCode, raw, token.reason)
		}
	}
}
