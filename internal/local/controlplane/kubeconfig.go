package controlplane

import (
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/opstrace/opstrace/internal/certs"
)

// writeKubeconfig writes a kubeconfig for server that trusts caPEM and authenticates with the client
// certificate pair, its certificate and key embedded so the file can be copied elsewhere. The file is 0600.
func writeKubeconfig(path, clusterName, server string, caPEM []byte, user string, pair certs.KeyPair) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[clusterName] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: pair.CertPEM, ClientKeyData: pair.KeyPEM}
	cfg.Contexts[clusterName] = &clientcmdapi.Context{Cluster: clusterName, AuthInfo: user}
	cfg.CurrentContext = clusterName
	return clientcmd.WriteToFile(*cfg, path)
}

// writeKubeconfigs writes admin, controller-manager and scheduler kubeconfigs from the certificates in pki/.
func writeKubeconfigs(l layout, clusterName, server string) error {
	pki := l.pki()
	ca, err := readPair(pki, pkiCA)
	if err != nil {
		return err
	}
	for _, kc := range []struct{ file, pair, user string }{
		{"admin", pkiAdmin, adminUser},
		{"controller-manager", pkiControllerManager, controllerManagerUser},
		{"scheduler", pkiScheduler, schedulerUser},
	} {
		pair, err := readPair(pki, kc.pair)
		if err != nil {
			return err
		}
		if err := writeKubeconfig(l.kubeconfig(kc.file), clusterName, server, ca.CertPEM, kc.user, pair); err != nil {
			return err
		}
	}
	return nil
}
