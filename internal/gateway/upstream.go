package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strconv"
	"sync/atomic"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Upstream is a set of equivalent backends, used round-robin. The set can be replaced at any time
// (SetTargets) while requests are being proxied; with no backend, requests are answered 503.
type Upstream struct {
	Name    string
	targets atomic.Pointer[[]*url.URL] // never modified once stored
	next    atomic.Uint64
}

// NewUpstream parses the base URLs of the backends of one component. An empty list is allowed: the Upstream
// answers 503 until SetTargets gives it backends, as Discovery does.
func NewUpstream(name string, rawURLs []string) (*Upstream, error) {
	targets := make([]*url.URL, 0, len(rawURLs))
	for _, raw := range rawURLs {
		target, err := url.Parse(raw)
		if err != nil || target.Scheme == "" || target.Host == "" {
			return nil, fmt.Errorf("upstream %s: %q is not a URL like http://host:port", name, raw)
		}
		targets = append(targets, target)
	}
	u := &Upstream{Name: name}
	u.targets.Store(&targets)
	return u, nil
}

// SetTargets replaces the backends; the slice is copied, the URLs must not be modified afterwards.
func (u *Upstream) SetTargets(targets []*url.URL) {
	targets = slices.Clip(slices.Clone(targets))
	u.targets.Store(&targets)
}

// Targets returns the current backends; the result must not be modified.
func (u *Upstream) Targets() []*url.URL { return *u.targets.Load() }

// pick returns the next backend, or nil when there is none.
func (u *Upstream) pick() *url.URL {
	targets := *u.targets.Load()
	if len(targets) == 0 {
		return nil
	}
	return targets[(u.next.Add(1)-1)%uint64(len(targets))]
}

// ServiceUpstream names the Service, in the Discovery's namespace, whose ready endpoints an Upstream sends to.
type ServiceUpstream struct {
	Service  string
	Upstream *Upstream
}

// Discovery keeps Upstreams' backends equal to the ready endpoints of their Services, read from the
// Services' EndpointSlices through the API server. Unlike a Service's cluster IP, this needs neither cluster
// DNS nor kube-proxy, so it works the same on a real cluster and on the local one, and it spreads requests
// over all backends even though the gateway keeps long-lived HTTP connections.
type Discovery struct {
	portName string
	services map[string][]*Upstream
	informer cache.SharedIndexInformer
	log      *slog.Logger
}

// NewDiscovery watches the EndpointSlices of the upstreams' Services in namespace; each backend is
// http://<endpoint address>:<number of the port named portName>. Run starts the watch.
func NewDiscovery(client kubernetes.Interface, namespace, portName string, log *slog.Logger, upstreams ...ServiceUpstream) (*Discovery, error) {
	d := &Discovery{portName: portName, services: map[string][]*Upstream{}, log: log}
	var names []string
	for _, su := range upstreams {
		if _, seen := d.services[su.Service]; !seen {
			names = append(names, su.Service)
		}
		d.services[su.Service] = append(d.services[su.Service], su.Upstream)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("discovery: no Service given")
	}
	requirement, err := labels.NewRequirement(discoveryv1.LabelServiceName, selection.In, names)
	if err != nil {
		return nil, fmt.Errorf("discovery: Service names %v: %w", names, err)
	}
	selector := labels.NewSelector().Add(*requirement).String()
	lw := cache.NewFilteredListWatchFromClient(client.DiscoveryV1().RESTClient(), "endpointslices", namespace,
		func(options *metav1.ListOptions) { options.LabelSelector = selector })
	d.informer = cache.NewSharedIndexInformer(lw, &discoveryv1.EndpointSlice{}, 0, cache.Indexers{})
	// Every event recomputes from the informer's store, which already holds the change (and possibly newer
	// ones): a Service's endpoints are spread over several slices, which change independently.
	update := func(obj any) {
		if tombstone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = tombstone.Obj
		}
		if slice, ok := obj.(*discoveryv1.EndpointSlice); ok {
			d.sync(slice.Labels[discoveryv1.LabelServiceName])
		}
	}
	if _, err := d.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    update,
		UpdateFunc: func(_, obj any) { update(obj) },
		DeleteFunc: update,
	}); err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	return d, nil
}

// Run watches until ctx ends; a failed watch is re-listed by the informer.
func (d *Discovery) Run(ctx context.Context) { d.informer.RunWithContext(ctx) }

// HasSynced reports whether the first list of EndpointSlices has been applied.
func (d *Discovery) HasSynced() bool { return d.informer.HasSynced() }

func (d *Discovery) sync(service string) {
	upstreams := d.services[service]
	if len(upstreams) == 0 {
		return
	}
	var sliceList []*discoveryv1.EndpointSlice
	for _, obj := range d.informer.GetStore().List() {
		if slice := obj.(*discoveryv1.EndpointSlice); slice.Labels[discoveryv1.LabelServiceName] == service {
			sliceList = append(sliceList, slice)
		}
	}
	targets := readyTargets(sliceList, d.portName)
	for _, u := range upstreams {
		if slices.EqualFunc(u.Targets(), targets, func(a, b *url.URL) bool { return a.String() == b.String() }) {
			continue
		}
		u.SetTargets(targets)
		addresses := make([]string, len(targets))
		for i, t := range targets {
			addresses[i] = t.Host
		}
		d.log.Info("upstream endpoints changed", "upstream", u.Name, "service", service, "endpoints", addresses)
	}
}

// readyTargets returns http://<address>:<port> of every endpoint of the slices that may receive traffic, sorted
// and without duplicates (an endpoint can briefly appear in two slices). Per the EndpointSlice API, a nil ready
// condition means ready and a nil terminating condition means not terminating; terminating endpoints are left
// out even when marked ready (a Service with publishNotReadyAddresses), as the gateway has somewhere better to
// send requests. Slices without a port named portName, and FQDN slices, are skipped; only an endpoint's first
// address is used, as the API allows ("all assumed to be fungible").
func readyTargets(endpointSlices []*discoveryv1.EndpointSlice, portName string) []*url.URL {
	seen := map[string]bool{}
	var hosts []string
	for _, slice := range endpointSlices {
		if slice.AddressType != discoveryv1.AddressTypeIPv4 && slice.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		port := int32(0)
		for _, p := range slice.Ports {
			if p.Port != nil && (p.Name == nil && portName == "" || p.Name != nil && *p.Name == portName) {
				port = *p.Port
				break
			}
		}
		if port == 0 {
			continue
		}
		for _, endpoint := range slice.Endpoints {
			c := endpoint.Conditions
			if len(endpoint.Addresses) == 0 || c.Ready != nil && !*c.Ready || c.Terminating != nil && *c.Terminating {
				continue
			}
			host := net.JoinHostPort(endpoint.Addresses[0], strconv.Itoa(int(port)))
			if !seen[host] {
				seen[host] = true
				hosts = append(hosts, host)
			}
		}
	}
	slices.Sort(hosts)
	targets := make([]*url.URL, len(hosts))
	for i, host := range hosts {
		targets[i] = &url.URL{Scheme: "http", Host: host}
	}
	return targets
}
