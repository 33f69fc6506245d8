// Command opstrace-node-agent is the node of `opstrace create local`: it registers a Node with the API
// server and runs the pods scheduled to it as local processes sandboxed by bubblewrap. See
// internal/nodeagent.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/opstrace/opstrace/internal/nodeagent"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "opstrace-node-agent:", err)
		os.Exit(1)
	}
}

func run() error {
	images := nodeagent.Images{}
	home, _ := os.UserHomeDir()
	fs := flag.NewFlagSet("opstrace-node-agent", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the API server to register with (required)")
	nodeName := fs.String("node-name", "local", "name of the Node")
	stateDir := fs.String("state-dir", home+"/.local/share/opstrace/node-agent",
		"directory of pod volumes and logs (<state>/pods/<uid>), local persistent volumes (<state>/volumes) and pod IPs")
	apiServerURL := fs.String("apiserver-url", "",
		"API server URL given to pods as KUBERNETES_SERVICE_HOST and _PORT (default: the kubeconfig's server)")
	caFile := fs.String("cluster-ca-file", "",
		"CA certificate of the API server, ca.crt of service account volumes until kube-root-ca.crt exists (default: the kubeconfig's)")
	podCIDR := fs.String("pod-cidr", nodeagent.DefaultPodCIDR, "range of pod addresses; it must be routed locally (a loopback range, or one routed local to lo in the local cluster's network namespace)")
	nodeIP := fs.String("node-ip", "127.0.0.1", "the node's address, reported as the pods' hostIP")
	clusterDNS := fs.String("cluster-dns", "", "address of the cluster DNS server; pods of DNS policy ClusterFirst get an "+
		"/etc/resolv.conf naming it (default: none, pods get the host's /etc/resolv.conf)")
	clusterDomain := fs.String("cluster-domain", nodeagent.DefaultClusterDomain, "the cluster's DNS domain, in the pods' DNS search path")
	bwrap := fs.String("bwrap", "bwrap", "bubblewrap binary (Debian package bubblewrap)")
	fs.Var(images, "image", "run the host binary PATH for the image `REPO[:TAG]=PATH`; without a tag, for every tag "+
		"(repeatable), such as cortexproject/cortex:v1.21.1=/usr/local/bin/cortex")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: opstrace-node-agent --kubeconfig FILE [--image REPO[:TAG]=PATH ...] [flags]\n\n"+
			"Registers a Node and runs the pods scheduled to it as processes sandboxed by bubblewrap; each pod\n"+
			"binds its own loopback address 127.0.x.y. Provisions volumes of the StorageClass opstrace-local.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *kubeconfig == "" {
		fs.Usage()
		return errors.New("--kubeconfig is required")
	}
	restConfig, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	agent, err := nodeagent.New(nodeagent.Config{
		NodeName: *nodeName, StateDir: *stateDir, APIServerURL: *apiServerURL, ClusterCAFile: *caFile,
		PodCIDR: *podCIDR, NodeIP: *nodeIP, ClusterDNS: *clusterDNS, ClusterDomain: *clusterDomain,
		Images: images, Bwrap: *bwrap, Logger: logger,
	}, restConfig)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return agent.Run(ctx)
}
