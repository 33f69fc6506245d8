package installer

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
)

// upgradeLocal is `opstrace upgrade local NAME`: the upgrade flow of every cluster (runUpgrade) with the
// controller of this CLI's version. It asks nothing: a local cluster is this machine's own.
func upgradeLocal(ctx context.Context, name string, out io.Writer) error {
	c, err := openLocalCluster(name)
	if err != nil {
		return err
	}
	if c.supervisorPID() == 0 {
		return fmt.Errorf("local cluster %s is not running (opstrace list local shows the clusters)", name)
	}
	return runUpgrade(ctx, upgradeTarget{
		what: "local cluster " + name, name: name, namespace: LocalNamespace,
		connect: func(context.Context) (*rest.Config, error) {
			cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig())
			if err != nil {
				return nil, fmt.Errorf("kubeconfig %s: %w", c.Kubeconfig(), err)
			}
			cfg.Timeout = 10 * time.Second
			return cfg, nil
		},
		again: selfCommand() + " upgrade local " + name,
		verify: func(ctx context.Context, kube client.Client) error {
			// The controller renews the gateway's CA (at 80% of its lifetime) and a recreated cluster has a
			// new one: trust the one it serves now.
			if err := c.writeCA(ctx, kube); err != nil {
				return err
			}
			return verifyLocal(ctx, name, v1alpha1.SystemTenant, out)
		},
		diagnose: func() string { return "last lines of " + c.nodeAgentLog() + ":\n" + tail(c.nodeAgentLog(), 20) },
	}, upgradeOptions{yes: true, timeout: 15 * time.Minute, interval: 250 * time.Millisecond}, out)
}

// imageTag is the tag of an image reference, "latest" when it has none.
func imageTag(image string) string {
	if _, tag := splitImage(image); tag != "" && !strings.HasPrefix(tag, "@") {
		tag, _, _ = strings.Cut(tag, "@")
		return tag
	}
	return "latest"
}
