// Command opstrace-gateway is a cluster's one HTTPS endpoint: it authenticates tenant tokens and proxies
// Prometheus remote write and queries to Cortex. Wiring only: flags, files, listeners.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/opstrace/opstrace/internal/gateway"
	"github.com/opstrace/opstrace/internal/version"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "opstrace-gateway:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		listen          = flag.String("listen-address", ":8443", "HTTPS address for tenants' traffic.")
		internalListen  = flag.String("internal-listen-address", ":8081", "Plain-HTTP address for /metrics and probes; keep it off the public network.")
		certFile        = flag.String("tls-cert-file", "/etc/opstrace/tls/tls.crt", "Serving certificate (PEM); reloaded when it changes.")
		keyFile         = flag.String("tls-key-file", "/etc/opstrace/tls/tls.key", "Serving key (PEM); reloaded when it changes.")
		keysFile        = flag.String("keys-file", "/etc/opstrace/auth/keys.json", "JSON Web Key Set that verifies tenant tokens; reloaded when it changes.")
		tenantsFile     = flag.String("tenants-file", "/etc/opstrace/auth/tenants.json", "Tenant list written by the controller; reloaded when it changes.")
		audience        = flag.String("audience", "", "The cluster's name in tokens (their aud claim). Required.")
		distributor     = flag.String("distributor-url", "", "Comma-separated base URLs of Cortex distributors. Required.")
		queryFrontend   = flag.String("query-frontend-url", "", "Comma-separated base URLs of Cortex query-frontends. Required.")
		maxBodyBytes    = flag.Int64("max-body-bytes", 16<<20, "Largest request body accepted.")
		upstreamTimeout = flag.Duration("upstream-timeout", 2*time.Minute, "Deadline of every call to Cortex.")
		showVersion     = flag.Bool("version", false, "Print the version and exit.")
	)
	flag.Parse()
	if *showVersion {
		fmt.Println("opstrace-gateway", version.Version)
		return nil
	}
	if *audience == "" {
		return errors.New("--audience is required: the cluster name tokens are issued for")
	}
	distributors, err := gateway.NewUpstream("distributor", splitList(*distributor))
	if err != nil {
		return fmt.Errorf("--distributor-url: %w", err)
	}
	queryFrontends, err := gateway.NewUpstream("query-frontend", splitList(*queryFrontend))
	if err != nil {
		return fmt.Errorf("--query-frontend-url: %w", err)
	}

	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	auth := gateway.NewAuthenticator(*audience, nil)
	sources := gateway.NewSources(auth, *certFile, *keyFile, *keysFile, *tenantsFile, log)
	if err := sources.Load(); err != nil {
		return err
	}

	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	handler := gateway.NewHandler(gateway.Config{
		Distributor: distributors, QueryFrontend: queryFrontends,
		MaxBodyBytes: *maxBodyBytes, UpstreamTimeout: *upstreamTimeout,
	}, auth, registry, sources.Ready)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go sources.Watch(ctx, gateway.ReloadInterval)

	public := &http.Server{
		Addr: *listen, Handler: handler, TLSConfig: sources.TLSConfig(),
		ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
	}
	internalMux := http.NewServeMux()
	internalMux.Handle("/metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	internalMux.Handle("/-/", handler)
	internal := &http.Server{Addr: *internalListen, Handler: internalMux, ReadHeaderTimeout: 10 * time.Second}

	errs := make(chan error, 2)
	go func() { errs <- public.ListenAndServeTLS("", "") }()
	go func() { errs <- internal.ListenAndServe() }()
	log.Info("opstrace-gateway serving", "version", version.Version, "address", *listen, "internal", *internalListen)

	select {
	case err := <-errs:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return errors.Join(public.Shutdown(shutdown), internal.Shutdown(shutdown))
}

func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
