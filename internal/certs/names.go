package certs

import (
	"sort"
	"strings"
)

// clusterDomain is the DNS domain of the Kubernetes cluster's Services (manifests.ClusterDomain).
const clusterDomain = "cluster.local"

// GatewayServiceName is the name of a cluster's gateway Service, "<cluster>-gateway".
func GatewayServiceName(cluster string) string {
	return cluster + "-gateway"
}

// GatewayDNSNames are the names the gateway's certificate is issued for: every in-cluster name of its Service
// (<cluster>-gateway, .<namespace>, .<namespace>.svc, .<namespace>.svc.cluster.local) and, when set, the
// public hostname (spec.gateway.hostname). Lower-cased, sorted, each once.
func GatewayDNSNames(cluster, namespace, hostname string) []string {
	service := GatewayServiceName(cluster)
	names := []string{
		service,
		service + "." + namespace,
		service + "." + namespace + ".svc",
		service + "." + namespace + ".svc." + clusterDomain,
	}
	if hostname = strings.TrimSuffix(strings.TrimSpace(hostname), "."); hostname != "" {
		names = append(names, hostname)
	}
	return sortedUnique(names)
}

// ServiceDNSNames are the names a certificate needs to be valid for every in-cluster name of the given Services
// of namespace: each Service's short name, .<namespace>, .<namespace>.svc and .<namespace>.svc.cluster.local;
// and for each headless Service also the wildcard *.<service>.<namespace>.svc (and its cluster.local form),
// which matches the per-pod names a StatefulSet's pods get under their governing Service. Lower-cased, sorted,
// each once.
func ServiceDNSNames(namespace string, services, headless []string) []string {
	var names []string
	for _, service := range append(append([]string{}, services...), headless...) {
		names = append(names,
			service,
			service+"."+namespace,
			service+"."+namespace+".svc",
			service+"."+namespace+".svc."+clusterDomain,
		)
	}
	for _, service := range headless {
		names = append(names,
			"*."+service+"."+namespace+".svc",
			"*."+service+"."+namespace+".svc."+clusterDomain,
		)
	}
	return sortedUnique(names)
}

// sortedUnique lower-cases names, sorts them and drops repeats.
func sortedUnique(names []string) []string {
	for i := range names {
		names[i] = strings.ToLower(names[i])
	}
	sort.Strings(names)
	out := names[:0]
	for i, name := range names {
		if i == 0 || name != names[i-1] {
			out = append(out, name)
		}
	}
	return out
}
