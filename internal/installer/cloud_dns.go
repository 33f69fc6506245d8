package installer

// The steps of the config keys dns and cert_issuer that need the Kubernetes cluster, for AWS and GCP:
// cert-manager with a Let's Encrypt ClusterIssuer (before the MetricsCluster names it), and the gateway's
// DNS record (after the gateway's load balancer has an address). The cloud halves (zone check, the DNS01
// identity) are in the cloud packages' Steps.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	awscloud "github.com/opstrace/opstrace/internal/installer/cloud/aws"
	gcpcloud "github.com/opstrace/opstrace/internal/installer/cloud/gcp"
	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/installer/plan"
	"github.com/opstrace/opstrace/internal/manifests"
)

// certManagerCharts is where a cloud install gets cert-manager's chart; tests load a local one.
var certManagerCharts chartSource = ociChart{ref: certManagerChart}

// certManagerWait is how long create waits for cert-manager's Deployments.
const certManagerWait = 5 * time.Minute

// certManagerDeps are the dependencies the Kubernetes step adds for cfg: the ClusterIssuer its
// MetricsCluster names.
func certManagerDeps(cfg config.Config) []string {
	if letsEncrypt(cfg) {
		return []string{certManagerStepName}
	}
	return nil
}

// Load balancer address kinds: AWS gives its load balancers a DNS name (a CNAME target), GCP an IP (an A
// record's).
const (
	addressHostname = "hostname"
	addressIP       = "IP"
)

// gatewayAddress returns the address of the gateway's load balancer, read from its Service's status; an
// error of kind plan.NotFound while the cluster, the Service or the address does not exist yet.
func gatewayAddress(connect func(context.Context) (*rest.Config, error), name, kind string) func(context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		restConfig, err := connect(ctx)
		if err != nil {
			return "", err
		}
		kube, err := newKubeClient(restConfig)
		if err != nil {
			return "", err
		}
		key := client.ObjectKey{Namespace: cloud.Namespace, Name: manifests.ComponentName(name, manifests.ComponentGateway)}
		var svc corev1.Service
		if err := kube.Get(ctx, key, &svc); apierrors.IsNotFound(err) {
			return "", plan.Errorf(plan.NotFound, "read the gateway Service "+key.String(), errors.New("it does not exist yet"))
		} else if err != nil {
			return "", plan.Errorf(kubeKind(err), "read the gateway Service "+key.String(), err)
		}
		for _, ingress := range svc.Status.LoadBalancer.Ingress {
			if kind == addressHostname && ingress.Hostname != "" {
				return ingress.Hostname, nil
			}
			if kind == addressIP && ingress.IP != "" {
				return ingress.IP, nil
			}
		}
		return "", plan.Errorf(plan.NotFound, "read the gateway's load balancer",
			fmt.Errorf("the Service %s has no load balancer %s yet (status.loadBalancer.ingress)", key, kind))
	}
}

// certificateSteps are cert-manager (with a Let's Encrypt cert_issuer), after deps, and record.
func certificateSteps(cfg config.Config, connect func(context.Context) (*rest.Config, error), deps []string,
	setup func(context.Context) (certManagerSetup, error), record plan.Step, out io.Writer) []plan.Step {
	if !letsEncrypt(cfg) {
		return []plan.Step{record}
	}
	return []plan.Step{&certManagerStep{deps: deps, connect: connect, cfg: cfg, setup: setup,
		charts: certManagerCharts, wait: certManagerWait, out: out}, record}
}

// awsCertificateSteps are cert-manager (with a Let's Encrypt cert_issuer) and the gateway's Route 53
// record (with dns) of an AWS install.
func awsCertificateSteps(c *awscloud.Clients, name string, cfg config.Config, out io.Writer) []plan.Step {
	if cfg.DNS == nil {
		return nil
	}
	connect := awsConnect(c, name)
	setup := func(ctx context.Context) (certManagerSetup, error) {
		role, err := awscloud.RoleARN(ctx, c, name, awscloud.CertManagerRoleName(name))
		if err != nil {
			return certManagerSetup{}, err
		}
		zone, err := awscloud.FindHostedZone(ctx, c.Route53, *cfg.DNS)
		if err != nil {
			return certManagerSetup{}, err
		}
		// Ambient credentials: the IRSA role of the service account (cert-manager allows them for
		// ClusterIssuers by default).
		return certManagerSetup{ServiceAccountAnnotations: map[string]string{awsRoleAnnotation: role},
			Solver: map[string]any{"route53": map[string]any{"region": c.Region, "hostedZoneID": zone.ID}}}, nil
	}
	return certificateSteps(cfg, connect, []string{"aws/node-group", "aws/cert-manager-role"}, setup,
		awscloud.RecordStep(c, name, *cfg.DNS, gatewayAddress(connect, name, addressHostname), kubeStepName), out)
}

// gcpCertificateSteps are cert-manager (with a Let's Encrypt cert_issuer) and the gateway's Cloud DNS
// record (with dns) of a GCP install.
func gcpCertificateSteps(c *gcpcloud.Clients, name string, cfg config.Config, out io.Writer) []plan.Step {
	if cfg.DNS == nil {
		return nil
	}
	connect := gcpConnect(c, name)
	setup := func(ctx context.Context) (certManagerSetup, error) {
		zone, err := gcpcloud.FindManagedZone(ctx, c.DNS, c.Project, *cfg.DNS)
		if err != nil {
			return certManagerSetup{}, err
		}
		// Ambient credentials: the Google service account of workload identity.
		return certManagerSetup{
			ServiceAccountAnnotations: map[string]string{gcpServiceAccountAnnotation: gcpcloud.ServiceAccountEmail(c.Project, name, gcpcloud.RoleCertManager)},
			Solver:                    map[string]any{"cloudDNS": map[string]any{"project": c.Project, "hostedZoneName": zone.Name}}}, nil
	}
	return certificateSteps(cfg, connect, []string{"gcp/node-pool", "gcp/cert-manager-identity"}, setup,
		gcpcloud.RecordStep(c, name, *cfg.DNS, gatewayAddress(connect, name, addressIP), kubeStepName), out)
}

// awsStatusSteps are what status compares: the cloud steps and the gateway's DNS record.
func awsStatusSteps(c *awscloud.Clients, name string, cfg config.Config) []plan.Step {
	steps := awscloud.Steps(c, name, cfg)
	if cfg.DNS != nil {
		steps = append(steps, awscloud.RecordStep(c, name, *cfg.DNS, gatewayAddress(awsConnect(c, name), name, addressHostname)))
	}
	return steps
}

// gcpStatusSteps are what status compares: the cloud steps and the gateway's DNS record.
func gcpStatusSteps(c *gcpcloud.Clients, name string, cfg config.Config) []plan.Step {
	steps := gcpcloud.Steps(c, name, cfg)
	if cfg.DNS != nil {
		steps = append(steps, gcpcloud.RecordStep(c, name, *cfg.DNS, gatewayAddress(gcpConnect(c, name), name, addressIP)))
	}
	return steps
}
