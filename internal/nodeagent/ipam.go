package nodeagent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
)

// IPAM hands every pod its own address from a range, kept in a file so a pod keeps its address across
// restarts of the node agent. The range must be routed locally so that processes can bind any address in
// it: the local cluster uses 10.244.0.0/16 routed "local" to lo inside its own network namespace (see
// internal/localnet), since Kubernetes refuses loopback addresses behind Services; DefaultPodCIDR, part of
// 127.0.0.0/8, needs no setup and serves single pods, as in this package's tests.
type IPAM struct {
	mu       sync.Mutex
	file     string
	cidr     netip.Prefix
	reserved map[netip.Addr]bool
	byUID    map[string]string
}

// DefaultPodCIDR is a loopback range that needs no network setup, clear of 127.0.0.0/24 (127.0.0.1 is the
// host's API server, 127.0.0.53 a local resolver).
const DefaultPodCIDR = "127.1.0.0/16"

// NewIPAM loads the allocations from file, which need not exist yet, and allocates from cidr, never the
// range's first and last addresses nor reserved ones (the node's).
func NewIPAM(file string, cidr netip.Prefix, reserved ...netip.Addr) (*IPAM, error) {
	if !cidr.Addr().Is4() || cidr.Bits() > 30 {
		return nil, fmt.Errorf("pod CIDR %s: use an IPv4 range of at least 4 addresses", cidr)
	}
	ipam := &IPAM{file: file, cidr: cidr.Masked(), reserved: map[netip.Addr]bool{}, byUID: map[string]string{}}
	for _, addr := range reserved {
		ipam.reserved[addr] = true
	}
	data, err := os.ReadFile(file)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read pod IP allocations: %w", err)
	default:
		if err := json.Unmarshal(data, &ipam.byUID); err != nil {
			return nil, fmt.Errorf("read pod IP allocations %s: %w", file, err)
		}
	}
	return ipam, nil
}

// Allocate returns the address of the pod with uid, allocating the lowest free one the first time.
func (p *IPAM) Allocate(uid string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ip, ok := p.byUID[uid]; ok {
		return ip, nil
	}
	used := make(map[string]bool, len(p.byUID))
	for _, ip := range p.byUID {
		used[ip] = true
	}
	for addr := p.cidr.Addr().Next(); p.cidr.Contains(addr.Next()); addr = addr.Next() {
		ip := addr.String()
		if used[ip] || p.reserved[addr] {
			continue
		}
		p.byUID[uid] = ip
		if err := p.save(); err != nil {
			delete(p.byUID, uid)
			return "", err
		}
		return ip, nil
	}
	return "", fmt.Errorf("no free pod IP in %s", p.cidr)
}

// Lookup returns the address of uid, if it has one.
func (p *IPAM) Lookup(uid string) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ip, ok := p.byUID[uid]
	return ip, ok
}

// Release frees the address of uid.
func (p *IPAM) Release(uid string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.byUID[uid]; !ok {
		return nil
	}
	delete(p.byUID, uid)
	return p.save()
}

// UIDs are the pods holding an address.
func (p *IPAM) UIDs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	uids := make([]string, 0, len(p.byUID))
	for uid := range p.byUID {
		uids = append(uids, uid)
	}
	return uids
}

func (p *IPAM) save() error {
	data, err := json.MarshalIndent(p.byUID, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(p.file, data, 0o644)
}

// writeFileAtomic writes a file through a temporary file and a rename, so a reader never sees half of it.
func writeFileAtomic(file string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}
