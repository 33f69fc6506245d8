package gateway

import (
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"testing"

	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"
)

func TestReadyTargetsFollowTheEndpointSliceAPI(t *testing.T) {
	port := func(name string, number int32) discoveryv1.EndpointPort {
		return discoveryv1.EndpointPort{Name: ptr.To(name), Port: ptr.To(number)}
	}
	endpoint := func(address string, ready, terminating *bool) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: []string{address}, Conditions: discoveryv1.EndpointConditions{Ready: ready, Terminating: terminating}}
	}
	slice := func(addressType discoveryv1.AddressType, ports []discoveryv1.EndpointPort, endpoints ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{AddressType: addressType, Ports: ports, Endpoints: endpoints}
	}
	http80 := []discoveryv1.EndpointPort{port("grpc", 9095), port("http", 80)}
	tests := []struct {
		name   string
		slices []*discoveryv1.EndpointSlice
		want   string
	}{
		{"nil ready means ready, false is not", []*discoveryv1.EndpointSlice{slice(discoveryv1.AddressTypeIPv4, http80,
			endpoint("10.0.0.2", nil, nil), endpoint("10.0.0.1", ptr.To(true), ptr.To(false)), endpoint("10.0.0.3", ptr.To(false), nil))},
			"[http://10.0.0.1:80 http://10.0.0.2:80]"},
		{"terminating is left out even when ready", []*discoveryv1.EndpointSlice{slice(discoveryv1.AddressTypeIPv4, http80,
			endpoint("10.0.0.1", ptr.To(true), ptr.To(true)), endpoint("10.0.0.2", nil, ptr.To(true)))}, "[]"},
		{"the port is the one named http, per slice", []*discoveryv1.EndpointSlice{
			slice(discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{port("http", 8080)}, endpoint("10.0.0.1", nil, nil)),
			slice(discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{port("grpc", 9095)}, endpoint("10.0.0.2", nil, nil)),
			slice(discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{{Name: ptr.To("http")}}, endpoint("10.0.0.3", nil, nil)),
		}, "[http://10.0.0.1:8080]"},
		{"IPv6 is bracketed, FQDN skipped", []*discoveryv1.EndpointSlice{
			slice(discoveryv1.AddressTypeIPv6, http80, endpoint("fd00::1", nil, nil)),
			slice(discoveryv1.AddressTypeFQDN, http80, endpoint("cortex.example", nil, nil)),
		}, "[http://[fd00::1]:80]"},
		{"an endpoint in two slices counts once", []*discoveryv1.EndpointSlice{
			slice(discoveryv1.AddressTypeIPv4, http80, endpoint("10.0.0.1", nil, nil)),
			slice(discoveryv1.AddressTypeIPv4, http80, endpoint("10.0.0.1", nil, nil), discoveryv1.Endpoint{}),
		}, "[http://10.0.0.1:80]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fmt.Sprint(readyTargets(tt.slices, "http")); got != tt.want {
				t.Fatalf("readyTargets = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestAnUpstreamWithoutBackendsAnswers503(t *testing.T) {
	g := newGatewayFixture(t, 1<<20)
	g.handler.cfg.Distributor.SetTargets(nil)
	res := g.do("POST", "/api/v1/push", g.valid, writeBody(1), nil)
	if res.Code != http.StatusServiceUnavailable || errorBody(t, res) != "no ready distributor endpoints" {
		t.Fatalf("push with no distributor: %d %s", res.Code, res.Body)
	}
	if res := g.do("GET", "/api/v1/labels", g.valid, nil, nil); res.Code != http.StatusOK {
		t.Fatalf("query with a query-frontend: %d %s", res.Code, res.Body)
	}
}

// TestUpstreamTargetsCanChangeWhileRequestsPickThem is for the race detector.
func TestUpstreamTargetsCanChangeWhileRequestsPickThem(t *testing.T) {
	u, err := NewUpstream("distributor", []string{"http://10.0.0.1:80"})
	if err != nil {
		t.Fatal(err)
	}
	a, b := &url.URL{Scheme: "http", Host: "10.0.0.2:80"}, &url.URL{Scheme: "http", Host: "10.0.0.3:80"}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 1000 {
				if target := u.pick(); target != nil && target.Host == "" {
					t.Error("picked an empty target")
				}
			}
		})
	}
	for i := range 1000 {
		u.SetTargets([][]*url.URL{{a}, {a, b}, nil}[i%3])
	}
	wg.Wait()
	if _, err := NewUpstream("distributor", []string{"cortex:80"}); err == nil {
		t.Fatal("a URL without a scheme was accepted")
	}
}
