package installer

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	ctrlclient "sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/manifests"
	"github.com/opstrace/opstrace/internal/remotewrite"
)

// verifyLocal is `opstrace verify local NAME`: the canary (see canary) through the gateway on this machine's
// host port, trusting the gateway CA file that create and upgrade keep.
func verifyLocal(ctx context.Context, name, tenant string, out io.Writer) error {
	c, err := openLocalCluster(name)
	if err != nil {
		return err
	}
	if c.supervisorPID() == 0 {
		return fmt.Errorf("local cluster %s is not running (opstrace list local shows the clusters)", name)
	}
	ports, err := c.readPorts()
	if err != nil {
		return err
	}
	kube, err := c.client()
	if err != nil {
		return err
	}
	token, err := tenantToken(ctx, kube, LocalNamespace, tenant)
	if err != nil {
		return err
	}
	client, err := c.gatewayClient()
	if err != nil {
		return err
	}
	var mc v1alpha1.MetricsCluster
	if err := kube.Get(ctx, ctrlclient.ObjectKey{Namespace: LocalNamespace, Name: name}, &mc); err != nil {
		return fmt.Errorf("verify: read MetricsCluster %s: %w", name, err)
	}
	return canary(ctx, gatewayConn{URL: c.GatewayURL(ports), Client: client}, token, tenant, "local cluster "+name,
		mc.Spec.Logs.IsEnabled(), out)
}

// gatewayConn is how the CLI reaches a cluster's gateway: the base URL requests name (its host is also the
// TLS server name) and a client that trusts the gateway's CA and dials where the gateway listens.
type gatewayConn struct {
	URL    string
	Client *http.Client
}

// tenantToken reads the token the Tenant controller keeps for tenant in the Secret tenant-TENANT-token of
// the cluster's namespace. The token is a credential: it is returned, never printed or put in an error.
func tenantToken(ctx context.Context, kube ctrlclient.Client, namespace, tenant string) (string, error) {
	var secret corev1.Secret
	key := ctrlclient.ObjectKey{Namespace: namespace, Name: manifests.TenantTokenSecretName(tenant)}
	if err := kube.Get(ctx, key, &secret); err != nil {
		return "", fmt.Errorf("read the token of tenant %s (Secret %s/%s): %w; the controller writes it for each Tenant "+
			"(kubectl get tenants -n %s lists them)", tenant, key.Namespace, key.Name, err, namespace)
	}
	token := string(secret.Data[manifests.TenantTokenKey])
	if token == "" {
		return "", fmt.Errorf("the token of tenant %s (Secret %s/%s, key %s) is empty: the controller has not issued it yet; "+
			"kubectl describe tenant %s -n %s says why", tenant, key.Namespace, key.Name, manifests.TenantTokenKey, tenant, namespace)
	}
	return token, nil
}

// canary is what verify does on every kind of cluster: a unique series written through the gateway as
// tenant, then read back with PromQL; with logs on, a log line pushed through the gateway's Loki API and
// read back with LogQL. It reports the latencies and fails when the sample or the line does not come back.
// what names the cluster in the report ("local cluster dev").
func canary(ctx context.Context, gw gatewayConn, token, tenant, what string, logs bool, out io.Writer) error {
	var raw [8]byte
	_, _ = rand.Read(raw[:])
	run := hex.EncodeToString(raw[:])
	at := time.Now().Truncate(time.Second) // queries evaluate at whole seconds
	series := remotewrite.Series{
		Labels:  map[string]string{"__name__": "opstrace_verify", "run": run},
		Samples: []remotewrite.Sample{{Value: 1, TimestampMsec: at.UnixMilli()}},
	}
	start := time.Now()
	if err := pushSeries(ctx, gw.Client, gw.URL, token, series); err != nil {
		return fmt.Errorf("verify: write as tenant %s to %s: %w", tenant, gw.URL, err)
	}
	wrote := time.Since(start)

	promql := fmt.Sprintf(`opstrace_verify{run=%q}`, run)
	start = time.Now()
	for {
		found, err := queryFound(ctx, gw.Client, gw.URL, token, promql, at)
		if err != nil {
			return fmt.Errorf("verify: read as tenant %s from %s: %w", tenant, gw.URL, err)
		}
		if found {
			break
		}
		if time.Since(start) > 30*time.Second {
			return fmt.Errorf("verify: the sample written as tenant %s (%s) did not come back within 30s", tenant, promql)
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Fprintf(out, "verified %s as tenant %s: write %s, read back %s (%s)\n",
		what, tenant, wrote.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), promql)

	if !logs {
		fmt.Fprintf(out, "logs are off for %s (spec.logs.enabled: false): no log line written\n", what)
		return nil
	}
	return verifyLogs(ctx, gw.Client, gw.URL, token, tenant, what, run, out)
}

// verifyLogs pushes one log line through the gateway's Loki API and reads it back with LogQL query_range.
func verifyLogs(ctx context.Context, client *http.Client, gatewayURL, token, tenant, what, run string, out io.Writer) error {
	at := time.Now()
	line := "opstrace verify " + run
	start := time.Now()
	if err := PushLogLine(ctx, client, gatewayURL, token, map[string]string{"job": "opstrace-verify", "run": run}, at, line); err != nil {
		return fmt.Errorf("verify: push a log line as tenant %s: %w", tenant, err)
	}
	wrote := time.Since(start)
	logql := fmt.Sprintf(`{job="opstrace-verify", run=%q}`, run)
	start = time.Now()
	for {
		lines, err := QueryLogLines(ctx, client, gatewayURL, token, logql, at.Add(-time.Minute), at.Add(time.Minute))
		if err != nil {
			return fmt.Errorf("verify: read logs as tenant %s: %w", tenant, err)
		}
		if slices.Contains(lines, line) {
			break
		}
		if time.Since(start) > 30*time.Second {
			return fmt.Errorf("verify: the log line pushed as tenant %s (%s) did not come back within 30s", tenant, logql)
		}
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Fprintf(out, "verified logs of %s as tenant %s: push %s, read back %s (%s)\n",
		what, tenant, wrote.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), logql)
	return nil
}

// PushLogLine sends one log line with labels at t through the gateway's /loki/api/v1/push, in Loki's JSON
// push format, with the tenant's token.
func PushLogLine(ctx context.Context, client *http.Client, gatewayURL, token string, labels map[string]string, t time.Time, line string) error {
	body, err := json.Marshal(map[string]any{"streams": []any{map[string]any{
		"stream": labels,
		"values": [][]string{{strconv.FormatInt(t.UnixNano(), 10), line}},
	}}})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, gatewayURL+"/loki/api/v1/push", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	res, err := client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if res.StatusCode != http.StatusNoContent && res.StatusCode != http.StatusOK {
		return fmt.Errorf("gateway answered %d: %s", res.StatusCode, answer)
	}
	return nil
}

// QueryLogLines runs a LogQL log query over [from, to] through the gateway's /loki/api/v1/query_range and
// returns the lines found, newest first.
func QueryLogLines(ctx context.Context, client *http.Client, gatewayURL, token, logql string, from, to time.Time) ([]string, error) {
	params := url.Values{"query": {logql}, "start": {strconv.FormatInt(from.UnixNano(), 10)},
		"end": {strconv.FormatInt(to.UnixNano(), 10)}, "limit": {"100"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, gatewayURL+"/loki/api/v1/query_range?"+params.Encode(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(res.Body, 4<<20))
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("gateway answered %d: %s", res.StatusCode, body)
	}
	var result struct {
		Data struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Values [][2]string `json:"values"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &result); err != nil {
		return nil, fmt.Errorf("query answer is not JSON: %w", err)
	}
	if result.Data.ResultType != "streams" {
		return nil, fmt.Errorf("query answer has result type %q, want streams (a log query)", result.Data.ResultType)
	}
	var lines []string
	for _, stream := range result.Data.Result {
		for _, v := range stream.Values {
			lines = append(lines, v[1])
		}
	}
	return lines, nil
}

// queryFound says whether an instant query at t returns a sample.
func queryFound(ctx context.Context, client *http.Client, gatewayURL, token, promql string, t time.Time) (bool, error) {
	params := url.Values{"query": {promql}, "time": {fmt.Sprint(t.Unix())}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, gatewayURL+"/api/v1/query?"+params.Encode(), nil)
	if err != nil {
		return false, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := client.Do(req)
	if err != nil {
		return false, err
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if res.StatusCode != http.StatusOK {
		return false, fmt.Errorf("gateway answered %d: %s", res.StatusCode, body)
	}
	var result struct {
		Data struct {
			Result []json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &result); err != nil {
		return false, fmt.Errorf("query answer is not JSON: %w", err)
	}
	return len(result.Data.Result) > 0, nil
}
