package installer

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

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

// addCloudCommands adds the aws subcommands to create, destroy, list and status.
func addCloudCommands(root *cobra.Command) {
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

// awsSteps are the cloud steps and the Kubernetes step of an AWS install.
func awsSteps(c *awscloud.Clients, name string, cfg config.Config) []plan.Step {
	steps := awscloud.Steps(c, name, cfg)
	var access awscloud.KubeAccess
	read := func(ctx context.Context) error {
		var err error
		access, err = awscloud.Access(ctx, c, name)
		return err
	}
	return append(steps, &kubeStep{
		deps: []string{"aws/node-group", "aws/cortex-role", "aws/loki-role"},
		kubeconfig: func(ctx context.Context) (string, error) {
			if err := read(ctx); err != nil {
				return "", err
			}
			path, err := awsKubeconfigPath(name)
			if err != nil {
				return "", err
			}
			return path, writeExecKubeconfig(path, name, access.Endpoint, access.CA, "aws",
				[]string{"eks", "get-token", "--cluster-name", name, "--region", c.Region, "--output", "json"})
		},
		workload: func(ctx context.Context) (cloudWorkload, error) {
			if err := read(ctx); err != nil {
				return cloudWorkload{}, err
			}
			return cloudWorkload{Name: name, Config: cfg,
				Storage: v1alpha1.StorageSpec{Type: v1alpha1.StorageS3,
					S3: &v1alpha1.S3Storage{Bucket: cloud.BucketName(name, cloud.BucketMetrics), Region: c.Region}},
				ServiceAccountAnnotations: map[string]string{"eks.amazonaws.com/role-arn": access.RoleARNs[awscloud.CortexRoleName(name)]},
			}, nil
		},
	})
}

func newCreateAWSCommand() *cobra.Command {
	var file string
	var yes, dryRun bool
	cmd := &cobra.Command{
		Use:   "aws NAME",
		Short: "Create an Opstrace cluster in your AWS account: buckets, network, IAM roles, EKS, the controller",
		Long: "Plans first (what is created, in which order, after what), asks, then creates the resources in parallel.\n" +
			"Running it again after an interruption resumes where it stopped. Credentials: the default AWS chain\n" +
			"(environment, ~/.aws with AWS_PROFILE, SSO). The in-cluster part needs the aws CLI for EKS tokens.",
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
			return runCreate(cmd, awsSteps(c, name, cfg), fmt.Sprintf("AWS cluster %s in %s", name, cfg.AWS.Region), yes, dryRun)
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
		Args:  cobra.ExactArgs(1),
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
			cfg := config.Defaults(config.ProviderAWS)
			cfg.AWS.Region = region
			rev, err := plan.Reverse(awscloud.Steps(c, name, cfg))
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
		Short: "Show each AWS resource of a cluster: present and as configured, or what a create would change",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			cfg := config.Defaults(config.ProviderAWS)
			cfg.AWS.Region = region
			if file != "" {
				var err error
				if cfg, err = readConfig(cmd, file, config.ProviderAWS); err != nil {
					return err
				}
			}
			c, err := awsClientsFunc(cmd.Context(), cfg.AWS.Region)
			if err != nil {
				return err
			}
			preview, err := plan.Preview(cmd.Context(), awscloud.Steps(c, name, cfg))
			if err != nil {
				return err
			}
			healthy := true
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "RESOURCE\tSTATE")
			for _, p := range preview {
				state := "ok"
				if p.Change.Action != plan.NoOp {
					healthy = false
					state = "needs " + p.Change.Action.String() + ": " + strings.Join(p.Change.Diff, "; ")
				}
				fmt.Fprintf(w, "%s\t%s\n", p.Name, state)
			}
			if err := w.Flush(); err != nil {
				return err
			}
			if !healthy {
				return fmt.Errorf("AWS cluster %s is incomplete: run create aws %s again", name, name)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&region, "region", config.DefaultAWSRegion, "AWS region of the cluster")
	cmd.Flags().StringVarP(&file, "config", "c", "", "The cluster's config file, when it differs from the defaults")
	return cmd
}
