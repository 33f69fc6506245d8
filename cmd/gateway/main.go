// Command opstrace-gateway is a cluster's one HTTPS endpoint: it authenticates tenant tokens and proxies
// Prometheus remote write and queries to Cortex, and Loki pushes, queries and tails to Loki. Wiring only: flags, files, API server watches, listeners.
//
// It reads from the API server, with its ServiceAccount in a Pod or with --kubeconfig outside one (the local
// cluster runs it as a process): the auth Secret (key set and tenant list), so a tenant change counts within a
// second, and the EndpointSlices of the Cortex and Loki Services, so it needs neither cluster DNS nor kube-proxy. The
// RBAC it needs, a Role in --namespace bound to its ServiceAccount:
//
//	rules:
//	- apiGroups: [""]
//	  resources: [secrets]
//	  resourceNames: [<--auth-secret>]
//	  verbs: [get, list, watch]
//	- apiGroups: [discovery.k8s.io]
//	  resources: [endpointslices]
//	  verbs: [list, watch]
//
// (list and watch of one Secret by name are allowed by resourceNames since the client sends the name as a
// metadata.name field selector.)
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
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/opstrace/opstrace/internal/gateway"
	"github.com/opstrace/opstrace/internal/manifests"
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
		kubeconfig      = flag.String("kubeconfig", "", "Kubeconfig to reach the API server outside a Pod; empty means the Pod's ServiceAccount.")
		namespace       = flag.String("namespace", "", "Namespace of the auth Secret and of the Cortex and Loki Services. Required.")
		authSecret      = flag.String("auth-secret", "", "Secret holding the key set ("+manifests.GatewayAuthKeysKey+") and tenant list ("+manifests.GatewayAuthTenantsKey+"), watched through the API server. Required.")
		audience        = flag.String("audience", "", "The cluster's name in tokens (their aud claim). Required.")
		distributor     = flag.String("distributor-service", "", "Service of the Cortex distributors; remote write goes to its ready endpoints. Required.")
		queryFrontend   = flag.String("query-frontend-service", "", "Service of the Cortex query-frontends; queries go to its ready endpoints. Required.")
		lokiDistributor = flag.String("loki-distributor-service", "", "Service of the Loki distributors; Loki pushes go to its ready endpoints. Without the three --loki-* flags, the Loki API answers 501: logs are not enabled.")
		lokiFrontend    = flag.String("loki-query-frontend-service", "", "Service of the Loki query-frontends; Loki queries, labels and series go to its ready endpoints.")
		lokiQuerier     = flag.String("loki-querier-service", "", "Service of the Loki queriers; live tails (websockets) go to its ready endpoints.")
		portName        = flag.String("upstream-port-name", "http", "Name of the HTTP port of the Cortex and Loki Services.")
		maxBodyBytes    = flag.Int64("max-body-bytes", 16<<20, "Largest request body accepted, and largest uncompressed Loki push payload.")
		upstreamTimeout = flag.Duration("upstream-timeout", 2*time.Minute, "Deadline of every call to Cortex and Loki; for a live tail, of the wait for Loki to accept it.")
		showVersion     = flag.Bool("version", false, "Print the version and exit.")
	)
	flag.Parse()
	if *showVersion {
		fmt.Println("opstrace-gateway", version.Version)
		return nil
	}
	for _, required := range []struct{ name, value string }{
		{"audience", *audience}, {"namespace", *namespace}, {"auth-secret", *authSecret},
		{"distributor-service", *distributor}, {"query-frontend-service", *queryFrontend},
	} {
		if required.value == "" {
			return fmt.Errorf("--%s is required (see --help)", required.name)
		}
	}
	lokiEnabled := *lokiDistributor != "" || *lokiFrontend != "" || *lokiQuerier != ""
	if lokiEnabled && (*lokiDistributor == "" || *lokiFrontend == "" || *lokiQuerier == "") {
		return fmt.Errorf("--loki-distributor-service, --loki-query-frontend-service and --loki-querier-service go " +
			"together: give all three to enable logs (the same Service for a single Loki), or none")
	}

	config, err := restConfig(*kubeconfig)
	if err != nil {
		return err
	}
	config.UserAgent = "opstrace-gateway/" + version.Version
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("API server client: %w", err)
	}

	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	certificate := gateway.NewCertificate(*certFile, *keyFile, log)
	if err := certificate.Load(); err != nil {
		return err
	}

	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	auth := gateway.NewAuthenticator(*audience, nil)
	watcher, err := gateway.NewAuthWatcher(client, gateway.AuthSecret{
		Namespace: *namespace, Name: *authSecret,
		KeysKey: manifests.GatewayAuthKeysKey, TenantsKey: manifests.GatewayAuthTenantsKey,
	}, auth, registry, log)
	if err != nil {
		return err
	}
	distributors, _ := gateway.NewUpstream("distributor", nil)
	queryFrontends, _ := gateway.NewUpstream("query-frontend", nil)
	services := []gateway.ServiceUpstream{
		{Service: *distributor, Upstream: distributors},
		{Service: *queryFrontend, Upstream: queryFrontends},
	}
	var loki *gateway.LokiUpstreams
	if lokiEnabled {
		loki = &gateway.LokiUpstreams{}
		loki.Distributor, _ = gateway.NewUpstream("loki-distributor", nil)
		loki.QueryFrontend, _ = gateway.NewUpstream("loki-query-frontend", nil)
		loki.Querier, _ = gateway.NewUpstream("loki-querier", nil)
		services = append(services,
			gateway.ServiceUpstream{Service: *lokiDistributor, Upstream: loki.Distributor},
			gateway.ServiceUpstream{Service: *lokiFrontend, Upstream: loki.QueryFrontend},
			gateway.ServiceUpstream{Service: *lokiQuerier, Upstream: loki.Querier})
	}
	discovery, err := gateway.NewDiscovery(client, *namespace, *portName, log, services...)
	if err != nil {
		return err
	}
	handler := gateway.NewHandler(gateway.Config{
		Distributor: distributors, QueryFrontend: queryFrontends, Loki: loki,
		MaxBodyBytes: *maxBodyBytes, UpstreamTimeout: *upstreamTimeout,
	}, auth, registry, func() bool { return certificate.Loaded() && watcher.Loaded() })

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go certificate.Watch(ctx, gateway.ReloadInterval)
	go watcher.Run(ctx)
	go discovery.Run(ctx)

	public := &http.Server{
		Addr: *listen, Handler: handler, TLSConfig: certificate.TLSConfig(),
		ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
	}
	internalMux := http.NewServeMux()
	internalMux.Handle("/metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	internalMux.Handle("/-/", handler)
	internal := &http.Server{Addr: *internalListen, Handler: internalMux, ReadHeaderTimeout: 10 * time.Second}

	errs := make(chan error, 2)
	go func() { errs <- public.ListenAndServeTLS("", "") }()
	go func() { errs <- internal.ListenAndServe() }()
	log.Info("opstrace-gateway serving", "version", version.Version, "address", *listen, "internal", *internalListen,
		"namespace", *namespace, "authSecret", *authSecret, "logs", lokiEnabled)

	select {
	case err := <-errs:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return errors.Join(public.Shutdown(shutdown), internal.Shutdown(shutdown))
}

// restConfig is the Pod's ServiceAccount, or the kubeconfig when one is given.
func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
		}
		return config, nil
	}
	config, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("not in a Pod (%w): pass --kubeconfig to reach the API server", err)
	}
	return config, nil
}
