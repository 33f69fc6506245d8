package controlplane

import (
	"encoding/json"
	"fmt"
	"strconv"
)

// Component names: the binaries in BinDir, the log files logs/<name>.log and the pid files run/<name>.pid.
const (
	ComponentEtcd          = "etcd"
	ComponentAPIServer     = "kube-apiserver"
	ComponentControllerMgr = "kube-controller-manager"
	ComponentScheduler     = "kube-scheduler"
)

// components in start order; they stop in the reverse order.
var components = []string{ComponentEtcd, ComponentAPIServer, ComponentControllerMgr, ComponentScheduler}

// Cluster-wide settings.
const (
	// ServiceCIDR is only the range Service ClusterIPs are allocated from: nothing routes it on a local machine.
	ServiceCIDR = "10.96.0.0/16"
	// ServiceAccountIssuer is the "iss" of service-account tokens.
	ServiceAccountIssuer = "https://kubernetes.default.svc.cluster.local"
)

func apiServerURL(port int) string { return "https://127.0.0.1:" + strconv.Itoa(port) }

func loopbackURL(scheme string, port int) string {
	return fmt.Sprintf("%s://127.0.0.1:%d", scheme, port)
}

// etcdArgs: one member, client and peer on 127.0.0.1 with mutual TLS against etcd's own CA.
func etcdArgs(l layout, p ports, unsafeNoFsync bool) []string {
	pki := l.pki()
	client, peer := loopbackURL("https", p.EtcdClient), loopbackURL("https", p.EtcdPeer)
	args := []string{
		"--name=opstrace",
		"--data-dir=" + l.etcdData(),
		"--listen-client-urls=" + client,
		"--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer,
		"--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=opstrace=" + peer,
		"--cert-file=" + pki.crt(pkiEtcdServer),
		"--key-file=" + pki.key(pkiEtcdServer),
		"--client-cert-auth=true",
		"--trusted-ca-file=" + pki.crt(pkiEtcdCA),
		"--peer-cert-file=" + pki.crt(pkiEtcdServer),
		"--peer-key-file=" + pki.key(pkiEtcdServer),
		"--peer-client-cert-auth=true",
		"--peer-trusted-ca-file=" + pki.crt(pkiEtcdCA),
	}
	if unsafeNoFsync {
		args = append(args, "--unsafe-no-fsync=true")
	}
	return args
}

func apiServerArgs(l layout, p ports) []string {
	pki := l.pki()
	return []string{
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		// The apiserver refuses to publish a loopback address as the endpoint of the default/kubernetes
		// Service ("may not be in the loopback range"), so it manages no endpoints: that Service has none,
		// and local pods reach the apiserver at APIServerURL (the node agent sets KUBERNETES_SERVICE_HOST/PORT).
		"--endpoint-reconciler-type=none",
		"--secure-port=" + strconv.Itoa(p.APIServer),
		"--etcd-servers=" + loopbackURL("https", p.EtcdClient),
		"--etcd-cafile=" + pki.crt(pkiEtcdCA),
		"--etcd-certfile=" + pki.crt(pkiAPIServerEtcdClient),
		"--etcd-keyfile=" + pki.key(pkiAPIServerEtcdClient),
		"--tls-cert-file=" + pki.crt(pkiAPIServer),
		"--tls-private-key-file=" + pki.key(pkiAPIServer),
		"--client-ca-file=" + pki.crt(pkiCA),
		"--kubelet-client-certificate=" + pki.crt(pkiAPIServerKubelet),
		"--kubelet-client-key=" + pki.key(pkiAPIServerKubelet),
		// The front proxy (the apiserver calling an aggregated API server, such as metrics-server) asserts
		// users in these headers; its CA is published in kube-system/extension-apiserver-authentication,
		// where the controller manager and scheduler also look for it.
		"--requestheader-client-ca-file=" + pki.crt(pkiFrontProxyCA),
		"--requestheader-allowed-names=" + frontProxyUser,
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + pki.crt(pkiFrontProxyClient),
		"--proxy-client-key-file=" + pki.key(pkiFrontProxyClient),
		"--service-account-issuer=" + ServiceAccountIssuer,
		"--service-account-key-file=" + pki.path(pkiServiceAccountPub),
		"--service-account-signing-key-file=" + pki.path(pkiServiceAccountKey),
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--authorization-mode=Node,RBAC",
		// In addition to the defaults: a node may change only its own Node and the pods bound to it.
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
	}
}

func controllerManagerArgs(l layout, p ports, clusterName string) []string {
	pki := l.pki()
	kubeconfig := l.kubeconfig("controller-manager")
	return []string{
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(p.ControllerManager),
		"--tls-cert-file=" + pki.crt(pkiControllerManagerServ),
		"--tls-private-key-file=" + pki.key(pkiControllerManagerServ),
		"--leader-elect=false",
		"--controllers=*",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + pki.path(pkiServiceAccountKey),
		"--root-ca-file=" + pki.crt(pkiCA),
		"--cluster-signing-cert-file=" + pki.crt(pkiCA),
		"--cluster-signing-key-file=" + pki.key(pkiCA),
		"--cluster-name=" + clusterName,
	}
}

// schedulerArgs: the scheduler's --kubeconfig and --leader-elect are deprecated in favour of its
// configuration file (schedulerConfig), which sets both.
func schedulerArgs(l layout, p ports) []string {
	pki := l.pki()
	kubeconfig := l.kubeconfig("scheduler")
	return []string{
		"--config=" + l.schedulerConfig(),
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(p.Scheduler),
		"--tls-cert-file=" + pki.crt(pkiSchedulerServing),
		"--tls-private-key-file=" + pki.key(pkiSchedulerServing),
	}
}

// schedulerConfig is the scheduler's KubeSchedulerConfiguration: its kubeconfig and no leader election.
func schedulerConfig(l layout) []byte {
	kubeconfig, _ := json.Marshal(l.kubeconfig("scheduler")) // a JSON string is a YAML string
	return []byte(`apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: ` + string(kubeconfig) + `
leaderElection:
  leaderElect: false
`)
}
