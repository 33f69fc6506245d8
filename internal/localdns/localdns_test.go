package localdns

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/opstrace/opstrace/internal/testenv"
)

const ns = "dnstest"

// TestServer runs the server against a real API server and queries it over UDP and TCP on 127.0.0.1. The
// addresses in the objects only appear in answers: nothing is sent to them.
func TestServer(t *testing.T) {
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	client, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	seed(ctx, t, client)

	srv := &Server{Addr: "127.0.0.1:0", Client: client}
	runErr := make(chan error, 1)
	go func() { runErr <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-runErr:
		t.Fatalf("run: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("server not ready")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-runErr; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	addr := srv.LocalAddr().String()

	const domain = ".svc.cluster.local."
	for _, proto := range []string{"udp", "tcp"} {
		t.Run(proto, func(t *testing.T) {
			q := func(name string, qtype uint16) *dns.Msg { return query(t, proto, addr, name, qtype) }
			for _, tc := range []struct {
				name  string
				qtype uint16
				rcode int
				want  []string
			}{
				// ClusterIP Service: its ready endpoints (nil ready counts as ready), not the not-ready or
				// terminating ones.
				{"web.dnstest" + domain, dns.TypeA, dns.RcodeSuccess, []string{"A 10.244.0.5", "A 10.244.0.8"}},
				{"WEB.DnsTest" + domain, dns.TypeA, dns.RcodeSuccess, []string{"A 10.244.0.5", "A 10.244.0.8"}},
				{"web.dnstest" + domain, dns.TypeAAAA, dns.RcodeSuccess, nil},
				{"10-244-0-5.web.dnstest" + domain, dns.TypeA, dns.RcodeSuccess, []string{"A 10.244.0.5"}},
				{"10-244-0-6.web.dnstest" + domain, dns.TypeA, dns.RcodeNameError, nil},
				{"_http._tcp.web.dnstest" + domain, dns.TypeSRV, dns.RcodeSuccess, []string{
					"SRV 8080 10-244-0-5.web.dnstest.svc.cluster.local.", "SRV 8080 10-244-0-8.web.dnstest.svc.cluster.local."}},
				{"_http._udp.web.dnstest" + domain, dns.TypeSRV, dns.RcodeNameError, nil},
				{"_nope._tcp.web.dnstest" + domain, dns.TypeSRV, dns.RcodeNameError, nil},
				// Headless with publishNotReadyAddresses: every endpoint, by name too.
				{"ring.dnstest" + domain, dns.TypeA, dns.RcodeSuccess, []string{"A 10.244.0.10", "A 10.244.0.11", "A 10.244.0.12"}},
				{"ring-1.ring.dnstest" + domain, dns.TypeA, dns.RcodeSuccess, []string{"A 10.244.0.11"}},
				{"_gossip._tcp.ring.dnstest" + domain, dns.TypeSRV, dns.RcodeSuccess, []string{
					"SRV 7946 10-244-0-12.ring.dnstest.svc.cluster.local.",
					"SRV 7946 ring-0.ring.dnstest.svc.cluster.local.", "SRV 7946 ring-1.ring.dnstest.svc.cluster.local."}},
				// StatefulSet pods of a headless Service without endpoints: ready pods only.
				{"sts.dnstest" + domain, dns.TypeA, dns.RcodeSuccess, nil},
				{"sts-0.sts.dnstest" + domain, dns.TypeA, dns.RcodeSuccess, []string{"A 10.244.0.20"}},
				{"sts-1.sts.dnstest" + domain, dns.TypeA, dns.RcodeNameError, nil},
				{"ext.dnstest" + domain, dns.TypeA, dns.RcodeSuccess, []string{"CNAME example.com."}},
				// Other names of the zone do not exist; its parents do.
				{"missing.dnstest" + domain, dns.TypeA, dns.RcodeNameError, nil},
				{"web.otherns" + domain, dns.TypeA, dns.RcodeNameError, nil},
				{"a.b.cluster.local.", dns.TypeA, dns.RcodeNameError, nil},
				{"dnstest.svc.cluster.local.", dns.TypeA, dns.RcodeSuccess, nil},
				{"cluster.local.", dns.TypeSOA, dns.RcodeSuccess, []string{"SOA ns.dns.cluster.local."}},
				// Outside the zone: refused, never forwarded.
				{"example.com.", dns.TypeA, dns.RcodeRefused, nil},
				{"web.dnstest.svc.cluster.local.example.com.", dns.TypeA, dns.RcodeRefused, nil},
				{"5.0.244.10.in-addr.arpa.", dns.TypePTR, dns.RcodeRefused, nil},
			} {
				resp := q(tc.name, tc.qtype)
				if resp.Rcode != tc.rcode {
					t.Errorf("%s %s: rcode %s, want %s", tc.name, dns.TypeToString[tc.qtype], dns.RcodeToString[resp.Rcode], dns.RcodeToString[tc.rcode])
				}
				if got := records(resp.Answer); !slices.Equal(got, tc.want) {
					t.Errorf("%s %s: answer %q, want %q", tc.name, dns.TypeToString[tc.qtype], got, tc.want)
				}
				for _, rr := range resp.Answer {
					if rr.Header().Name != tc.name || rr.Header().Ttl != TTL {
						t.Errorf("%s: record %s: want the question's name and TTL %d", tc.name, rr, TTL)
					}
				}
				if tc.rcode != dns.RcodeRefused && !resp.Authoritative {
					t.Errorf("%s: not authoritative", tc.name)
				}
				if tc.rcode != dns.RcodeRefused && len(resp.Answer) == 0 && records(resp.Ns) == nil {
					t.Errorf("%s: negative answer without SOA", tc.name)
				}
			}
			// SRV targets come with their addresses.
			resp := q("_gossip._tcp.ring.dnstest"+domain, dns.TypeSRV)
			if got, want := records(resp.Extra), []string{"A 10.244.0.10", "A 10.244.0.11", "A 10.244.0.12"}; !slices.Equal(got, want) {
				t.Errorf("SRV additional: %q, want %q", got, want)
			}
		})
	}

	t.Run("large answers truncate over UDP", func(t *testing.T) {
		udp := query(t, "udp", addr, "big.dnstest"+domain, dns.TypeA)
		if !udp.Truncated {
			t.Errorf("UDP answer of %d records not truncated", len(udp.Answer))
		}
		tcp := query(t, "tcp", addr, "big.dnstest"+domain, dns.TypeA)
		if tcp.Truncated || len(tcp.Answer) != 100 {
			t.Errorf("TCP: truncated %v, %d records, want 100", tcp.Truncated, len(tcp.Answer))
		}
	})

	t.Run("answers follow the API server", func(t *testing.T) {
		slice, err := client.DiscoveryV1().EndpointSlices(ns).Get(ctx, "web-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		slice.Endpoints[1].Conditions.Ready = ptr(true) // 10.244.0.6
		slice.Endpoints[0].Conditions.Ready = ptr(false)
		if _, err := client.DiscoveryV1().EndpointSlices(ns).Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, func() error {
			return answerIs(query(t, "udp", addr, "web.dnstest"+domain, dns.TypeA), "A 10.244.0.6", "A 10.244.0.8")
		})

		pod, err := client.CoreV1().Pods(ns).Get(ctx, "sts-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		if _, err := client.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, func() error {
			return answerIs(query(t, "tcp", addr, "sts-1.sts.dnstest"+domain, dns.TypeA), "A 10.244.0.21")
		})

		if err := client.CoreV1().Services(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, func() error {
			if resp := query(t, "udp", addr, "web.dnstest"+domain, dns.TypeA); resp.Rcode != dns.RcodeNameError {
				return fmt.Errorf("rcode %s, want NXDOMAIN", dns.RcodeToString[resp.Rcode])
			}
			return nil
		})
	})
}

// seed creates the objects the test resolves.
func seed(ctx context.Context, t *testing.T, c kubernetes.Interface) {
	t.Helper()
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	meta := func(name string) metav1.ObjectMeta { return metav1.ObjectMeta{Name: name, Namespace: ns} }
	must(c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}))
	// No controller-manager creates the default ServiceAccount the admission plugin requires.
	must(c.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: meta("default")}, metav1.CreateOptions{}))

	service := func(name string, headless, publishNotReady bool, port string, number int32) {
		svc := &corev1.Service{ObjectMeta: meta(name), Spec: corev1.ServiceSpec{
			Ports:                    []corev1.ServicePort{{Name: port, Port: number}},
			PublishNotReadyAddresses: publishNotReady,
		}}
		if headless {
			svc.Spec.ClusterIP = corev1.ClusterIPNone
		}
		must(c.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}))
	}
	service("web", false, false, "http", 80)
	service("ring", true, true, "gossip", 7946)
	service("sts", true, false, "http", 80)
	service("big", false, false, "http", 80)
	must(c.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: meta("ext"), Spec: corev1.ServiceSpec{
		Type: corev1.ServiceTypeExternalName, ExternalName: "example.com",
	}}, metav1.CreateOptions{}))

	ep := func(ip, hostname string, ready, terminating *bool) discoveryv1.Endpoint {
		e := discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{
			Ready: ready, Serving: ready, Terminating: terminating}}
		if terminating != nil && *terminating {
			e.Conditions.Serving = ptr(true)
		}
		if hostname != "" {
			e.Hostname = &hostname
		}
		return e
	}
	slice := func(name, service, port string, number int32, endpoints ...discoveryv1.Endpoint) {
		s := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: service}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   endpoints,
			Ports:       []discoveryv1.EndpointPort{{Name: &port, Port: &number, Protocol: ptr(corev1.ProtocolTCP)}},
		}
		must(c.DiscoveryV1().EndpointSlices(ns).Create(ctx, s, metav1.CreateOptions{}))
	}
	yes, no := ptr(true), ptr(false)
	slice("web-1", "web", "http", 8080,
		ep("10.244.0.5", "", yes, no), ep("10.244.0.6", "", no, no), ep("10.244.0.7", "", no, yes), ep("10.244.0.8", "", nil, nil))
	slice("ring-1", "ring", "gossip", 7946,
		ep("10.244.0.10", "ring-0", yes, no), ep("10.244.0.11", "ring-1", no, no), ep("10.244.0.12", "", no, yes))
	var many []discoveryv1.Endpoint
	for i := range 100 {
		many = append(many, ep(fmt.Sprintf("10.244.1.%d", i+1), "", yes, no))
	}
	slice("big-1", "big", "http", 8080, many...)

	for i, ready := range []bool{true, false} {
		name := fmt.Sprintf("sts-%d", i)
		pod, err := c.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: meta(name), Spec: corev1.PodSpec{
			Hostname: name, Subdomain: "sts", Containers: []corev1.Container{{Name: "c", Image: "example.com/c:v1"}},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ip := fmt.Sprintf("10.244.0.%d", 20+i)
		status := corev1.ConditionFalse
		if ready {
			status = corev1.ConditionTrue
		}
		pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}}
		must(c.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}))
	}
}

func query(t *testing.T, proto, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Net: proto, Timeout: 5 * time.Second}
	resp, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s over %s: %v", name, dns.TypeToString[qtype], proto, err)
	}
	return resp
}

// records are the records as sorted "TYPE value" strings.
func records(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		switch rr := rr.(type) {
		case *dns.A:
			out = append(out, "A "+rr.A.String())
		case *dns.AAAA:
			out = append(out, "AAAA "+rr.AAAA.String())
		case *dns.SRV:
			out = append(out, fmt.Sprintf("SRV %d %s", rr.Port, rr.Target))
		case *dns.CNAME:
			out = append(out, "CNAME "+rr.Target)
		case *dns.SOA:
			out = append(out, "SOA "+rr.Ns)
		default:
			out = append(out, rr.String())
		}
	}
	slices.Sort(out)
	return out
}

func answerIs(resp *dns.Msg, want ...string) error {
	if got := records(resp.Answer); resp.Rcode != dns.RcodeSuccess || !slices.Equal(got, want) {
		return fmt.Errorf("%s %q, want %q", dns.RcodeToString[resp.Rcode], got, want)
	}
	return nil
}

func eventually(t *testing.T, check func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(strings.TrimSpace(err.Error()))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func ptr[T any](v T) *T { return &v }
