package gateway_test

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
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
	return pushBody(client, base, token, header, remotewrite.Encode(series))
}

func pushBody(client *http.Client, base, token string, header http.Header, body []byte) error {
	req, err := http.NewRequest("POST", base+"/api/v1/push", bytes.NewReader(body))
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
	answer, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("push: %d %s", res.StatusCode, answer)
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

// BenchmarkRemoteWrite measures remote write directly to Cortex and through the gateway (TLS, token check,
// sample counting, proxying) with the same Prometheus-shaped requests (2000 samples of 2000 series — Prometheus'
// default max_samples_per_send, prometheus/config DefaultQueueConfig — from 8 concurrent senders), and reports samples/s and p99 latency of both and the gateway/direct throughput ratio. Goal:
// ratio >= 0.95.
//
// The two sides alternate in rounds of roundRequests requests, so that both see the same load from whatever
// else runs on the machine; an op is one request to each side, and the ratio is the median of the rounds'. Sub-benchmarks: http1 sends to the gateway over
// one HTTP/1.1 connection per concurrent request, like the direct client to Cortex; http2 over one
// multiplexed HTTP/2 connection, as Prometheus does. Cortex runs on half of the CPUs and the client and gateway
// on the other half (separateCPUs), so that the ratio measures the gateway's effect on throughput, and
// gateway-cpu-ms/req and cpu-ratio what it would take from Cortex on a shared CPU. Sub-benchmark control
// compares direct with direct: its ratio is the bench's noise (on 2 cores, 0.99 to 1.12 in runs of 20 s).
// Run with -benchtime=20s -count=3 for stable figures.
func BenchmarkRemoteWrite(b *testing.B) {
	// Cortex's own per-tenant limit must not be what is measured.
	pinCortex := separateCPUs(b)
	s := startStack(b, v1alpha1.TenantLimits{IngestionRate: ptr.To[int64](100_000_000), IngestionBurst: ptr.To[int64](100_000_000)}, "bench")
	findCortex(b, s.cortex.Options.ConfigFile)
	pinCortex()
	const seriesPerRequest, concurrency, roundRequests = 2000, 8, 32
	// Like Prometheus' remote-write shards, each worker owns its series and sends their samples in order. The
	// requests are encoded before the clock starts: the client's work is not what is compared.
	var clock [concurrency]int64
	start := time.Now().Add(-time.Minute).UnixMilli()
	request := func(worker int) []byte {
		clock[worker]++
		timestamp := start + clock[worker]
		series := make([]remotewrite.Series, seriesPerRequest)
		for j := range series {
			series[j] = remotewrite.Series{
				Labels:  map[string]string{"__name__": "bench_metric", "instance": fmt.Sprint(worker*seriesPerRequest + j), "job": "bench"},
				Samples: []remotewrite.Sample{{Value: float64(timestamp), TimestampMsec: timestamp}},
			}
		}
		return remotewrite.Encode(series)
	}
	// run sends n requests, spread over the concurrent workers, and returns how long they took, the CPU time
	// Cortex and this process (client, and gateway if it is the target) spent meanwhile, and each one's latency.
	run := func(b *testing.B, n int, client *http.Client, base, token string, header http.Header) (time.Duration, cpuTime, []time.Duration) {
		var bodies [concurrency][][]byte
		for i := range n {
			bodies[i%concurrency] = append(bodies[i%concurrency], request(i%concurrency))
		}
		latencies := make([][]time.Duration, concurrency)
		errs := make(chan error, concurrency)
		processBefore, cortexBefore := processCPU(b), cortexCPU(b)
		began := time.Now()
		for worker := range concurrency {
			go func() {
				for _, body := range bodies[worker] {
					t0 := time.Now()
					if err := pushBody(client, base, token, header, body); err != nil {
						errs <- err
						return
					}
					latencies[worker] = append(latencies[worker], time.Since(t0))
				}
				errs <- nil
			}()
		}
		for range concurrency {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
		elapsed := time.Since(began)
		return elapsed, cpuTime{process: processCPU(b) - processBefore, cortex: cortexCPU(b) - cortexBefore}, slices.Concat(latencies...)
	}
	p99 := func(latencies []time.Duration) time.Duration {
		slices.Sort(latencies)
		return latencies[len(latencies)*99/100]
	}
	direct := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	directHeader := http.Header{"X-Scope-Orgid": {"bench"}}
	// control sends the "gateway" side's requests straight to Cortex too: its ratio is what the bench measures
	// when there is no difference at all, the noise against which the other ratios are read.
	for _, tt := range []struct {
		name          string
		client        *http.Client
		base, token   string
		gatewayHeader http.Header
	}{
		{"http1", http1Client(s.client), s.gateway.URL, s.tokens["bench"], nil},
		{"http2", s.client, s.gateway.URL, s.tokens["bench"], nil},
		{"control", direct, s.cortex.URL, "", directHeader},
	} {
		b.Run(tt.name, func(b *testing.B) {
			var directTime, gatewayTime time.Duration
			var directCPU, gatewayCPU cpuTime
			var directLatencies, gatewayLatencies []time.Duration
			var ratios []float64
			for round := 0; round*roundRequests < b.N; round++ {
				n := min(roundRequests, b.N-round*roundRequests)
				var directElapsed, gatewayElapsed time.Duration
				var directCPURound, gatewayCPURound cpuTime
				var directRound, gatewayRound []time.Duration
				// Which side goes first alternates: Cortex's background work after a round (WAL, head
				// compaction) must not always fall on the same side.
				if round%2 == 0 {
					directElapsed, directCPURound, directRound = run(b, n, direct, s.cortex.URL, "", directHeader)
					gatewayElapsed, gatewayCPURound, gatewayRound = run(b, n, tt.client, tt.base, tt.token, tt.gatewayHeader)
				} else {
					gatewayElapsed, gatewayCPURound, gatewayRound = run(b, n, tt.client, tt.base, tt.token, tt.gatewayHeader)
					directElapsed, directCPURound, directRound = run(b, n, direct, s.cortex.URL, "", directHeader)
				}
				directTime += directElapsed
				gatewayTime += gatewayElapsed
				directCPU.add(directCPURound)
				gatewayCPU.add(gatewayCPURound)
				directLatencies = append(directLatencies, directRound...)
				gatewayLatencies = append(gatewayLatencies, gatewayRound...)
				ratios = append(ratios, directElapsed.Seconds()/gatewayElapsed.Seconds())
			}
			b.ReportMetric(float64(b.N*seriesPerRequest)/directTime.Seconds(), "direct-samples/s")
			b.ReportMetric(float64(b.N*seriesPerRequest)/gatewayTime.Seconds(), "gateway-samples/s")
			// The median of the rounds' ratios: a burst of load from another process skews one round, not the
			// figure.
			slices.Sort(ratios)
			b.ReportMetric(ratios[len(ratios)/2], "ratio")
			// What the gateway costs in CPU, which a loaded machine blurs less than throughput: this process's
			// CPU time per request through the gateway minus directly (the gateway, and the client's TLS), Cortex's
			// per request, and the ratio of the totals (Cortex, client and gateway), which is the throughput
			// ratio on a machine whose CPU is the limit.
			perRequest := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
			b.ReportMetric(perRequest(gatewayCPU.process-directCPU.process), "gateway-cpu-ms/req")
			b.ReportMetric(perRequest(directCPU.cortex), "cortex-cpu-ms/req")
			b.ReportMetric(perRequest(gatewayCPU.cortex-directCPU.cortex), "cortex-extra-cpu-ms/req")
			b.ReportMetric((directCPU.process+directCPU.cortex).Seconds()/(gatewayCPU.process+gatewayCPU.cortex).Seconds(), "cpu-ratio")
			b.ReportMetric(float64(p99(directLatencies).Microseconds())/1000, "direct-p99-ms")
			b.ReportMetric(float64(p99(gatewayLatencies).Microseconds())/1000, "gateway-p99-ms")
		})
	}
}

// separateCPUs gives this process (client and gateway) one half of this machine's CPUs and returns the function
// that gives Cortex, once started, the other half, as in a cluster, where the gateway's pods do not run on the
// CPU of the distributors. Sharing the CPUs would measure how much CPU the gateway takes from Cortex on a
// machine both saturate, which gateway-cpu-ms/req and cpu-ratio report, instead of whether the gateway slows
// remote write down. Cortex starts on this process' half, so that its Go runtime sizes GOMAXPROCS to the
// half it then moves to. With fewer than two CPUs nothing is pinned, and the ratio is that of a shared CPU.
func separateCPUs(b *testing.B) (pinCortex func()) {
	b.Helper()
	var all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		b.Fatal(err)
	}
	var cpus []int
	for cpu := range 1024 {
		if all.IsSet(cpu) {
			cpus = append(cpus, cpu)
		}
	}
	if len(cpus) < 2 {
		b.Logf("only %d CPU: Cortex, the gateway and the client share it", len(cpus))
		return func() {}
	}
	var gatewaySide, cortexSide unix.CPUSet
	for i, cpu := range cpus {
		if i < len(cpus)/2 {
			gatewaySide.Set(cpu)
		} else {
			cortexSide.Set(cpu)
		}
	}
	procs := runtime.GOMAXPROCS(gatewaySide.Count())
	pin(b, os.Getpid(), gatewaySide)
	b.Cleanup(func() {
		pin(b, os.Getpid(), all)
		runtime.GOMAXPROCS(procs)
	})
	return func() {
		pin(b, cortexPID, cortexSide)
		b.Logf("Cortex runs on %d CPUs, the client and the gateway on %d", cortexSide.Count(), gatewaySide.Count())
	}
}

// pin sets the CPU affinity of every thread of process pid; threads it starts later inherit it.
func pin(b *testing.B, pid int, set unix.CPUSet) {
	b.Helper()
	threads, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, thread := range threads {
		tid, _ := strconv.Atoi(thread.Name())
		// A thread that exited since the directory was read is no error.
		if err := unix.SchedSetaffinity(tid, &set); err != nil && !errors.Is(err, unix.ESRCH) {
			b.Fatalf("pin thread %d of process %d: %v", tid, pid, err)
		}
	}
}

// cpuTime is CPU time used by this process and by Cortex.
type cpuTime struct{ process, cortex time.Duration }

func (c *cpuTime) add(o cpuTime) { c.process += o.process; c.cortex += o.cortex }

// processCPU is the CPU time this process has used.
func processCPU(b *testing.B) time.Duration {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		b.Fatal(err)
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano())
}

// cortexCPU is the CPU time used by the Cortex process started by the benchmark, found by its configuration
// file in /proc.
func cortexCPU(b *testing.B) time.Duration {
	b.Helper()
	if cortexPID == 0 {
		b.Fatal("the Cortex process was not found in /proc")
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cortexPID))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the parenthesised command name: state is field 3, utime and stime fields 14 and 15, in
	// clock ticks of 10 ms.
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

var cortexPID int

// findCortex sets cortexPID to the process whose command line names configFile.
func findCortex(b *testing.B, configFile string) {
	b.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, entry := range entries {
		pid, err := strconv.Atoi(entry.Name())
		if err != nil {
			continue
		}
		if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && bytes.Contains(cmdline, []byte(configFile)) {
			cortexPID = pid
			return
		}
	}
	b.Fatalf("no process runs Cortex with %s", configFile)
}

// http1Client is client with HTTP/2 turned off: one connection per concurrent request, the same shape as the
// direct client, so the two runs differ only by the gateway.
func http1Client(client *http.Client) *http.Client {
	transport := client.Transport.(*http.Transport).Clone()
	transport.ForceAttemptHTTP2 = false
	transport.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	transport.TLSClientConfig.NextProtos = nil
	return &http.Client{Transport: transport}
}
