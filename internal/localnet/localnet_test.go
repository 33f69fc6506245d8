package localnet

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The test binary doubles as the child: with this variable set, TestMain runs the namespace side.
const childEnv = "LOCALNET_TEST_CHILD"

const podAddress = "10.244.7.9:8080"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		if err := runChild(); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runChild serves HTTP on a pod address inside the namespace and forwards the inherited host listener to it,
// until its standard input closes.
func runChild() error {
	if err := Setup(); err != nil {
		return err
	}
	if out, err := exec.Command("ip", "-4", "-o", "address", "show", "dev", "lo").CombinedOutput(); err != nil || !strings.Contains(string(out), NodeIP+"/32") {
		return fmt.Errorf("the node address is not on lo (C programs could not resolve IPv4 names): %v %s", err, out)
	}
	pod, err := net.Listen("tcp", podAddress)
	if err != nil {
		return err
	}
	go func() {
		_ = http.Serve(pod, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "served at %s", r.Context().Value(http.LocalAddrContextKey))
		}))
	}()
	host, err := InheritedListener(0)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); cancel() }()
	Forward(ctx, host, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", podAddress)
	})
	return nil
}

func TestPodAddressesLiveInTheNamespaceAndAreReachedThroughHostListeners(t *testing.T) {
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("the ip command (iproute2) is required: apt-get install iproute2")
	}
	host, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	file, err := ListenerFile(host)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.ExtraFiles = []*os.File{file}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	Isolate(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start a child in a new network namespace: %v", err)
	}
	file.Close()
	host.Close() // the child holds its own copy
	t.Cleanup(func() { stdin.Close(); _ = cmd.Wait() })

	url := "http://" + host.Addr().String() + "/"
	var body string
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := http.Get(url)
		if err == nil {
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			body = string(b)
			if strings.HasPrefix(body, "served at") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer through the host listener: %v %q", err, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if body != "served at "+podAddress {
		t.Fatalf("answer %q, want it served at the pod address %s", body, podAddress)
	}

	// The pod range is routed only inside the namespace; the host's routing tables do not know it. (Read the
	// tables instead of dialing: no packet may go to a private address from the host's network.)
	out, err := exec.Command("ip", "route", "show", "table", "all").CombinedOutput()
	if err != nil {
		t.Fatalf("ip route: %v %s", err, out)
	}
	if strings.Contains(string(out), "10.244.") {
		t.Fatalf("the host routes the pod range: the pod network leaked out of its namespace:\n%s", out)
	}
}
