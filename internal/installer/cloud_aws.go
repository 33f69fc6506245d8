package installer

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/installer/cloud"
	awscloud "github.com/opstrace/opstrace/internal/installer/cloud/aws"
	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

// awsClientsFunc builds the AWS clients; tests replace it with fakes.
var awsClientsFunc = func(ctx context.Context, region string) (*awscloud.Clients, error) {
	c, _, err := awscloud.NewClients(ctx, region)
	return c, err
}

// addCloudCommands adds the aws subcommands to create, destroy, list, status, upgrade and verify, and kube-token.
func addCloudCommands(root *cobra.Command) {
	root.AddCommand(newKubeTokenCommand())
	for _, c := range root.Commands() {
		switch c.Name() {
		case "create":
			c.AddCommand(newCreateAWSCommand())
		case "destroy":
			c.AddCommand(newDestroyAWSCommand())
		case "list":
			c.AddCommand(newListAWSCommand())
		case "status":
			c.AddCommand(newStatusAWSCommand())
		case "upgrade":
			c.AddCommand(newUpgradeCloudCommand(config.ProviderAWS))
		case "verify":
			c.AddCommand(newVerifyCloudCommand(config.ProviderAWS))
		}
	}
}

// readConfig reads and parses the config file ("-" for stdin).
func readConfig(cmd *cobra.Command, path, provider string) (config.Config, error) {
	var data []byte
	var err error
	switch path {
	case "":
		return config.Config{}, fmt.Errorf("no config file: pass -c FILE (or -c - for stdin); an empty file takes every default")
	case "-":
		data, err = io.ReadAll(cmd.InOrStdin())
	default:
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return config.Config{}, fmt.Errorf("read config: %w", err)
	}
	return config.Parse(data, provider)
}

// confirm asks a yes/no question on the command's input.
func confirm(cmd *cobra.Command, question string) bool {
	fmt.Fprintf(cmd.OutOrStdout(), "%s [y/N] ", question)
	line, _ := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
	answer := strings.ToLower(strings.TrimSpace(line))
	return answer == "y" || answer == "yes"
}

// progressPrinter prints every state change of a run with the step's elapsed time.
func progressPrinter(out io.Writer) func(plan.Event) {
	return func(e plan.Event) {
		line := fmt.Sprintf("%-24s %-10s", e.Step, e.State)
		switch e.State {
		case plan.Applying:
			line += " " + e.Action.String()
		case plan.Retrying:
			line += fmt.Sprintf(" in %s (attempt %d): %v", e.Delay.Round(time.Second), e.Attempt, e.Err)
		case plan.Done, plan.Failed:
			line += fmt.Sprintf(" %s after %s", e.Action, e.Elapsed.Round(time.Second))
			if e.Err != nil {
				line += ": " + e.Err.Error()
			}
		case plan.Observing:
			if e.Attempt == 1 {
				return
			}
		}
		fmt.Fprintln(out, line)
	}
}

func awsKubeconfigPath(name string) (string, error) {
	home, err := opstraceHome()
	if err != nil {
		return "", err
	}
	return filepath.Join(home, "clusters", "aws-"+name, "kubeconfig"), nil
}

// awsConnect reaches the EKS cluster's API server with a token made in-process from the AWS credentials
// (awscloud.EKSToken): the installer itself needs no aws CLI. Tokens last 15 minutes, so every connection
// makes a new one.
func awsConnect(c *awscloud.Clients, name string) func(context.Context) (*rest.Config, error) {
	return func(ctx context.Context) (*rest.Config, error) {
		access, err := awscloud.Access(ctx, c, name)
		if err != nil {
			return nil, err
		}
		token, err := awscloud.EKSToken(ctx, c.STS, name)
		if err != nil {
			return nil, err
		}
		return &rest.Config{Host: access.Endpoint, BearerToken: token, Timeout: 30 * time.Second,
			TLSClientConfig: rest.TLSClientConfig{CAData: access.CA}}, nil
	}
}

// writeAWSKubeconfig writes the user's kubeconfig of the EKS cluster. kubectl gets its tokens from this
// binary (`opstrace kube-token aws NAME`), which signs them with the AWS credentials as `aws eks get-token`
// does, so no aws CLI is needed; the kubeconfig names the binary by its absolute path.
func writeAWSKubeconfig(ctx context.Context, c *awscloud.Clients, name string) (string, error) {
	access, err := awscloud.Access(ctx, c, name)
	if err != nil {
		return "", err
	}
	path, err := awsKubeconfigPath(name)
	if err != nil {
		return "", err
	}
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find this binary for the kubeconfig's token command: %w", err)
	}
	return path, writeExecKubeconfig(path, name, access.Endpoint, access.CA, self,
		[]string{"kube-token", "aws", name, "--region", c.Region})
}

// newKubeTokenCommand prints a Kubernetes ExecCredential with a bearer token for a cloud cluster's API
// server: the exec credential plugin of the kubeconfig that create writes.
func newKubeTokenCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kube-token",
		Short: "Print a token for a cloud cluster's Kubernetes API (the kubeconfig's credential plugin)",
	}
	var region string
	aws := &cobra.Command{
		Use:   "aws NAME",
		Short: "Print an EKS token signed with your AWS credentials, as `aws eks get-token` does",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := cloud.ValidateName(args[0]); err != nil {
				return err
			}
			c, err := awsClientsFunc(cmd.Context(), region)
			if err != nil {
				return err
			}
			token, err := awscloud.EKSToken(cmd.Context(), c.STS, args[0])
			if err != nil {
				return err
			}
			// EKS accepts a token for 15 minutes; kubectl asks again a minute before.
			expires := time.Now().Add(awscloud.EKSTokenLifetime - time.Minute).UTC()
			return json.NewEncoder(cmd.OutOrStdout()).Encode(map[string]any{
				"kind": "ExecCredential", "apiVersion": "client.authentication.k8s.io/v1beta1", "spec": map[string]any{},
				"status": map[string]any{"token": token, "expirationTimestamp": expires.Format(time.RFC3339)},
			})
		},
	}
	aws.Flags().StringVar(&region, "region", config.DefaultAWSRegion, "AWS region of the cluster")
	cmd.AddCommand(aws)
	return cmd
}

// awsSteps are the cloud steps and the Kubernetes step of an AWS install, and with dns cert-manager and the
// gateway's DNS record (awsCertificateSteps). out receives the Kubernetes steps' progress.
func awsSteps(c *awscloud.Clients, name string, cfg config.Config, out io.Writer) []plan.Step {
	steps := append(awscloud.Steps(c, name, cfg), &kubeStep{
		deps: append([]string{"aws/node-group", "aws/cortex-role", "aws/loki-role", "aws/eks-access", "aws/addon-" + awscloud.EBSCSIAddon},
			certManagerDeps(cfg)...),
		connect: awsConnect(c, name),
		workload: func(ctx context.Context) (cloudWorkload, error) {
			cortex, loki, err := awscloud.WorkloadRoles(ctx, c, name)
			if err != nil {
				return cloudWorkload{}, err
			}
			return cloudWorkload{Name: name, Config: cfg,
				Storage: v1alpha1.StorageSpec{Type: v1alpha1.StorageS3,
					S3: &v1alpha1.S3Storage{Bucket: cloud.BucketName(name, cloud.BucketMetrics), Region: c.Region}},
				LogsBucket:      cloud.BucketName(name, cloud.BucketLogs),
				ServiceAccounts: serviceAccountsFor(awsRoleAnnotation, cortex, loki),
				StorageClass:    awsStorageClass(),
			}, nil
		},
		out: out,
	})
	return append(steps, awsCertificateSteps(c, name, cfg, out)...)
}

// awsStorageClass is the default class of an AWS install: encrypted gp3 volumes from the EBS CSI driver,
// made in the zone of the pod that first uses them.
func awsStorageClass() *storagev1.StorageClass {
	return &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "opstrace-gp3"},
		Provisioner:          "ebs.csi.aws.com",
		Parameters:           map[string]string{"type": "gp3", "encrypted": "true"},
		VolumeBindingMode:    ptr.To(storagev1.VolumeBindingWaitForFirstConsumer),
		AllowVolumeExpansion: ptr.To(true),
		ReclaimPolicy:        ptr.To(corev1.PersistentVolumeReclaimDelete),
	}
}

// awsRoleAnnotation on a ServiceAccount names the IAM role its pods assume (IRSA).
const awsRoleAnnotation = "eks.amazonaws.com/role-arn"

func newCreateAWSCommand() *cobra.Command {
	var file string
	var yes, dryRun bool
	cmd := &cobra.Command{
		Use:   "aws NAME",
		Short: "Create an Opstrace cluster in your AWS account: buckets, network, IAM roles, EKS, the controller",
		Long: "Plans first (what is created, in which order, after what), asks, then creates the resources in parallel.\n" +
			"Running it again after an interruption resumes where it stopped. Credentials: the default AWS chain\n" +
			"(environment, ~/.aws with AWS_PROFILE, SSO). No aws CLI is needed, for the kubeconfig either.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := cloud.ValidateName(name); err != nil {
				return err
			}
			cfg, err := readConfig(cmd, file, config.ProviderAWS)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			c, err := awsClientsFunc(ctx, cfg.AWS.Region)
			if err != nil {
				return err
			}
			if err := runCreate(cmd, awsSteps(c, name, cfg, cmd.OutOrStdout()), fmt.Sprintf("AWS cluster %s in %s", name, cfg.AWS.Region), yes, dryRun); err != nil || dryRun {
				return err
			}
			path, err := writeAWSKubeconfig(ctx, c, name)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Kubeconfig: %s (kubectl gets its tokens from this binary)\nStatus:     %s status aws %s --region %s\n",
				path, selfCommand(), name, cfg.AWS.Region)
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "config", "c", "", "Cluster config file (YAML); - reads stdin")
	cmd.Flags().BoolVar(&yes, "yes", false, "Do not ask for confirmation")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "Print the plan and exit")
	return cmd
}

// runCreate previews, asks, and runs the steps with progress.
func runCreate(cmd *cobra.Command, steps []plan.Step, what string, yes, dryRun bool) error {
	ctx, out := cmd.Context(), cmd.OutOrStdout()
	preview, err := plan.Preview(ctx, steps)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s\n%s\n", what, plan.Describe(preview))
	if dryRun {
		return nil
	}
	if !yes && !confirm(cmd, "Create these resources?") {
		return fmt.Errorf("not confirmed; nothing was created")
	}
	rep, err := plan.Run(ctx, steps, plan.Options{Progress: progressPrinter(out)})
	if err != nil {
		return fmt.Errorf("%w\nrun the same command again to resume", err)
	}
	fmt.Fprintf(out, "\n%s is ready (%s)\n", what, rep.Elapsed.Round(time.Second))
	return nil
}

func newDestroyAWSCommand() *cobra.Command {
	var region string
	var yes, dryRun bool
	cmd := &cobra.Command{
		Use:   "aws NAME",
		Short: "Delete every AWS resource of an Opstrace cluster, data included, then sweep anything still tagged for it",
		Long: "Deletes the MetricsClusters and LoadBalancer Services in the cluster first and waits for their load\n" +
			"balancers to go (AWS makes them untagged; they would keep the VPC), then the AWS resources in reverse\n" +
			"order, then sweeps anything still tagged " + cloud.OwnerTag + "=NAME. The config stored in the cluster\n" +
			"says which zones to look in; when the cluster is unreachable the defaults do, and the sweep finds the rest.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := cloud.ValidateName(name); err != nil {
				return err
			}
			ctx, out := cmd.Context(), cmd.OutOrStdout()
			c, err := awsClientsFunc(ctx, region)
			if err != nil {
				return err
			}
			defaults := config.Defaults(config.ProviderAWS)
			defaults.AWS.Region = region
			cfg, source, _ := clusterConfig(ctx, nil, awsConnect(c, name), config.ProviderAWS, defaults)
			fmt.Fprintf(out, "Config: %s\n", source)
			rev, err := plan.Reverse(awsSteps(c, name, cfg, out))
			if err != nil {
				return err
			}
			preview, err := plan.Preview(ctx, rev)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "Destroy AWS cluster %s in %s\n%s\n", name, region, plan.Describe(preview))
			if dryRun {
				rep, err := awscloud.Sweep(ctx, c, name, true)
				fmt.Fprint(out, strings.ReplaceAll(rep.String(), "sweep: removed", "sweep: would remove"))
				return err
			}
			if !yes && !confirm(cmd, "Delete these resources and all stored metrics and logs?") {
				return fmt.Errorf("not confirmed; nothing was deleted")
			}
			_, runErr := plan.Run(ctx, rev, plan.Options{Progress: progressPrinter(out)})
			rep, sweepErr := awscloud.Sweep(ctx, c, name, false)
			fmt.Fprint(out, rep.String())
			// What the plan skipped (an unreachable cluster), said again after the run's output.
			for _, p := range preview {
				for _, d := range p.Change.Diff {
					if strings.HasPrefix(d, "SKIPPED: ") {
						fmt.Fprintf(out, "%s: %s\n", p.Name, d)
					}
				}
			}
			if runErr != nil || sweepErr != nil || len(rep.Left) > 0 {
				return fmt.Errorf("destroy of %s is incomplete; run it again: %w", name, joinErrs(runErr, sweepErr))
			}
			fmt.Fprintf(out, "AWS cluster %s destroyed\n", name)
			return nil
		},
	}
	cmd.Flags().StringVar(&region, "region", config.DefaultAWSRegion, "AWS region of the cluster")
	cmd.Flags().BoolVar(&yes, "yes", false, "Do not ask for confirmation")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "List what would be deleted and exit")
	return cmd
}

func joinErrs(errs ...error) error {
	var msgs []string
	for _, e := range errs {
		if e != nil {
			msgs = append(msgs, e.Error())
		}
	}
	if len(msgs) == 0 {
		return fmt.Errorf("resources left (above)")
	}
	return fmt.Errorf("%s", strings.Join(msgs, "; "))
}

func newListAWSCommand() *cobra.Command {
	var region string
	cmd := &cobra.Command{
		Use:   "aws",
		Short: "List the Opstrace clusters of an AWS region, found by their tag " + cloud.OwnerTag,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := awsClientsFunc(cmd.Context(), region)
			if err != nil {
				return err
			}
			found, err := awscloud.Find(cmd.Context(), c, "")
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tRESOURCES\tEKS")
			for _, s := range cloud.Summarize(found) {
				eks := "-"
				for _, r := range s.Resources {
					if r.Kind == "eks:cluster" {
						eks = r.ID
					}
				}
				fmt.Fprintf(w, "%s\t%d\t%s\n", s.Name, len(s.Resources), eks)
			}
			if ferr := w.Flush(); err == nil {
				err = ferr
			}
			return err
		},
	}
	cmd.Flags().StringVar(&region, "region", config.DefaultAWSRegion, "AWS region")
	return cmd
}

func newStatusAWSCommand() *cobra.Command {
	var region, file string
	cmd := &cobra.Command{
		Use:   "aws NAME",
		Short: "Show each AWS resource of a cluster, the controller, every MetricsCluster condition, and probe the gateway",
		Long: "Compares the AWS resources with the config stored in the cluster (or -c FILE; the defaults when the\n" +
			"cluster is unreachable), then reports the controller's Helm release, every condition of the\n" +
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
				cfg, err := readConfig(cmd, file, config.ProviderAWS)
				if err != nil {
					return err
				}
				region = cfg.AWS.Region
				fromFile = func() (config.Config, error) { return cfg, nil }
			}
			c, err := awsClientsFunc(ctx, region)
			if err != nil {
				return err
			}
			connect := awsConnect(c, name)
			defaults := config.Defaults(config.ProviderAWS)
			defaults.AWS.Region = region
			cfg, source, err := clusterConfig(ctx, fromFile, connect, config.ProviderAWS, defaults)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "AWS cluster %s in %s; config: %s\n\n", name, region, source)
			return printCloudStatus(ctx, out, "aws", name, awsStatusSteps(c, name, cfg), connect)
		},
	}
	cmd.Flags().StringVar(&region, "region", config.DefaultAWSRegion, "AWS region of the cluster")
	cmd.Flags().StringVarP(&file, "config", "c", "", "Compare with this config file instead of the one stored in the cluster")
	return cmd
}
