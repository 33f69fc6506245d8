// Package e2e runs the distribution for real on this machine: `opstrace create local` with the binaries of
// bin/ (make build test-tools), then traffic through the gateway with real remote-write and PromQL clients.
package e2e

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/opstrace/opstrace/internal/remotewrite"
	"github.com/opstrace/opstrace/internal/testenv"
)

type localCluster struct {
	t          *testing.T
	name, home string
	bin        string
	gatewayURL string
	caFile     string
	kubeconfig string
	client     *http.Client
}

func (c *localCluster) opstrace(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(c.bin, "opstrace"), args...)
	cmd.Env = append(os.Environ(), "OPSTRACE_HOME="+c.home)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (c *localCluster) kubectl(stdin string, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(c.bin, "kubectl"), append([]string{"--kubeconfig", c.kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (c *localCluster) token(tenant string) string {
	c.t.Helper()
	out, err := c.opstrace("tenant", "token", "local", c.name, tenant)
	if err != nil {
		c.t.Fatalf("opstrace tenant token: %v\n%s", err, out)
	}
	return strings.TrimSpace(out)
}

func (c *localCluster) push(token string, series []remotewrite.Series) (int, string) {
	req, _ := http.NewRequest("POST", c.gatewayURL+"/api/v1/push", bytes.NewReader(remotewrite.Encode(series)))
	for k, v := range remotewrite.Headers {
		req.Header.Set(k, v)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := c.client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(body)
}

// query returns the values of the samples of promql at t, by their "tenant" label.
func (c *localCluster) query(token, promql string, at time.Time) (map[string]string, int) {
	params := url.Values{"query": {promql}, "time": {fmt.Sprint(at.Unix())}}
	req, _ := http.NewRequest("GET", c.gatewayURL+"/api/v1/query?"+params.Encode(), nil)
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := c.client.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer res.Body.Close()
	var body struct {
		Data struct {
			Result []struct {
				Metric map[string]string
				Value  []any
			}
		}
	}
	raw, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		return nil, res.StatusCode
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		c.t.Fatalf("query %s: %s", promql, raw)
	}
	values := map[string]string{}
	for _, r := range body.Data.Result {
		values[r.Metric["tenant"]] = fmt.Sprint(r.Value[1])
	}
	return values, res.StatusCode
}

// createLocalCluster runs `opstrace create local NAME` with args in a temporary OPSTRACE_HOME, and destroys the
// cluster when the test ends (showing the ends of its logs if the test failed). It returns the cluster and the
// time create took to report it ready.
func createLocalCluster(tb testing.TB, name string, args ...string) (*localCluster, time.Duration) {
	tb.Helper()
	bin := filepath.Join(testenv.RepoRoot(), "bin")
	for _, b := range []string{"opstrace", "opstrace-node-agent", "kubectl"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			tb.Fatalf("%s missing in bin/: run `make build test-tools` (make test does)", b)
		}
	}
	c := &localCluster{name: name, home: tb.TempDir(), bin: bin}
	if t, ok := tb.(*testing.T); ok {
		c.t = t
	}
	start := time.Now()
	out, err := c.opstrace(append([]string{"create", "local", name}, args...)...)
	took := time.Since(start)
	tb.Cleanup(func() {
		if tb.Failed() {
			logs, _ := filepath.Glob(filepath.Join(c.home, "clusters", c.name, "logs", "*.log"))
			for _, log := range logs {
				data, _ := os.ReadFile(log)
				lines := strings.Split(string(data), "\n")
				tb.Logf("last lines of %s:\n%s", log, strings.Join(lines[max(0, len(lines)-40):], "\n"))
			}
		}
		if _, err := os.Stat(filepath.Join(c.home, "clusters", c.name)); err == nil {
			if out, err := c.opstrace("destroy", "local", c.name, "--yes"); err != nil {
				tb.Errorf("destroy: %v\n%s", err, out)
			}
		}
	})
	if err != nil {
		tb.Fatalf("opstrace create local: %v\n%s", err, out)
	}
	c.gatewayURL = regexp.MustCompile(`Gateway:\s+(\S+)`).FindStringSubmatch(out)[1]
	c.caFile = regexp.MustCompile(`CA file:\s+(\S+)`).FindStringSubmatch(out)[1]
	c.kubeconfig = regexp.MustCompile(`Kubeconfig:\s+(\S+)`).FindStringSubmatch(out)[1]
	ca, err := os.ReadFile(c.caFile)
	if err != nil {
		tb.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	c.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	return c, took
}

// clientset is a client of the cluster's API server, through the host kubeconfig.
func (c *localCluster) clientset(tb testing.TB) *kubernetes.Clientset {
	tb.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		tb.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 100, 200
	return kubernetes.NewForConfigOrDie(cfg)
}

func TestLocalCluster(t *testing.T) {
	c, took := createLocalCluster(t, "e2e")
	t.Logf("create local → ready: %s", took.Round(time.Second))

	if again, err := c.opstrace("create", "local", c.name); err != nil || !strings.Contains(again, "already running") {
		t.Fatalf("a second create is not a reported no-op: %v\n%s", err, again)
	}
	if status, err := c.opstrace("status", "local", c.name); err != nil {
		t.Fatalf("status of a ready cluster: %v\n%s", err, status)
	}
	for _, tenant := range []string{"system", "default"} {
		if out, err := c.opstrace("verify", "local", c.name, "--tenant", tenant); err != nil || !strings.Contains(out, "read back") {
			t.Fatalf("verify as %s: %v\n%s", tenant, err, out)
		} else {
			t.Log(strings.TrimSpace(out))
		}
	}
	if out, err := c.opstrace("verify", "local", c.name, "--tenant", "nobody"); err == nil || !strings.Contains(out, "tenant-nobody-token") {
		t.Fatalf("verify as a tenant without a token succeeded or did not say why: %v\n%s", err, out)
	}

	// A second tenant, the way a user adds one: kubectl apply.
	applied := time.Now()
	if out, err := c.kubectl("apiVersion: opstrace.io/v1alpha1\nkind: Tenant\nmetadata:\n  name: team-b\n  namespace: opstrace\n", "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply tenant: %v\n%s", err, out)
	}
	var tokenB string
	now := time.Now().Truncate(time.Second) // queries take whole seconds; a later sample would be invisible
	probe := []remotewrite.Series{{Labels: map[string]string{"__name__": "e2e_probe", "tenant": "team-b"},
		Samples: []remotewrite.Sample{{Value: 2, TimestampMsec: now.UnixMilli()}}}}
	for deadline := time.Now().Add(30 * time.Second); ; {
		if out, err := c.opstrace("tenant", "token", "local", c.name, "team-b"); err == nil {
			tokenB = strings.TrimSpace(out)
			if code, _ := c.push(tokenB, probe); code == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("team-b's token was not accepted within 30 s of kubectl apply")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("Tenant apply → its token accepted by the gateway: %s", time.Since(applied).Round(time.Millisecond))

	tokenA := c.token("default")
	if code, body := c.push(tokenA, []remotewrite.Series{{Labels: map[string]string{"__name__": "e2e_probe", "tenant": "default"},
		Samples: []remotewrite.Sample{{Value: 1, TimestampMsec: now.UnixMilli()}}}}); code != http.StatusOK {
		t.Fatalf("push as default: %d %s", code, body)
	}
	if got, code := c.query(tokenA, "e2e_probe", now); code != 200 || fmt.Sprint(got) != "map[default:1]" {
		t.Fatalf("default reads %v (%d), want only its own sample 1", got, code)
	}
	if got, code := c.query(tokenB, "e2e_probe", now); code != 200 || fmt.Sprint(got) != "map[team-b:2]" {
		t.Fatalf("team-b reads %v (%d), want only its own sample 2", got, code)
	}

	forged := strings.Split(tokenA, ".")
	forged[2] = strings.Repeat("A", len(forged[2]))
	if code, body := c.push(strings.Join(forged, "."), probe); code != http.StatusUnauthorized {
		t.Fatalf("a forged token got %d %s, want 401", code, body)
	}

	// Upgrade in place (same versions here: the controller is re-installed, CRDs re-applied), then restart
	// Cortex: the samples already written come back from its WAL on the local volume.
	upgradeStart := time.Now()
	if out, err := c.opstrace("upgrade", "local", c.name); err != nil || !strings.Contains(out, "verified local cluster") {
		t.Fatalf("opstrace upgrade local: %v\n%s", err, out)
	}
	t.Logf("upgrade local (controller re-installed, rollout waited, verified): %s", time.Since(upgradeStart).Round(time.Millisecond))
	restarted := time.Now()
	if out, err := c.kubectl("", "delete", "pod", c.name+"-all-0", "-n", "opstrace", "--wait=true"); err != nil {
		t.Fatalf("restart Cortex: %v\n%s", err, out)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		if got, code := c.query(tokenA, "e2e_probe", now); code == 200 && fmt.Sprint(got) == "map[default:1]" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("after Cortex restarted, the sample written before is not readable within 2 minutes")
		}
	}
	t.Logf("Cortex pod deleted → earlier sample readable again: %s", time.Since(restarted).Round(time.Millisecond))

	deleted := time.Now()
	if out, err := c.kubectl("", "delete", "tenant", "team-b", "-n", "opstrace"); err != nil {
		t.Fatalf("kubectl delete tenant: %v\n%s", err, out)
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		if code, _ := c.push(tokenB, probe); code == http.StatusUnauthorized {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a deleted tenant's token still works 30 s later")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("Tenant delete → its token refused: %s", time.Since(deleted).Round(time.Millisecond))

	if out, err := c.opstrace("destroy", "local", c.name, "--yes"); err != nil {
		t.Fatalf("destroy: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(c.home, "clusters", c.name)); !os.IsNotExist(err) {
		t.Fatalf("destroy left state behind: %v", err)
	}
	if out, _ := exec.Command("pgrep", "-f", c.home).CombinedOutput(); strings.TrimSpace(string(out)) != "" {
		t.Fatalf("destroy left processes behind: %s", out)
	}
}
