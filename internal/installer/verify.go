package installer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/opstrace/opstrace/internal/remotewrite"
)

// verifyLocal is `opstrace verify local NAME`: a canary write through the gateway as tenant, then the same
// series read back with PromQL. It reports both latencies and fails when the sample does not come back.
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
	token, err := c.token(ctx, kube, tenant)
	if err != nil {
		return err
	}
	client, err := c.gatewayClient()
	if err != nil {
		return err
	}
	gatewayURL := c.GatewayURL(ports)

	var raw [8]byte
	_, _ = rand.Read(raw[:])
	run := hex.EncodeToString(raw[:])
	at := time.Now().Truncate(time.Second) // queries evaluate at whole seconds
	series := remotewrite.Series{
		Labels:  map[string]string{"__name__": "opstrace_verify", "run": run},
		Samples: []remotewrite.Sample{{Value: 1, TimestampMsec: at.UnixMilli()}},
	}
	start := time.Now()
	if err := pushSeries(ctx, client, gatewayURL, token, series); err != nil {
		return fmt.Errorf("verify: write as tenant %s: %w", tenant, err)
	}
	wrote := time.Since(start)

	promql := fmt.Sprintf(`opstrace_verify{run=%q}`, run)
	start = time.Now()
	for {
		found, err := queryFound(ctx, client, gatewayURL, token, promql, at)
		if err != nil {
			return fmt.Errorf("verify: read as tenant %s: %w", tenant, err)
		}
		if found {
			break
		}
		if time.Since(start) > 30*time.Second {
			return fmt.Errorf("verify: the sample written as tenant %s (%s) did not come back within 30s", tenant, promql)
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Fprintf(out, "verified local cluster %s as tenant %s: write %s, read back %s (%s)\n",
		name, tenant, wrote.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), promql)
	return nil
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
