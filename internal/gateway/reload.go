package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/opstrace/opstrace/internal/tokens"
)

// ReloadInterval is how often mounted files are checked. Polling, unlike inotify, sees the symlink swap by
// which the kubelet updates Secret and ConfigMap volumes, and reading a few small files costs nothing.
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

// Sources are the files the gateway serves from: TLS certificate and key, verification keys, tenant list.
type Sources struct {
	certificate atomic.Pointer[tls.Certificate]
	files       []*fileSource
	log         *slog.Logger
}

// NewSources prepares the gateway's files; Load reads them the first time, Watch keeps them current.
func NewSources(auth *Authenticator, certFile, keyFile, keysFile, tenantsFile string, log *slog.Logger) *Sources {
	s := &Sources{log: log}
	s.files = []*fileSource{
		{name: "TLS certificate", paths: []string{certFile, keyFile}, apply: func(c [][]byte) error {
			pair, err := tls.X509KeyPair(c[0], c[1])
			if err != nil {
				return fmt.Errorf("certificate and key do not form a pair (yet): %w", err)
			}
			s.certificate.Store(&pair)
			return nil
		}},
		{name: "verification key set", paths: []string{keysFile}, apply: func(c [][]byte) error {
			keys, err := tokens.ParseJWKS(c[0])
			if err != nil {
				return err
			}
			auth.SetKeys(keys)
			return nil
		}},
		{name: "tenant list", paths: []string{tenantsFile}, apply: func(c [][]byte) error {
			list, err := ParseTenantList(c[0])
			if err != nil {
				return err
			}
			auth.SetTenants(list)
			return nil
		}},
	}
	return s
}

// Load reads every file once and fails when any is missing or invalid, so a misconfigured gateway does not
// start.
func (s *Sources) Load() error {
	var errs []error
	for _, f := range s.files {
		f.check(s.log)
		if !f.loaded.Load() {
			errs = append(errs, fmt.Errorf("%s from %v could not be loaded", f.name, f.paths))
		}
	}
	return errors.Join(errs...)
}

// Ready reports whether every file has been loaded once.
func (s *Sources) Ready() bool {
	for _, f := range s.files {
		if !f.loaded.Load() {
			return false
		}
	}
	return true
}

// Watch re-reads the files every interval until ctx ends.
func (s *Sources) Watch(ctx context.Context, interval time.Duration) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			for _, f := range s.files {
				f.check(s.log)
			}
		}
	}
}

// TLSConfig serves the current certificate, so a renewed one is used without a restart.
func (s *Sources) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.certificate.Load(), nil
		},
	}
}
