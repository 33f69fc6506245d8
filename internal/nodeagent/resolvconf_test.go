package nodeagent

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestParseResolvConf(t *testing.T) {
	got := ParseResolvConf([]byte("# generated\nnameserver 192.0.2.53\n; comment\nnameserver 192.0.2.54\n" +
		"domain example.net\nsearch corp.example.com example.com\noptions edns0 timeout:2\noptions rotate\n"))
	want := ResolvConf{
		Nameservers: []string{"192.0.2.53", "192.0.2.54"},
		Searches:    []string{"corp.example.com", "example.com"},
		Options:     []string{"edns0", "timeout:2", "rotate"},
	}
	if !slices.Equal(got.Nameservers, want.Nameservers) || !slices.Equal(got.Searches, want.Searches) ||
		!slices.Equal(got.Options, want.Options) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestPodResolvConf(t *testing.T) {
	const hostFile = "(the host's file)"
	host := ResolvConf{Nameservers: []string{"192.0.2.53"}, Searches: []string{"example.com"}, Options: []string{"timeout:2"}}
	pod := func(policy corev1.DNSPolicy, hostNetwork bool, dc *corev1.PodDNSConfig) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "opstrace"},
			Spec:       corev1.PodSpec{DNSPolicy: policy, HostNetwork: hostNetwork, DNSConfig: dc},
		}
	}
	two := "2"
	dnsConfig := &corev1.PodDNSConfig{
		Nameservers: []string{"192.0.2.99", "10.244.0.1"},
		Searches:    []string{"extra.example", "svc.cluster.local"},
		Options:     []corev1.PodDNSConfigOption{{Name: "ndots", Value: &two}, {Name: "edns0"}},
	}
	const cluster = "nameserver 10.244.0.1\nsearch opstrace.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
	for _, tc := range []struct {
		name       string
		pod        *corev1.Pod
		clusterDNS string
		domain     string
		want       string // hostFile means the host's file
	}{
		{"default policy is ClusterFirst", pod("", false, nil), "10.244.0.1", "", cluster},
		{"ClusterFirst", pod(corev1.DNSClusterFirst, false, nil), "10.244.0.1", "cluster.local", cluster},
		{"ClusterFirstWithHostNet", pod(corev1.DNSClusterFirstWithHostNet, true, nil), "10.244.0.1", "", cluster},
		{"other domain", pod(corev1.DNSClusterFirst, false, nil), "10.96.0.10", "example.internal",
			"nameserver 10.96.0.10\nsearch opstrace.svc.example.internal svc.example.internal example.internal\noptions ndots:5\n"},
		{"ClusterFirst with hostNetwork falls back to Default", pod(corev1.DNSClusterFirst, true, nil), "10.244.0.1", "", hostFile},
		{"no cluster DNS falls back to Default", pod(corev1.DNSClusterFirst, false, nil), "", "", hostFile},
		{"Default", pod(corev1.DNSDefault, false, nil), "10.244.0.1", "", hostFile},
		{"ClusterFirst with dnsConfig", pod(corev1.DNSClusterFirst, false, dnsConfig), "10.244.0.1", "",
			"nameserver 10.244.0.1\nnameserver 192.0.2.99\n" +
				"search opstrace.svc.cluster.local svc.cluster.local cluster.local extra.example\noptions ndots:2 edns0\n"},
		{"Default with dnsConfig merges with the host's", pod(corev1.DNSDefault, false, dnsConfig), "10.244.0.1", "",
			"nameserver 192.0.2.53\nnameserver 192.0.2.99\nnameserver 10.244.0.1\n" +
				"search example.com extra.example svc.cluster.local\noptions timeout:2 ndots:2 edns0\n"},
		{"None", pod(corev1.DNSNone, false, dnsConfig), "10.244.0.1", "",
			"nameserver 192.0.2.99\nnameserver 10.244.0.1\nsearch extra.example svc.cluster.local\noptions ndots:2 edns0\n"},
		// An empty file of its own: the resolver falls back to 127.0.0.1, as in a container.
		{"None without dnsConfig", pod(corev1.DNSNone, false, nil), "10.244.0.1", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hostCopy := ResolvConf{Nameservers: slices.Clone(host.Nameservers), Searches: slices.Clone(host.Searches),
				Options: slices.Clone(host.Options)}
			conf, own := PodResolvConf(tc.pod, tc.clusterDNS, tc.domain, hostCopy)
			if own != (tc.want != hostFile) {
				t.Fatalf("own = %v, want %v (%q)", own, tc.want != hostFile, conf.String())
			}
			if own && conf.String() != tc.want {
				t.Errorf("got\n%s\nwant\n%s", conf.String(), tc.want)
			}
			if !slices.Equal(hostCopy.Options, host.Options) || !slices.Equal(hostCopy.Searches, host.Searches) {
				t.Errorf("the host's configuration was modified: %+v", hostCopy)
			}
		})
	}
}

func TestBwrapArgsResolvConf(t *testing.T) {
	line := strings.Join(BwrapArgs(Sandbox{ResolvConf: "/state/pods/u/resolv.conf", Argv: []string{"/x"}}), " ")
	if !strings.Contains(line, "--ro-bind /state/pods/u/resolv.conf /etc/resolv.conf") {
		t.Errorf("the pod's resolv.conf is not bound:\n%s", line)
	}
	if strings.Contains(line, "/etc/resolv.conf /etc/resolv.conf") {
		t.Errorf("the host's resolv.conf is bound as well:\n%s", line)
	}
}
