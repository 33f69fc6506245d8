// Package localdns is the cluster DNS of `opstrace create local`: a small DNS server (UDP and TCP) that
// answers names of the cluster domain from the API server's Services, EndpointSlices and Pods, watched
// through informers. The node agent points the pods' /etc/resolv.conf at it (see nodeagent.Config.ClusterDNS).
//
// Names, as the Kubernetes DNS specification and CoreDNS give them:
//
//	<service>.<ns>.svc.<domain>                A/AAAA: the service's endpoint addresses
//	<hostname>.<service>.<ns>.svc.<domain>     A/AAAA: an endpoint's hostname, or a pod whose spec.hostname and
//	                                           spec.subdomain name a headless Service (StatefulSet pods)
//	<a-b-c-d>.<service>.<ns>.svc.<domain>      A: an endpoint of the service by its dashed address
//	_<port>._<proto>.<service>.<ns>.svc.<domain>  SRV: one record per endpoint of a named port, whose target
//	                                           is the endpoint's name above (its address in the additional section)
//	<service>.<ns>.svc.<domain>                CNAME for ExternalName Services
//
// An endpoint is published when it is ready (a nil condition counts as ready, as the API documents); when
// the Service has publishNotReadyAddresses, every endpoint is published, as the real cluster DNS does. A pod
// record follows the same rule with the pod's Ready condition. Every record has a TTL of 5 seconds; NXDOMAIN
// and empty answers carry a SOA with the same negative TTL.
//
// Differences from a real cluster:
//   - There is no kube-proxy, so a ClusterIP would lead nowhere: the name of a ClusterIP Service resolves to
//     the addresses of its ready endpoints, like a headless Service's, and clients balance over them (DNS
//     load-balancing stands in for the virtual IP). SRV records of such a Service carry the endpoints' ports
//     (the target ports), which is what a client must dial without kube-proxy.
//   - The namespace of the local cluster has no route out, so names outside the cluster domain are refused
//     at once (REFUSED) instead of forwarded to an upstream resolver, and pod records
//     (<a-b-c-d>.<ns>.pod.<domain>) and reverse lookups are not served.
package localdns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

const (
	// DefaultDomain is the cluster domain when Server.Domain is empty.
	DefaultDomain = "cluster.local"
	// TTL is the time to live of every answer, in seconds, and the negative TTL of the zone's SOA.
	TTL = 5
)

// Server is the cluster DNS server. Set the fields, then call Run once.
type Server struct {
	// Addr is the UDP and TCP address to listen on, such as 10.244.0.1:53; with port 0 (tests), both
	// listen on the same free port, reported by LocalAddr.
	Addr string
	// Domain is the cluster domain; default DefaultDomain.
	Domain string
	// Client reads Services, EndpointSlices and Pods.
	Client kubernetes.Interface
	// Logger defaults to slog.Default(). Each query is logged at debug level.
	Logger *slog.Logger

	once  sync.Once
	ready chan struct{}
	addr  net.Addr

	domain    string // lower case, without the trailing dot
	services  corelisters.ServiceLister
	slices    discoverylisters.EndpointSliceLister
	podsIndex cache.Indexer // podsByHostname
}

func (s *Server) init() { s.once.Do(func() { s.ready = make(chan struct{}) }) }

// Ready is closed once the server has its caches synced and listens on LocalAddr.
func (s *Server) Ready() <-chan struct{} {
	s.init()
	return s.ready
}

// LocalAddr is the bound address (UDP; TCP listens on the same port) once Ready is closed, else nil.
func (s *Server) LocalAddr() net.Addr {
	select {
	case <-s.Ready():
		return s.addr
	default:
		return nil
	}
}

// podsByHostname indexes pods by namespace/subdomain/hostname.
const podsByHostname = "hostname"

// Run watches the API server, listens on Addr once the caches are synced and answers queries until ctx is
// done. It returns an error when it cannot listen or a listener fails.
func (s *Server) Run(ctx context.Context) error {
	s.init()
	if s.Client == nil {
		return errors.New("localdns: Client is required")
	}
	s.domain = strings.TrimSuffix(strings.ToLower(s.Domain), ".")
	if s.domain == "" {
		s.domain = DefaultDomain
	}
	if s.Logger == nil {
		s.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	factory := informers.NewSharedInformerFactory(s.Client, 0)
	svcInformer := factory.Core().V1().Services()
	sliceInformer := factory.Discovery().V1().EndpointSlices()
	podInformer := factory.Core().V1().Pods()
	if err := podInformer.Informer().AddIndexers(cache.Indexers{podsByHostname: func(obj any) ([]string, error) {
		pod, ok := obj.(*corev1.Pod)
		if !ok || pod.Spec.Hostname == "" || pod.Spec.Subdomain == "" {
			return nil, nil
		}
		return []string{pod.Namespace + "/" + pod.Spec.Subdomain + "/" + pod.Spec.Hostname}, nil
	}}); err != nil {
		return err
	}
	s.services, s.slices = svcInformer.Lister(), sliceInformer.Lister()
	s.podsIndex = podInformer.Informer().GetIndexer()
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	for _, synced := range factory.WaitForCacheSync(ctx.Done()) {
		if !synced {
			return ctx.Err()
		}
	}

	udp, tcp, err := listen(s.Addr)
	if err != nil {
		return err
	}
	handler := dns.HandlerFunc(s.serveDNS)
	servers := []*dns.Server{{PacketConn: udp, Handler: handler}, {Listener: tcp, Handler: handler}}
	errc := make(chan error, len(servers))
	for _, srv := range servers {
		go func() { errc <- srv.ActivateAndServe() }()
	}
	s.addr = udp.LocalAddr()
	close(s.ready)
	s.Logger.Info("cluster DNS listening", "addr", s.addr.String(), "domain", s.domain)

	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("localdns: serve: %w", err)
	}
	for _, srv := range servers {
		shutdownCtx, done := context.WithTimeout(context.Background(), 5*time.Second)
		_ = srv.ShutdownContext(shutdownCtx)
		done()
	}
	return err
}

// listen binds UDP and TCP on the same address; with port 0 it retries until the UDP port is free in TCP.
func listen(addr string) (net.PacketConn, net.Listener, error) {
	for range 10 {
		udp, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("localdns: listen: %w", err)
		}
		tcp, err := net.Listen("tcp", udp.LocalAddr().String())
		if err == nil {
			return udp, tcp, nil
		}
		udp.Close()
		if _, port, _ := net.SplitHostPort(addr); port != "0" {
			return nil, nil, fmt.Errorf("localdns: listen: %w", err)
		}
	}
	return nil, nil, fmt.Errorf("localdns: no port of %s free in both UDP and TCP", addr)
}

func (s *Server) serveDNS(w dns.ResponseWriter, req *dns.Msg) {
	resp := new(dns.Msg)
	if len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery {
		resp.SetRcode(req, dns.RcodeNotImplemented)
		_ = w.WriteMsg(resp)
		return
	}
	resp.SetReply(req)
	resp.RecursionAvailable = false
	q := req.Question[0]
	s.answer(resp, q)
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(opt.UDPSize(), false)
	}
	if _, udp := w.LocalAddr().(*net.UDPAddr); udp {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil && int(opt.UDPSize()) > size {
			size = int(opt.UDPSize())
		}
		resp.Truncate(size)
	}
	s.Logger.Debug("query", "name", q.Name, "type", dns.TypeToString[q.Qtype], "rcode", dns.RcodeToString[resp.Rcode],
		"answers", len(resp.Answer))
	_ = w.WriteMsg(resp)
}

// answer fills resp for q.
func (s *Server) answer(resp *dns.Msg, q dns.Question) {
	name := strings.TrimSuffix(strings.ToLower(q.Name), ".")
	rel, inZone := strings.CutSuffix(name, "."+s.domain)
	if name == s.domain {
		rel, inZone = "", true
	}
	if !inZone || q.Qclass != dns.ClassINET {
		resp.Rcode = dns.RcodeRefused
		return
	}
	resp.Authoritative = true
	rrs, exists := s.lookup(rel, q)
	if !exists {
		resp.Rcode = dns.RcodeNameError
	}
	resp.Answer = rrs
	for _, rr := range rrs {
		if srv, ok := rr.(*dns.SRV); ok {
			ips, _ := s.lookupAddrs(strings.TrimSuffix(strings.TrimSuffix(srv.Target, "."), "."+s.domain))
			resp.Extra = append(resp.Extra, addressRecords(srv.Target, ips, dns.TypeANY)...)
		}
	}
	if len(resp.Answer) == 0 {
		resp.Ns = []dns.RR{s.soa()}
	}
}

// lookup answers rel, the name without the cluster domain; exists says whether the name exists (NOERROR
// with possibly no records of the type) or not (NXDOMAIN).
func (s *Server) lookup(rel string, q dns.Question) ([]dns.RR, bool) {
	if rel == "" {
		if q.Qtype == dns.TypeSOA {
			return []dns.RR{s.soa()}, true
		}
		return nil, true
	}
	labels := strings.Split(rel, ".")
	n := len(labels)
	if n < 3 || labels[n-1] != "svc" {
		// <ns>.svc and svc exist as the parents of Service names.
		return nil, rel == "svc" || n == 2 && labels[1] == "svc"
	}
	if n == 5 && strings.HasPrefix(labels[0], "_") && strings.HasPrefix(labels[1], "_") {
		return s.lookupSRV(labels[0][1:], labels[1][1:], labels[2], labels[3], q)
	}
	if n == 3 {
		if svc, err := s.services.Services(labels[1]).Get(labels[0]); err == nil && svc.Spec.Type == corev1.ServiceTypeExternalName {
			if svc.Spec.ExternalName == "" {
				return nil, true
			}
			return []dns.RR{&dns.CNAME{Hdr: header(q.Name, dns.TypeCNAME), Target: dns.Fqdn(svc.Spec.ExternalName)}}, true
		}
	}
	if n != 3 && n != 4 {
		return nil, false
	}
	ips, exists := s.lookupAddrs(rel)
	return addressRecords(q.Name, ips, q.Qtype), exists
}

// lookupAddrs resolves <service>.<ns>.svc or <hostname>.<service>.<ns>.svc to addresses.
func (s *Server) lookupAddrs(rel string) ([]netip.Addr, bool) {
	labels := strings.Split(rel, ".")
	switch len(labels) {
	case 3:
		svc, err := s.services.Services(labels[1]).Get(labels[0])
		if err != nil {
			return nil, false
		}
		var ips []netip.Addr
		for _, ep := range s.endpoints(svc) {
			ips = append(ips, ep.addrs...)
		}
		return dedupe(ips), true
	case 4:
		host, service, ns := labels[0], labels[1], labels[2]
		svc, err := s.services.Services(ns).Get(service)
		if err != nil {
			return nil, false
		}
		var ips []netip.Addr
		for _, ep := range s.endpoints(svc) {
			if ep.hostname == host {
				ips = append(ips, ep.addrs...)
			}
			for _, ip := range ep.addrs {
				if dashed(ip) == host {
					ips = append(ips, ip)
				}
			}
		}
		if svc.Spec.ClusterIP == corev1.ClusterIPNone {
			objs, _ := s.podsIndex.ByIndex(podsByHostname, ns+"/"+service+"/"+host)
			for _, obj := range objs {
				pod := obj.(*corev1.Pod)
				if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed ||
					!svc.Spec.PublishNotReadyAddresses && (!podReady(pod) || pod.DeletionTimestamp != nil) {
					continue
				}
				for _, podIP := range pod.Status.PodIPs {
					if ip, err := netip.ParseAddr(podIP.IP); err == nil {
						ips = append(ips, ip)
					}
				}
			}
		}
		return dedupe(ips), len(ips) > 0
	}
	return nil, false
}

// lookupSRV answers _<port>._<proto>.<service>.<ns>.svc: one record per published endpoint of the port.
func (s *Server) lookupSRV(port, proto, service, ns string, q dns.Question) ([]dns.RR, bool) {
	svc, err := s.services.Services(ns).Get(service)
	if err != nil {
		return nil, false
	}
	var rrs []dns.RR
	seen := map[string]bool{}
	for _, ep := range s.endpoints(svc) {
		for _, p := range ep.ports {
			if p.Port == nil || p.Name == nil || *p.Name != port {
				continue
			}
			protocol := corev1.ProtocolTCP
			if p.Protocol != nil {
				protocol = *p.Protocol
			}
			if !strings.EqualFold(string(protocol), proto) {
				continue
			}
			for _, ip := range ep.addrs {
				host := ep.hostname
				if host == "" {
					host = dashed(ip)
				}
				target := dns.Fqdn(host + "." + service + "." + ns + ".svc." + s.domain)
				k := target + ":" + strconv.Itoa(int(*p.Port))
				if seen[k] {
					continue
				}
				seen[k] = true
				if q.Qtype == dns.TypeSRV || q.Qtype == dns.TypeANY {
					rrs = append(rrs, &dns.SRV{Hdr: header(q.Name, dns.TypeSRV), Priority: 0,
						Weight: 100, Port: uint16(*p.Port), Target: target})
				}
			}
		}
	}
	return rrs, len(seen) > 0
}

// endpoint is one published endpoint of a Service with the ports of its slice.
type endpoint struct {
	hostname string
	addrs    []netip.Addr
	ports    []discoveryv1.EndpointPort
}

// endpoints are the published endpoints of svc: the ready ones, or all with publishNotReadyAddresses.
func (s *Server) endpoints(svc *corev1.Service) []endpoint {
	selector := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: svc.Name})
	slices, err := s.slices.EndpointSlices(svc.Namespace).List(selector)
	if err != nil {
		return nil
	}
	var eps []endpoint
	for _, slice := range slices {
		if slice.AddressType != discoveryv1.AddressTypeIPv4 && slice.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		for _, e := range slice.Endpoints {
			if !svc.Spec.PublishNotReadyAddresses && !published(e.Conditions) {
				continue
			}
			ep := endpoint{ports: slice.Ports}
			if e.Hostname != nil {
				ep.hostname = strings.ToLower(*e.Hostname)
			}
			for _, a := range e.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil {
					ep.addrs = append(ep.addrs, ip)
				}
			}
			eps = append(eps, ep)
		}
	}
	return eps
}

// published says whether an endpoint is served: ready (nil means ready) and not terminating.
func published(c discoveryv1.EndpointConditions) bool {
	return (c.Ready == nil || *c.Ready) && (c.Terminating == nil || !*c.Terminating)
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// dashed is the DNS label of an address: 10.244.0.5 → 10-244-0-5, fd00::1 → fd00--1.
func dashed(ip netip.Addr) string {
	if ip.Is4() {
		return strings.ReplaceAll(ip.String(), ".", "-")
	}
	return strings.ReplaceAll(ip.String(), ":", "-")
}

func dedupe(ips []netip.Addr) []netip.Addr {
	seen := map[netip.Addr]bool{}
	out := ips[:0]
	for _, ip := range ips {
		if !seen[ip] {
			seen[ip] = true
			out = append(out, ip)
		}
	}
	return out
}

// addressRecords are the A (qtype A or ANY) and AAAA (AAAA or ANY) records of name.
func addressRecords(name string, ips []netip.Addr, qtype uint16) []dns.RR {
	var rrs []dns.RR
	for _, ip := range ips {
		switch {
		case ip.Is4() && (qtype == dns.TypeA || qtype == dns.TypeANY):
			rrs = append(rrs, &dns.A{Hdr: header(name, dns.TypeA), A: net.IP(ip.AsSlice())})
		case ip.Is6() && !ip.Is4In6() && (qtype == dns.TypeAAAA || qtype == dns.TypeANY):
			rrs = append(rrs, &dns.AAAA{Hdr: header(name, dns.TypeAAAA), AAAA: net.IP(ip.AsSlice())})
		}
	}
	return rrs
}

func header(name string, rrtype uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: rrtype, Class: dns.ClassINET, Ttl: TTL}
}

// soa is the zone's SOA: it gives negative answers their TTL.
func (s *Server) soa() dns.RR {
	zone := dns.Fqdn(s.domain)
	return &dns.SOA{Hdr: header(zone, dns.TypeSOA), Ns: "ns.dns." + zone, Mbox: "hostmaster." + zone,
		Serial: 1, Refresh: 7200, Retry: 1800, Expire: 86400, Minttl: TTL}
}
