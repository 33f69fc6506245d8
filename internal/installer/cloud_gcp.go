package installer

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/installer/cloud"
	gcpcloud "github.com/opstrace/opstrace/internal/installer/cloud/gcp"
	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

// gcpClientsFunc builds the Google Cloud clients; tests replace it with fakes.
var gcpClientsFunc = func(ctx context.Context, project, region string) (*gcpcloud.Clients, error) {
	return gcpcloud.NewClients(ctx, project, region)
}

// gcpServiceAccountAnnotation on a Kubernetes ServiceAccount names the Google service account its pods act
// as (GKE workload identity).
const gcpServiceAccountAnnotation = "iam.gke.io/gcp-service-account"

// addGCPCommands adds the gcp subcommands to create, destroy, list, status, upgrade and verify.
func addGCPCommands(root *cobra.Command) {
	for _, c := range root.Commands() {
		switch c.Name() {
		case "create":
			c.AddCommand(newCreateGCPCommand())
		case "destroy":
			c.AddCommand(newDestroyGCPCommand())
		case "list":
			c.AddCommand(newListGCPCommand())
		case "status":
			c.AddCommand(newStatusGCPCommand())
		case "upgrade":
			c.AddCommand(newUpgradeCloudCommand(config.ProviderGCP))
		case "verify":
			c.AddCommand(newVerifyCloudCommand(config.ProviderGCP))
		}
	}
}

func gcpKubeconfigPath(name string) (string, error) {
	home, err := opstraceHome()
	if err != nil {
		return "", err
	}
	return filepath.Join(home, "clusters", "gcp-"+name, "kubeconfig"), nil
}

// gcpConnect reaches the GKE cluster's API server with an OAuth2 access token of the installer's own
// Google credentials (GKE accepts them as bearer tokens and authorizes them by IAM): the installer needs
// neither gcloud nor gke-gcloud-auth-plugin. Tokens last an hour; every connection asks for a current one.
func gcpConnect(c *gcpcloud.Clients, name string) func(context.Context) (*rest.Config, error) {
	return func(ctx context.Context) (*rest.Config, error) {
		access, err := gcpcloud.Access(ctx, c, name)
		if err != nil {
			return nil, err
		}
		token, err := c.Token(ctx)
		if err != nil {
			return nil, err
		}
		return &rest.Config{Host: access.Endpoint, BearerToken: token, Timeout: 30 * time.Second,
			TLSClientConfig: rest.TLSClientConfig{CAData: access.CA}}, nil
	}
}

// writeGCPKubeconfig writes the user's kubeconfig of the GKE cluster. kubectl gets its tokens from
// gke-gcloud-auth-plugin, as with `gcloud container clusters get-credentials`: the file holds no secret,
// and the plugin refreshes tokens, where a token written into the file would expire within the hour.
func writeGCPKubeconfig(ctx context.Context, c *gcpcloud.Clients, name string) (string, error) {
	access, err := gcpcloud.Access(ctx, c, name)
	if err != nil {
		return "", err
	}
	path, err := gcpKubeconfigPath(name)
	if err != nil {
		return "", err
	}
	return path, writeExecKubeconfig(path, name, access.Endpoint, access.CA, "gke-gcloud-auth-plugin", nil)
}

// gcpWorkload is what the in-cluster objects need from the GCP steps: the buckets and each workload's
// Google service account. Both are named deterministically, so nothing is looked up.
func gcpWorkload(c *gcpcloud.Clients, name string, cfg config.Config) cloudWorkload {
	return cloudWorkload{Name: name, Config: cfg,
		Storage:    v1alpha1.StorageSpec{Type: v1alpha1.StorageGCS, GCS: &v1alpha1.GCSStorage{Bucket: cloud.BucketName(name, cloud.BucketMetrics)}},
		LogsBucket: cloud.BucketName(name, cloud.BucketLogs),
		ServiceAccounts: serviceAccountsFor(gcpServiceAccountAnnotation,
			gcpcloud.ServiceAccountEmail(c.Project, name, gcpcloud.RoleCortex),
			gcpcloud.ServiceAccountEmail(c.Project, name, gcpcloud.RoleLoki)),
	}
}

// gcpSteps are the cloud steps and the Kubernetes step of a GCP install, and with dns cert-manager and the
// gateway's DNS record (gcpCertificateSteps). out receives the Kubernetes steps' progress.
func gcpSteps(c *gcpcloud.Clients, name string, cfg config.Config, out io.Writer) []plan.Step {
	steps := append(gcpcloud.Steps(c, name, cfg), &kubeStep{
		deps:     append([]string{"gcp/node-pool", "gcp/cortex-identity", "gcp/loki-identity"}, certManagerDeps(cfg)...),
		connect:  gcpConnect(c, name),
		workload: func(context.Context) (cloudWorkload, error) { return gcpWorkload(c, name, cfg), nil },
		out:      out,
	})
	return append(steps, gcpCertificateSteps(c, name, cfg, out)...)
}

func newCreateGCPCommand() *cobra.Command {
	var file string
	var yes, dryRun bool
	cmd := &cobra.Command{
		Use:   "gcp NAME",
		Short: "Create an Opstrace cluster in your Google Cloud project: buckets, network, NAT, GKE, service accounts, the controller",
		Long: "Plans first (what is created, in which order, after what), asks, then creates the resources in parallel.\n" +
			"Running it again after an interruption resumes where it stopped. Credentials: Application Default\n" +
			"Credentials (GOOGLE_APPLICATION_CREDENTIALS, or `gcloud auth application-default login`). The config\n" +
			"file's gcp.project is required. The kubeconfig it writes uses gke-gcloud-auth-plugin.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := cloud.ValidateName(name); err != nil {
				return err
			}
			cfg, err := readConfig(cmd, file, config.ProviderGCP)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			c, err := gcpClientsFunc(ctx, cfg.GCP.Project, cfg.GCP.Region)
			if err != nil {
				return err
			}
			what := fmt.Sprintf("GCP cluster %s in project %s, %s", name, cfg.GCP.Project, cfg.GCP.Region)
			if err := runCreate(cmd, gcpSteps(c, name, cfg, cmd.OutOrStdout()), what, yes, dryRun); err != nil || dryRun {
				return err
			}
			path, err := writeGCPKubeconfig(ctx, c, name)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Kubeconfig: %s (kubectl gets tokens from gke-gcloud-auth-plugin)\nStatus:     %s status gcp %s --project %s --region %s\n",
				path, selfCommand(), name, cfg.GCP.Project, cfg.GCP.Region)
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "config", "c", "", "Cluster config file (YAML); - reads stdin")
	cmd.Flags().BoolVar(&yes, "yes", false, "Do not ask for confirmation")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "Print the plan and exit")
	return cmd
}

// projectFlags adds the --project (required) and --region flags of the commands that take no config file.
func projectFlags(cmd *cobra.Command, project, region *string) {
	cmd.Flags().StringVar(project, "project", "", "GCP project ID of the cluster (required)")
	cmd.Flags().StringVar(region, "region", config.DefaultGCPRegion, "GCP region of the cluster")
}

func requireProject(project, command string) error {
	if project == "" {
		return fmt.Errorf("--project is required: the GCP project ID the cluster is in, e.g. %s --project my-project-1", command)
	}
	return nil
}

func newDestroyGCPCommand() *cobra.Command {
	var project, region string
	var yes, dryRun bool
	cmd := &cobra.Command{
		Use:   "gcp NAME",
		Short: "Delete every Google Cloud resource of an Opstrace cluster, data included, then sweep anything still labelled for it",
		Long: "Deletes the MetricsClusters and LoadBalancer Services in the cluster first and waits for their load\n" +
			"balancers to go, then the Google Cloud resources in reverse order, then sweeps anything still labelled\n" +
			cloud.OwnerLabel + "=NAME (buckets, GKE clusters) or marked so in its description (network, subnet,\n" +
			"router, service accounts).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := cloud.ValidateName(name); err != nil {
				return err
			}
			if err := requireProject(project, "destroy gcp "+name); err != nil {
				return err
			}
			ctx, out := cmd.Context(), cmd.OutOrStdout()
			c, err := gcpClientsFunc(ctx, project, region)
			if err != nil {
				return err
			}
			defaults := gcpDefaults(project, region)
			cfg, source, _ := clusterConfig(ctx, nil, gcpConnect(c, name), config.ProviderGCP, defaults)
			fmt.Fprintf(out, "Config: %s\n", source)
			rev, err := plan.Reverse(gcpSteps(c, name, cfg, out))
			if err != nil {
				return err
			}
			preview, err := plan.Preview(ctx, rev)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "Destroy GCP cluster %s in project %s, %s\n%s\n", name, project, region, plan.Describe(preview))
			if dryRun {
				rep, err := gcpcloud.Sweep(ctx, c, name, true)
				fmt.Fprint(out, strings.ReplaceAll(rep.String(), "sweep: removed", "sweep: would remove"))
				return err
			}
			if !yes && !confirm(cmd, "Delete these resources and all stored metrics and logs?") {
				return fmt.Errorf("not confirmed; nothing was deleted")
			}
			_, runErr := plan.Run(ctx, rev, plan.Options{Progress: progressPrinter(out)})
			rep, sweepErr := gcpcloud.Sweep(ctx, c, name, false)
			fmt.Fprint(out, rep.String())
			if runErr != nil || sweepErr != nil || len(rep.Left) > 0 {
				return fmt.Errorf("destroy of %s is incomplete; run it again: %w", name, joinErrs(runErr, sweepErr))
			}
			fmt.Fprintf(out, "GCP cluster %s destroyed\n", name)
			return nil
		},
	}
	projectFlags(cmd, &project, &region)
	cmd.Flags().BoolVar(&yes, "yes", false, "Do not ask for confirmation")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "List what would be deleted and exit")
	return cmd
}

func gcpDefaults(project, region string) config.Config {
	cfg := config.Defaults(config.ProviderGCP)
	cfg.GCP.Project, cfg.GCP.Region = project, region
	return cfg
}

func newListGCPCommand() *cobra.Command {
	var project, region string
	cmd := &cobra.Command{
		Use:   "gcp",
		Short: "List the Opstrace clusters of a GCP project, found by their label " + cloud.OwnerLabel,
		Long: "GKE clusters and buckets are found in the whole project; networks and service accounts too; routers\n" +
			"and subnets in --region.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireProject(project, "list gcp"); err != nil {
				return err
			}
			c, err := gcpClientsFunc(cmd.Context(), project, region)
			if err != nil {
				return err
			}
			found, err := gcpcloud.Find(cmd.Context(), c, "")
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tRESOURCES\tGKE")
			for _, s := range cloud.Summarize(found) {
				gke := "-"
				for _, r := range s.Resources {
					if r.Kind == "gke:cluster" {
						gke = r.ID
					}
				}
				fmt.Fprintf(w, "%s\t%d\t%s\n", s.Name, len(s.Resources), gke)
			}
			if ferr := w.Flush(); err == nil {
				err = ferr
			}
			return err
		},
	}
	projectFlags(cmd, &project, &region)
	return cmd
}

func newStatusGCPCommand() *cobra.Command {
	var project, region, file string
	cmd := &cobra.Command{
		Use:   "gcp NAME",
		Short: "Show each Google Cloud resource of a cluster, the controller, every MetricsCluster condition, and probe the gateway",
		Long: "Compares the Google Cloud resources with the config stored in the cluster (or -c FILE; the defaults\n" +
			"when the cluster is unreachable), then reports the controller's Helm release, every condition of the\n" +
			"MetricsCluster, and the gateway's /-/ready over HTTPS, trusting only the cluster's CA.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := cloud.ValidateName(name); err != nil {
				return err
			}
			ctx, out := cmd.Context(), cmd.OutOrStdout()
			var fromFile func() (config.Config, error)
			if file != "" {
				cfg, err := readConfig(cmd, file, config.ProviderGCP)
				if err != nil {
					return err
				}
				project, region = cfg.GCP.Project, cfg.GCP.Region
				fromFile = func() (config.Config, error) { return cfg, nil }
			}
			if err := requireProject(project, "status gcp "+name); err != nil {
				return err
			}
			c, err := gcpClientsFunc(ctx, project, region)
			if err != nil {
				return err
			}
			connect := gcpConnect(c, name)
			cfg, source, err := clusterConfig(ctx, fromFile, connect, config.ProviderGCP, gcpDefaults(project, region))
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "GCP cluster %s in project %s, %s; config: %s\n\n", name, project, region, source)
			return printCloudStatus(ctx, out, "gcp", name, gcpStatusSteps(c, name, cfg), connect)
		},
	}
	projectFlags(cmd, &project, &region)
	cmd.Flags().StringVarP(&file, "config", "c", "", "Compare with this config file instead of the one stored in the cluster")
	return cmd
}
