package nodeagent

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// ProbeState counts consecutive results of a probe and turns them into its verdict with the probe's
// thresholds, as the kubelet's prober does.
type ProbeState struct {
	// OK is the current verdict: readiness starts false, liveness true.
	OK        bool
	successes int32
	failures  int32
}

// Observe records one result and returns whether the verdict changed.
func (s *ProbeState) Observe(p *corev1.Probe, success bool) bool {
	before := s.OK
	if success {
		s.failures = 0
		s.successes++
		if s.successes >= max(p.SuccessThreshold, 1) {
			s.OK = true
		}
	} else {
		s.successes = 0
		s.failures++
		if s.failures >= failureThreshold(p) {
			s.OK = false
		}
	}
	return s.OK != before
}

func failureThreshold(p *corev1.Probe) int32 {
	if p.FailureThreshold > 0 {
		return p.FailureThreshold
	}
	return 3
}

// probeTimings are the probe's initial delay, period and timeout with the Kubernetes defaults.
func probeTimings(p *corev1.Probe) (initialDelay, period, timeout time.Duration) {
	periodS, timeoutS := p.PeriodSeconds, p.TimeoutSeconds
	if periodS <= 0 {
		periodS = 10
	}
	if timeoutS <= 0 {
		timeoutS = 1
	}
	return time.Duration(p.InitialDelaySeconds) * time.Second, time.Duration(periodS) * time.Second, time.Duration(timeoutS) * time.Second
}

// ErrExecProbeUnsupported is the result of an exec probe: the node agent runs no second process in a
// container's sandbox.
var ErrExecProbeUnsupported = fmt.Errorf("exec probes are not supported by the local node agent; use httpGet or tcpSocket")

// RunProbe performs one check of probe against a container whose pod has address podIP. A nil error is
// success.
func RunProbe(ctx context.Context, p *corev1.Probe, podIP string, c *corev1.Container) error {
	_, _, timeout := probeTimings(p)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch {
	case p.HTTPGet != nil:
		g := p.HTTPGet
		port, err := resolvePort(g.Port, c)
		if err != nil {
			return err
		}
		host := g.Host
		if host == "" {
			host = podIP
		}
		scheme := strings.ToLower(string(g.Scheme))
		if scheme == "" {
			scheme = "http"
		}
		pathAndQuery := g.Path
		if !strings.HasPrefix(pathAndQuery, "/") {
			pathAndQuery = "/" + pathAndQuery
		}
		u, err := url.Parse(scheme + "://" + net.JoinHostPort(host, strconv.Itoa(port)) + pathAndQuery)
		if err != nil {
			return fmt.Errorf("probe URL: %w", err)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return err
		}
		req.Header.Set("User-Agent", "opstrace-node-agent/probe")
		for _, h := range g.HTTPHeaders {
			if strings.EqualFold(h.Name, "Host") {
				req.Host = h.Value
				continue
			}
			req.Header.Add(h.Name, h.Value)
		}
		resp, err := probeClient.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.CopyN(io.Discard, resp.Body, 10<<10)
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
		}
		return nil
	case p.TCPSocket != nil:
		port, err := resolvePort(p.TCPSocket.Port, c)
		if err != nil {
			return err
		}
		host := p.TCPSocket.Host
		if host == "" {
			host = podIP
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	case p.Exec != nil:
		return ErrExecProbeUnsupported
	case p.GRPC != nil:
		return fmt.Errorf("gRPC probes are not supported by the local node agent; use httpGet or tcpSocket")
	}
	return fmt.Errorf("probe has no handler")
}

// probeClient skips certificate verification (as the kubelet does for HTTPS probes) and follows no
// redirect to another host.
var probeClient = &http.Client{
	Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // probes do not verify, like the kubelet's
		DisableKeepAlives: true,
		Proxy:             nil,
	},
	CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if len(via) >= 10 {
			return http.ErrUseLastResponse
		}
		return nil
	},
}

// resolvePort turns a named port into the container's port number.
func resolvePort(port intstr.IntOrString, c *corev1.Container) (int, error) {
	if port.Type == intstr.Int {
		return port.IntValue(), nil
	}
	for _, p := range c.Ports {
		if p.Name == port.StrVal {
			return int(p.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(port.StrVal); err == nil {
		return n, nil
	}
	return 0, fmt.Errorf("container %s has no port named %q", c.Name, port.StrVal)
}
