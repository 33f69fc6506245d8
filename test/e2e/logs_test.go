package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestLocalLogs runs logs end to end on the local cluster: the real gateway in front of a real Loki (bin/loki
// as grafana/loki), pushes of two tenants read back with LogQL, each tenant seeing only its own lines, a
// live tail (websocket) receiving a line pushed after it connected, and forged tokens refused.
func TestLocalLogs(t *testing.T) {
	c, took := createLocalCluster(t, "e2e-logs")
	t.Logf("create local (logs on) → ready: %s", took.Round(time.Second))
	if out, err := c.kubectl("", "get", "metricscluster", c.name, "-n", "opstrace",
		"-o", `jsonpath={.status.conditions[?(@.type=="LokiReady")].status}`); err != nil || out != "True" {
		t.Fatalf("LokiReady is %q, want True: %v", out, err)
	}
	if out, err := c.opstrace("verify", "local", c.name); err != nil || !strings.Contains(out, "verified logs") {
		t.Fatalf("verify local does not verify logs: %v\n%s", err, out)
	} else {
		t.Log(strings.TrimSpace(out))
	}

	if out, err := c.kubectl("apiVersion: opstrace.io/v1alpha1\nkind: Tenant\nmetadata:\n  name: team-b\n  namespace: opstrace\n", "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply tenant: %v\n%s", err, out)
	}
	tokenA := c.token("default")
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	at := time.Now()
	lineA, lineB := "line of default "+run, "line of team-b "+run
	if code, body := c.lokiPush(tokenA, map[string]string{"job": "e2e", "run": run}, at, lineA); code != http.StatusNoContent {
		t.Fatalf("push as default: %d %s", code, body)
	}
	var tokenB string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if out, err := c.opstrace("tenant", "token", "local", c.name, "team-b"); err == nil {
			tokenB = strings.TrimSpace(out)
			if code, _ := c.lokiPush(tokenB, map[string]string{"job": "e2e", "run": run}, at, lineB); code == http.StatusNoContent {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("team-b could not push logs within 30 s of kubectl apply")
		}
	}

	logql := fmt.Sprintf(`{job="e2e", run=%q}`, run)
	readBack := time.Now()
	eachReadsOnlyItsOwn := func(within time.Duration, when string) {
		t.Helper()
		for deadline := time.Now().Add(within); ; time.Sleep(200 * time.Millisecond) {
			a, codeA := c.lokiQuery(tokenA, logql, at)
			b, codeB := c.lokiQuery(tokenB, logql, at)
			if codeA == 200 && codeB == 200 && fmt.Sprint(a) == fmt.Sprint([]string{lineA}) && fmt.Sprint(b) == fmt.Sprint([]string{lineB}) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s default reads %q (%d), team-b reads %q (%d); want each only its own line", when, a, codeA, b, codeB)
			}
		}
	}
	eachReadsOnlyItsOwn(30*time.Second, "after the push")
	t.Logf("push → both tenants read their own line back with LogQL: %s", time.Since(readBack).Round(time.Millisecond))

	// Live tail: connect first, then push; the line arrives over the websocket.
	tail := c.dialTail(t, tokenA, fmt.Sprintf(`{job="e2e-tail", run=%q}`, run))
	defer tail.Close()
	tailLine := "tailed line " + run
	pushed := time.Now()
	if code, body := c.lokiPush(tokenA, map[string]string{"job": "e2e-tail", "run": run}, time.Now(), tailLine); code != http.StatusNoContent {
		t.Fatalf("push for the tail: %d %s", code, body)
	}
	_ = tail.SetReadDeadline(time.Now().Add(60 * time.Second))
	for {
		message, err := tail.readMessage()
		if err != nil {
			t.Fatalf("the tail did not deliver the line pushed after it connected: %v", err)
		}
		if strings.Contains(message, tailLine) {
			break
		}
	}
	t.Logf("push → line received by a live tail: %s", time.Since(pushed).Round(time.Millisecond))

	// A token signed by anyone else is refused on every logs route.
	forged := strings.Split(tokenA, ".")
	forged[2] = strings.Repeat("A", len(forged[2]))
	bad := strings.Join(forged, ".")
	if code, body := c.lokiPush(bad, map[string]string{"job": "e2e"}, time.Now(), "forged"); code != http.StatusUnauthorized {
		t.Fatalf("a push with a forged token got %d %s, want 401", code, body)
	}
	if _, code := c.lokiQuery(bad, logql, at); code != http.StatusUnauthorized {
		t.Fatalf("a query with a forged token got %d, want 401", code)
	}

	// A change that restarts Loki (its retention is in its configuration) is rolled out by the controller's
	// upgrade planner, and the lines stored before are still there afterwards: the WAL and chunks live on the
	// pod's volume.
	pod := c.name + "-loki-0"
	uid := func() string {
		out, _ := c.kubectl("", "get", "pod", pod, "-n", "opstrace", "-o", "jsonpath={.metadata.uid}")
		return out
	}
	before := uid()
	if before == "" {
		t.Fatalf("pod %s not found", pod)
	}
	restarted := time.Now()
	if out, err := c.kubectl("", "patch", "metricscluster", c.name, "-n", "opstrace", "--type", "merge",
		"-p", `{"spec":{"retention":{"logsDays":9}}}`); err != nil {
		t.Fatalf("kubectl patch: %v\n%s", err, out)
	}
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		status, _ := c.kubectl("", "get", "metricscluster", c.name, "-n", "opstrace", "-o",
			`jsonpath={.status.conditions[?(@.type=="LokiReady")].status} {.status.conditions[?(@.type=="Progressing")].status}`)
		now := uid()
		if now != "" && now != before && status == "True False" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Loki was not restarted and ready within 3 minutes of the retention change (pod %s uid %q, was %q; LokiReady Progressing: %q)",
				pod, now, before, status)
		}
	}
	t.Logf("retention change → Loki replaced by the controller and ready: %s", time.Since(restarted).Round(time.Second))
	eachReadsOnlyItsOwn(time.Minute, "after Loki's restart")
	t.Log("after Loki's restart both tenants still read the lines pushed before it")
}

func (c *localCluster) lokiPush(token string, labels map[string]string, at time.Time, line string) (int, string) {
	body, _ := json.Marshal(map[string]any{"streams": []any{map[string]any{
		"stream": labels, "values": [][]string{{strconv.FormatInt(at.UnixNano(), 10), line}},
	}}})
	req, _ := http.NewRequest("POST", c.gatewayURL+"/loki/api/v1/push", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := c.client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	answer, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(answer)
}

// lokiQuery returns the lines of a LogQL log query over the minute around at.
func (c *localCluster) lokiQuery(token, logql string, at time.Time) ([]string, int) {
	params := url.Values{"query": {logql}, "start": {strconv.FormatInt(at.Add(-time.Minute).UnixNano(), 10)},
		"end": {strconv.FormatInt(at.Add(time.Minute).UnixNano(), 10)}}
	req, _ := http.NewRequest("GET", c.gatewayURL+"/loki/api/v1/query_range?"+params.Encode(), nil)
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := c.client.Do(req)
	if err != nil {
		return nil, 0
	}
	defer res.Body.Close()
	var answer struct {
		Data struct {
			Result []struct {
				Values [][2]string `json:"values"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(res.Body).Decode(&answer); err != nil {
		return nil, res.StatusCode
	}
	var lines []string
	for _, stream := range answer.Data.Result {
		for _, v := range stream.Values {
			lines = append(lines, v[1])
		}
	}
	return lines, res.StatusCode
}

// wsConn is the client end of a websocket, enough to read a Loki tail: the handshake of RFC 6455 and the
// server's unmasked frames. There is no websocket client in this module's dependencies, and a tail needs no
// more.
type wsConn struct {
	*tls.Conn
	r *bufio.Reader
}

// dialTail opens /loki/api/v1/tail for logql through the gateway with the token.
func (c *localCluster) dialTail(t *testing.T, token, logql string) *wsConn {
	t.Helper()
	u, err := url.Parse(c.gatewayURL)
	if err != nil {
		t.Fatal(err)
	}
	config := c.client.Transport.(*http.Transport).TLSClientConfig.Clone()
	config.ServerName = u.Hostname()
	conn, err := tls.Dial("tcp", u.Host, config)
	if err != nil {
		t.Fatalf("dial the gateway: %v", err)
	}
	var key [16]byte
	_, _ = rand.Read(key[:])
	req, _ := http.NewRequest("GET", c.gatewayURL+"/loki/api/v1/tail?"+url.Values{"query": {logql}}.Encode(), nil)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", base64.StdEncoding.EncodeToString(key[:]))
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	if err := req.Write(conn); err != nil {
		t.Fatalf("send the tail request: %v", err)
	}
	r := bufio.NewReader(conn)
	res, err := http.ReadResponse(r, req)
	if err != nil {
		t.Fatalf("read the tail response: %v", err)
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(res.Body)
		t.Fatalf("tail answered %d %s, want 101 Switching Protocols", res.StatusCode, body)
	}
	_ = conn.SetDeadline(time.Time{})
	return &wsConn{Conn: conn, r: r}
}

// readMessage reads the next text or binary message, skipping control frames.
func (w *wsConn) readMessage() (string, error) {
	var message []byte
	for {
		var header [2]byte
		if _, err := io.ReadFull(w.r, header[:]); err != nil {
			return "", err
		}
		fin, opcode := header[0]&0x80 != 0, header[0]&0x0f
		length := uint64(header[1] & 0x7f)
		switch length {
		case 126:
			var n [2]byte
			if _, err := io.ReadFull(w.r, n[:]); err != nil {
				return "", err
			}
			length = uint64(binary.BigEndian.Uint16(n[:]))
		case 127:
			var n [8]byte
			if _, err := io.ReadFull(w.r, n[:]); err != nil {
				return "", err
			}
			length = binary.BigEndian.Uint64(n[:])
		}
		if header[1]&0x80 != 0 || length > 16<<20 {
			return "", errors.New("unexpected masked or oversized frame from the server")
		}
		payload := make([]byte, length)
		if _, err := io.ReadFull(w.r, payload); err != nil {
			return "", err
		}
		switch opcode {
		case 0x8:
			return "", fmt.Errorf("the server closed the tail: %q", payload)
		case 0x9, 0xA: // ping, pong: a short-lived reader need not answer
			continue
		}
		message = append(message, payload...)
		if fin {
			return string(message), nil
		}
	}
}
