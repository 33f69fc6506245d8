package installer

// `opstrace verify aws|gcp NAME`: the canary of verify local, through a cloud cluster's gateway. What
// differs by cloud is only how the API server is reached (cloudFlags.cluster); the gateway is found the
// same way on both, from the MetricsCluster's status, its LoadBalancer Service and its certificate Secret.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/manifests"
)

// cloudCluster is an existing cluster in a cloud, as the commands that take no config file reach it.
type cloudCluster struct {
	provider, name string
	// what names it in messages: "AWS cluster prod in us-west-2".
	what string
	// flags are the command-line flags that find it again ("--region us-west-2"), for the commands a
	// message tells the user to run.
	flags   string
	connect func(context.Context) (*rest.Config, error)
}

// command is how the user runs sub (upgrade, verify, status) on this cluster.
func (c cloudCluster) command(sub string) string {
	return strings.TrimSpace(fmt.Sprintf("%s %s %s %s %s", selfCommand(), sub, c.provider, c.name, c.flags))
}

// cloudFlags are the flags that find an existing cluster of a provider: --region for AWS; --project and
// --region for GCP.
type cloudFlags struct {
	provider, region, project string
}

func (f *cloudFlags) register(cmd *cobra.Command) {
	switch f.provider {
	case config.ProviderAWS:
		cmd.Flags().StringVar(&f.region, "region", config.DefaultAWSRegion, "AWS region of the cluster")
	case config.ProviderGCP:
		projectFlags(cmd, &f.project, &f.region)
	}
}

// cluster checks the name and the flags, then builds the provider's clients: the one per-provider part of
// upgrade and verify.
func (f *cloudFlags) cluster(ctx context.Context, name, sub string) (cloudCluster, error) {
	if err := cloud.ValidateName(name); err != nil {
		return cloudCluster{}, err
	}
	switch f.provider {
	case config.ProviderAWS:
		c, err := awsClientsFunc(ctx, f.region)
		if err != nil {
			return cloudCluster{}, err
		}
		return cloudCluster{provider: f.provider, name: name, connect: awsConnect(c, name),
			what: fmt.Sprintf("AWS cluster %s in %s", name, f.region), flags: "--region " + f.region}, nil
	case config.ProviderGCP:
		if err := requireProject(f.project, sub+" gcp "+name); err != nil {
			return cloudCluster{}, err
		}
		c, err := gcpClientsFunc(ctx, f.project, f.region)
		if err != nil {
			return cloudCluster{}, err
		}
		return cloudCluster{provider: f.provider, name: name, connect: gcpConnect(c, name),
			what:  fmt.Sprintf("GCP cluster %s in project %s, %s", name, f.project, f.region),
			flags: "--project " + f.project + " --region " + f.region}, nil
	}
	return cloudCluster{}, fmt.Errorf("unknown provider %q", f.provider)
}

// newCloudClusterCommand is `SUB aws|gcp NAME` on an existing cluster: it checks the name and the
// provider's flags, builds the provider's clients, then runs run.
func newCloudClusterCommand(provider, sub, short, long string, run func(cmd *cobra.Command, c cloudCluster) error) *cobra.Command {
	flags := &cloudFlags{provider: provider}
	cmd := &cobra.Command{
		Use: provider + " NAME", Short: short, Long: long, Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := flags.cluster(cmd.Context(), args[0], sub)
			if err != nil {
				return err
			}
			return run(cmd, c)
		},
	}
	flags.register(cmd)
	return cmd
}

func newVerifyCloudCommand(provider string) *cobra.Command {
	var tenant string
	cmd := newCloudClusterCommand(provider, "verify",
		"Write and read back a unique series (and a log line) through the gateway of a "+strings.ToUpper(provider)+" cluster; exit non-zero on failure",
		"Reads the tenant's token from its Secret in the cluster (it is never printed) and the gateway's CA from\n"+
			"its certificate Secret (the system's CAs when that holds none, as with Let's Encrypt). Connects to the\n"+
			"load balancer's address, or to the configured host name when the config has dns, presenting the\n"+
			"endpoint's host name for TLS. Writes one sample, reads it back with PromQL, and with logs on pushes\n"+
			"one log line and reads it back with LogQL, printing each latency.",
		func(cmd *cobra.Command, c cloudCluster) error {
			return verifyCloud(cmd.Context(), c, tenant, cmd.OutOrStdout())
		})
	cmd.Flags().StringVar(&tenant, "tenant", v1alpha1.SystemTenant, "Tenant to write and read as.")
	return cmd
}

// connectKube reaches the API server of the cluster that what names, with a client that knows the
// project's types.
func connectKube(ctx context.Context, connect func(context.Context) (*rest.Config, error), what string) (*rest.Config, client.Client, error) {
	restConfig, err := connect(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to %s: %w", what, err)
	}
	kube, err := newKubeClient(restConfig)
	if err != nil {
		return nil, nil, err
	}
	return restConfig, kube, nil
}

// verifyCloud is `opstrace verify aws|gcp NAME`: the canary through the cluster's gateway as tenant.
func verifyCloud(ctx context.Context, c cloudCluster, tenant string, out io.Writer) error {
	_, kube, err := connectKube(ctx, c.connect, c.what)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	var mc v1alpha1.MetricsCluster
	if err := kube.Get(ctx, client.ObjectKey{Namespace: cloud.Namespace, Name: c.name}, &mc); apierrors.IsNotFound(err) {
		return fmt.Errorf("verify: there is no MetricsCluster %s/%s in %s: %s shows what create made", cloud.Namespace, c.name, c.what, c.command("status"))
	} else if err != nil {
		return fmt.Errorf("verify: read MetricsCluster %s/%s: %w", cloud.Namespace, c.name, err)
	}
	token, err := tenantToken(ctx, kube, cloud.Namespace, tenant)
	if err != nil {
		return err
	}
	gw, via, err := cloudGateway(ctx, kube, &mc)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	defer gw.Client.CloseIdleConnections()
	fmt.Fprintf(out, "gateway %s via %s\n", gw.URL, via)
	return canary(ctx, gw, token, tenant, c.what, mc.Spec.Logs.IsEnabled(), out)
}

// cloudGateway finds a cloud cluster's gateway: the URL of the MetricsCluster's status (its host name is
// what the certificate names), the address to dial (gatewayDialAddress) and the CAs to trust (the
// certificate Secret's ca.crt; the system's CAs when it has none, as with a public issuer such as Let's
// Encrypt). via says what is dialed and trusted, for the output.
func cloudGateway(ctx context.Context, kube client.Client, mc *v1alpha1.MetricsCluster) (gw gatewayConn, via string, err error) {
	ref := mc.Namespace + "/" + mc.Name
	if mc.Status.GatewayEndpoint == "" {
		return gatewayConn{}, "", fmt.Errorf("MetricsCluster %s has no gateway endpoint in its status yet: the controller has not reconciled it (is it running? kubectl -n %s get pods)",
			ref, ControllerNamespace)
	}
	endpoint, err := url.Parse(mc.Status.GatewayEndpoint)
	if err != nil || endpoint.Hostname() == "" {
		return gatewayConn{}, "", fmt.Errorf("MetricsCluster %s: gateway endpoint %q is not a URL", ref, mc.Status.GatewayEndpoint)
	}
	var secret corev1.Secret
	secretKey := client.ObjectKey{Namespace: mc.Namespace, Name: manifests.GatewayTLSSecretName(mc.Name)}
	if err := kube.Get(ctx, secretKey, &secret); err != nil {
		return gatewayConn{}, "", fmt.Errorf("read the gateway certificate (Secret %s): %w", secretKey, err)
	}
	var pool *x509.CertPool // nil: the system's CAs
	trust := "the system's CAs"
	if ca := secret.Data[manifests.TLSCAKey]; len(ca) > 0 {
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(ca) {
			return gatewayConn{}, "", fmt.Errorf("the gateway certificate Secret %s: %s holds no PEM certificate", secretKey, manifests.TLSCAKey)
		}
		trust = "the cluster's CA (Secret " + secretKey.String() + ")"
	}
	var svc corev1.Service
	svcKey := client.ObjectKey{Namespace: mc.Namespace, Name: manifests.ComponentName(mc.Name, manifests.ComponentGateway)}
	if err := kube.Get(ctx, svcKey, &svc); err != nil {
		return gatewayConn{}, "", fmt.Errorf("read the gateway Service %s: %w", svcKey, err)
	}
	address, err := gatewayDialAddress(mc, endpoint, &svc)
	if err != nil {
		return gatewayConn{}, "", err
	}
	transport := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: endpoint.Hostname(), MinVersion: tls.VersionTLS12},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, network, address)
		},
		ForceAttemptHTTP2: true,
	}
	base := "https://" + endpoint.Host
	return gatewayConn{URL: base, Client: &http.Client{Timeout: 30 * time.Second, Transport: transport}},
		address + ", trusting " + trust, nil
}

// gatewayDialAddress is where the gateway of a cloud cluster listens for its clients. With a configured
// host name (the config's dns) it is that name, resolved by DNS as every client resolves it, at the
// endpoint's port; otherwise the address of the gateway's load balancer (AWS gives a host name, GCP an
// IP) at the Service's https port. The load balancer's own name is not in the certificate: the TLS server
// name stays the endpoint's host.
func gatewayDialAddress(mc *v1alpha1.MetricsCluster, endpoint *url.URL, svc *corev1.Service) (string, error) {
	if mc.Spec.Gateway.Hostname != "" {
		port := endpoint.Port()
		if port == "" {
			port = "443"
		}
		return net.JoinHostPort(endpoint.Hostname(), port), nil
	}
	ref := svc.Namespace + "/" + svc.Name
	if svc.Spec.Type != corev1.ServiceTypeLoadBalancer {
		return "", fmt.Errorf("the gateway Service %s is of type %s, not LoadBalancer: a cloud cluster's gateway is reached through its load balancer (spec.gateway.serviceType of MetricsCluster %s/%s)",
			ref, svc.Spec.Type, mc.Namespace, mc.Name)
	}
	var host string
	if ingress := svc.Status.LoadBalancer.Ingress; len(ingress) > 0 {
		host = ingress[0].Hostname
		if host == "" {
			host = ingress[0].IP
		}
	}
	if host == "" {
		return "", fmt.Errorf("the gateway's load balancer (Service %s) has no address yet: the cloud is still making it; try again in a minute (kubectl -n %s describe service %s shows its events)",
			ref, svc.Namespace, svc.Name)
	}
	port := int32(manifests.GatewayServicePort)
	for _, p := range svc.Spec.Ports {
		if p.Name == manifests.PortHTTPS {
			port = p.Port
		}
	}
	return net.JoinHostPort(host, strconv.Itoa(int(port))), nil
}
