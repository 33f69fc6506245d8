// Package localnet gives a local cluster a network of its own: a Linux network namespace in which every pod
// has a real, non-loopback address, reachable from the host only through listeners on the host's 127.0.0.1.
//
// Why: Kubernetes refuses loopback addresses in EndpointSlices and Endpoints (ValidateEndpointIP), so pods
// with 127.0.x.y addresses could never be behind a Service. Inside its own namespace the cluster can use
// PodCIDR without touching the host's network: the range is routed "local" to lo (AnyIP), so any address in
// it can be bound without configuring interfaces, and nothing outside the namespace can reach it.
//
// The launcher opens the host listeners first and hands them to the child as inherited files; a socket stays
// in the namespace it was made in, so the child accepts host connections and dials inside its own namespace.
package localnet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
)

const (
	// PodCIDR is the range pod addresses come from inside the cluster's namespace.
	PodCIDR = "10.244.0.0/16"
	// NodeIP is the node's own address inside the namespace.
	NodeIP = "10.244.0.1"
)

// Isolate makes cmd start in a new network namespace; when not running as root, also in a new user namespace
// that maps the caller to root, which Linux allows unprivileged users to create.
func Isolate(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWNET
	if os.Geteuid() != 0 {
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Geteuid(), Size: 1}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}}
		cmd.SysProcAttr.GidMappingsEnableSetgroups = false
	}
}

// Setup runs inside the new namespace: it brings lo up and routes PodCIDR to it as local addresses. NodeIP
// is also put on lo as an address: glibc's getaddrinfo (AI_ADDRCONFIG) resolves IPv4 names only when an
// interface has a non-loopback IPv4 address, and a route alone does not count.
func Setup() error {
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"address", "replace", NodeIP + "/32", "dev", "lo"},
		{"route", "replace", "local", PodCIDR, "dev", "lo"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			if errors.Is(err, exec.ErrNotFound) {
				return errors.New("the ip command is missing: install iproute2 (apt-get install iproute2)")
			}
			return fmt.Errorf("ip %v: %v: %s", args, err, out)
		}
	}
	return nil
}

// ListenerFile returns the file of a TCP listener, to pass to a child in cmd.ExtraFiles. The child finds it
// as file descriptor 3 + its index in ExtraFiles.
func ListenerFile(l net.Listener) (*os.File, error) {
	tcp, ok := l.(*net.TCPListener)
	if !ok {
		return nil, fmt.Errorf("%T is not a TCP listener", l)
	}
	return tcp.File()
}

// InheritedListener is the listener a parent passed as ExtraFiles[index].
func InheritedListener(index int) (net.Listener, error) {
	f := os.NewFile(uintptr(3+index), fmt.Sprintf("listener-%d", index))
	if f == nil {
		return nil, fmt.Errorf("no inherited file %d", index)
	}
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("inherited file %d is not a listener: %w", index, err)
	}
	return l, nil
}

// Forward copies every connection accepted on l to a connection made by dial, until ctx ends. A failed dial
// closes the client's connection: the client sees the backend is not there.
func Forward(ctx context.Context, l net.Listener, dial func(context.Context) (net.Conn, error)) {
	go func() { <-ctx.Done(); l.Close() }()
	for {
		client, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer client.Close()
			backend, err := dial(ctx)
			if err != nil {
				return
			}
			defer backend.Close()
			var wg sync.WaitGroup
			wg.Add(2)
			pipe := func(dst, src net.Conn) {
				defer wg.Done()
				_, _ = io.Copy(dst, src)
				if tcp, ok := dst.(*net.TCPConn); ok {
					_ = tcp.CloseWrite()
				}
			}
			go pipe(backend, client)
			go pipe(client, backend)
			wg.Wait()
		}()
	}
}
