package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"
)

// ReloadInterval is how often the mounted certificate files are checked. Polling, unlike inotify, sees the
// symlink swap by which the kubelet updates Secret volumes, and reading two small files costs nothing.
const ReloadInterval = 250 * time.Millisecond

// fileSource reads a set of files and hands their contents to apply whenever any of them changes. A bad update
// is logged and the previous state kept: the gateway never drops to "refuse everything" because of one
// half-written file.
type fileSource struct {
	name   string
	paths  []string
	apply  func(contents [][]byte) error
	last   [sha256.Size]byte
	loaded atomic.Bool
}

func (s *fileSource) check(log *slog.Logger) {
	contents := make([][]byte, len(s.paths))
	digest := sha256.New()
	for i, path := range s.paths {
		data, err := os.ReadFile(path)
		if err != nil {
			log.Warn("cannot read "+s.name+"; keeping the previous one", "path", path, "error", err)
			return
		}
		contents[i] = data
		digest.Write(data)
	}
	var sum [sha256.Size]byte
	copy(sum[:], digest.Sum(nil))
	if s.loaded.Load() && bytes.Equal(sum[:], s.last[:]) {
		return
	}
	if err := s.apply(contents); err != nil {
		log.Warn("invalid "+s.name+"; keeping the previous one", "error", err)
		return
	}
	s.last = sum
	s.loaded.Store(true)
	log.Info("loaded " + s.name)
}

// Certificate is the gateway's serving certificate and key, read from mounted files and re-read when they
// change, so that a renewed certificate is served without a restart. (The key set and tenant list are not
// files: see AuthWatcher.)
type Certificate struct {
	certificate atomic.Pointer[tls.Certificate]
	file        *fileSource
	log         *slog.Logger
}

// NewCertificate prepares the certificate files; Load reads them the first time, Watch keeps them current.
func NewCertificate(certFile, keyFile string, log *slog.Logger) *Certificate {
	c := &Certificate{log: log}
	c.file = &fileSource{name: "TLS certificate", paths: []string{certFile, keyFile}, apply: func(contents [][]byte) error {
		pair, err := tls.X509KeyPair(contents[0], contents[1])
		if err != nil {
			return fmt.Errorf("certificate and key do not form a pair (yet): %w", err)
		}
		c.certificate.Store(&pair)
		return nil
	}}
	return c
}

// Load reads the files once and fails when they are missing or invalid, so a misconfigured gateway does not
// start.
func (c *Certificate) Load() error {
	c.file.check(c.log)
	if !c.file.loaded.Load() {
		return fmt.Errorf("%s from %v could not be loaded", c.file.name, c.file.paths)
	}
	return nil
}

// Loaded reports whether the certificate has been loaded once.
func (c *Certificate) Loaded() bool { return c.file.loaded.Load() }

// Watch re-reads the files every interval until ctx ends.
func (c *Certificate) Watch(ctx context.Context, interval time.Duration) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			c.file.check(c.log)
		}
	}
}

// TLSConfig serves the current certificate, so a renewed one is used without a restart.
func (c *Certificate) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return c.certificate.Load(), nil
		},
	}
}
