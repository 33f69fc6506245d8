package nodeagent

import (
	"bufio"
	"bytes"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// DefaultClusterDomain is the cluster domain when Config.ClusterDomain is empty.
const DefaultClusterDomain = "cluster.local"

// ResolvConf is the content of /etc/resolv.conf.
type ResolvConf struct {
	Nameservers, Searches, Options []string
}

// ParseResolvConf reads the nameserver, search (and domain) and options lines of a resolv.conf.
func ParseResolvConf(data []byte) ResolvConf {
	var c ResolvConf
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") || strings.HasPrefix(fields[0], ";") {
			continue
		}
		switch fields[0] {
		case "nameserver":
			if len(fields) > 1 {
				c.Nameservers = append(c.Nameservers, fields[1])
			}
		case "search", "domain": // the last of them wins, as in resolv.conf(5)
			c.Searches = slices.Clone(fields[1:])
		case "options":
			c.Options = append(c.Options, fields[1:]...)
		}
	}
	return c
}

// String renders the file.
func (c ResolvConf) String() string {
	var b strings.Builder
	for _, ns := range c.Nameservers {
		b.WriteString("nameserver " + ns + "\n")
	}
	if len(c.Searches) > 0 {
		b.WriteString("search " + strings.Join(c.Searches, " ") + "\n")
	}
	if len(c.Options) > 0 {
		b.WriteString("options " + strings.Join(c.Options, " ") + "\n")
	}
	return b.String()
}

// PodResolvConf is a pod's /etc/resolv.conf by the kubelet's rules, for cluster DNS at clusterDNS (empty:
// none) in clusterDomain; host is the node's own resolv.conf. own is false when the pod simply gets the
// host's file.
//
//   - ClusterFirst (the default) and ClusterFirstWithHostNet: nameserver clusterDNS, search
//     <ns>.svc.<domain> svc.<domain> <domain>, options ndots:5. ClusterFirst with hostNetwork, and either
//     without a cluster DNS, fall back to Default, as the kubelet does.
//   - Default: the host's file. None: nothing but spec.dnsConfig.
//   - spec.dnsConfig is merged on top: nameservers and searches appended without duplicates, options
//     replacing those of the same name.
//
// Unlike the kubelet, ClusterFirst does not append the host's search domains: the local cluster's network
// namespace cannot reach the host's resolvers anyway.
func PodResolvConf(pod *corev1.Pod, clusterDNS, clusterDomain string, host ResolvConf) (conf ResolvConf, own bool) {
	if clusterDomain == "" {
		clusterDomain = DefaultClusterDomain
	}
	policy := pod.Spec.DNSPolicy
	if policy == "" {
		policy = corev1.DNSClusterFirst
	}
	if policy == corev1.DNSClusterFirst && pod.Spec.HostNetwork ||
		(policy == corev1.DNSClusterFirst || policy == corev1.DNSClusterFirstWithHostNet) && clusterDNS == "" {
		policy = corev1.DNSDefault
	}
	switch policy {
	case corev1.DNSClusterFirst, corev1.DNSClusterFirstWithHostNet:
		conf = ResolvConf{
			Nameservers: []string{clusterDNS},
			Searches:    []string{pod.Namespace + ".svc." + clusterDomain, "svc." + clusterDomain, clusterDomain},
			Options:     []string{"ndots:5"},
		}
	case corev1.DNSNone:
	default: // Default
		if pod.Spec.DNSConfig == nil {
			return host, false
		}
		conf = ResolvConf{
			Nameservers: slices.Clone(host.Nameservers), Searches: slices.Clone(host.Searches), Options: slices.Clone(host.Options),
		}
	}
	if dc := pod.Spec.DNSConfig; dc != nil {
		conf.Nameservers = appendNew(conf.Nameservers, dc.Nameservers...)
		conf.Searches = appendNew(conf.Searches, dc.Searches...)
		for _, o := range dc.Options {
			opt := o.Name
			if o.Value != nil && *o.Value != "" {
				opt += ":" + *o.Value
			}
			if i := slices.IndexFunc(conf.Options, func(s string) bool { return optionName(s) == o.Name }); i >= 0 {
				conf.Options[i] = opt
			} else {
				conf.Options = append(conf.Options, opt)
			}
		}
	}
	return conf, true
}

func optionName(opt string) string {
	name, _, _ := strings.Cut(opt, ":")
	return name
}

func appendNew(list []string, items ...string) []string {
	for _, item := range items {
		if !slices.Contains(list, item) {
			list = append(list, item)
		}
	}
	return list
}
