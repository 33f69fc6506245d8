package installer

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"text/tabwriter"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/spf13/cobra"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
)

func newCreateCommand() *cobra.Command {
	create := &cobra.Command{Use: "create", Short: "Create an Opstrace cluster"}
	var extraImages []string
	local := &cobra.Command{
		Use:   "local NAME",
		Short: "Run the whole distribution on this machine: a real Kubernetes control plane, no cloud and no Docker",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return createLocal(cmd.Context(), args[0], extraImages, cmd.OutOrStdout())
		},
	}
	local.Flags().StringArrayVar(&extraImages, "image", nil,
		"Also run pods of image REPO[:TAG] as the host binary PATH (REPO[:TAG]=PATH, repeatable), to try your own programs.")
	create.AddCommand(local)
	return create
}

func newDestroyCommand() *cobra.Command {
	destroy := &cobra.Command{Use: "destroy", Short: "Remove an Opstrace cluster and everything it made"}
	var yes bool
	local := &cobra.Command{
		Use:   "local NAME",
		Short: "Stop every process of a local cluster and remove its state, stored metrics included",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := openLocalCluster(args[0])
			if err != nil {
				return err
			}
			if !c.exists() {
				return fmt.Errorf("there is no local cluster %s (in %s)", c.name, filepath.Dir(c.dir))
			}
			if !yes {
				return fmt.Errorf("this deletes local cluster %s and all its data in %s; add --yes to go ahead", c.name, c.dir)
			}
			if err := c.destroy(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "local cluster %s destroyed\n", c.name)
			return nil
		},
	}
	local.Flags().BoolVar(&yes, "yes", false, "Do not ask; delete the cluster and its data.")
	destroy.AddCommand(local)
	return destroy
}

func newStatusCommand() *cobra.Command {
	status := &cobra.Command{Use: "status", Short: "Show the health of an Opstrace cluster"}
	status.AddCommand(&cobra.Command{
		Use:   "local NAME",
		Short: "Show each component of a local cluster; exit 0 only when all are healthy",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := openLocalCluster(args[0])
			if err != nil {
				return err
			}
			healthy, err := c.status(cmd, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			if !healthy {
				return errors.New("local cluster " + c.name + " is not healthy")
			}
			return nil
		},
	})
	return status
}

func newListCommand() *cobra.Command {
	list := &cobra.Command{Use: "list", Short: "List Opstrace clusters"}
	list.AddCommand(&cobra.Command{
		Use:   "local",
		Short: "List the local clusters of this machine",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			home, err := opstraceHome()
			if err != nil {
				return err
			}
			entries, err := os.ReadDir(filepath.Join(home, "clusters"))
			if err != nil && !os.IsNotExist(err) {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tSTATE\tGATEWAY")
			for _, e := range entries {
				c := localCluster{name: e.Name(), dir: filepath.Join(home, "clusters", e.Name())}
				state, gateway := "stopped", "-"
				if c.supervisorPID() != 0 {
					state = "running"
				}
				if p, err := c.readPorts(); err == nil {
					gateway = c.GatewayURL(p)
				}
				fmt.Fprintf(w, "%s\t%s\t%s\n", c.name, state, gateway)
			}
			return w.Flush()
		},
	})
	return list
}

func newTenantCommand() *cobra.Command {
	tenant := &cobra.Command{Use: "tenant", Short: "Work with the tenants of a cluster"}
	token := &cobra.Command{Use: "token", Short: "Print a tenant's API token"}
	var output string
	local := &cobra.Command{
		Use:   "local NAME TENANT",
		Short: "Print the token of a tenant of a local cluster, or write it to a file readable only by you",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := openLocalCluster(args[0])
			if err != nil {
				return err
			}
			kube, err := c.client()
			if err != nil {
				return err
			}
			value, err := c.token(cmd.Context(), kube, args[1])
			if err != nil {
				return err
			}
			if output != "" {
				return writeSecretFile(output, []byte(value+"\n"))
			}
			fmt.Fprintln(cmd.OutOrStdout(), value)
			return nil
		},
	}
	local.Flags().StringVarP(&output, "output", "o", "", "Write the token to this file, with mode 0600, instead of printing it.")
	token.AddCommand(local)
	tenant.AddCommand(token)
	return tenant
}

func newUpgradeCommand() *cobra.Command {
	upgradeCmd := &cobra.Command{Use: "upgrade", Short: "Upgrade a cluster to this CLI's version"}
	upgradeCmd.AddCommand(&cobra.Command{
		Use:   "local NAME",
		Short: "Upgrade the controller and CRDs of a local cluster, wait for the rollout, then verify it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return upgradeLocal(cmd.Context(), args[0], cmd.OutOrStdout())
		},
	})
	return upgradeCmd
}

func newVerifyCommand() *cobra.Command {
	verify := &cobra.Command{Use: "verify", Short: "Write a canary sample through the gateway and read it back"}
	var tenant string
	local := &cobra.Command{
		Use:   "local NAME",
		Short: "Write and read back a unique series through the gateway of a local cluster; exit non-zero on failure",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return verifyLocal(cmd.Context(), args[0], tenant, cmd.OutOrStdout())
		},
	}
	local.Flags().StringVar(&tenant, "tenant", v1alpha1.SystemTenant, "Tenant to write and read as.")
	verify.AddCommand(local)
	return verify
}

// newLocalCommand holds what `create local` starts in the background; users do not run it.
func newLocalCommand() *cobra.Command {
	local := &cobra.Command{Use: "local", Hidden: true}
	var extraImages []string
	run := &cobra.Command{
		Use:  "run NAME",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSupervisor(cmd.Context(), args[0], extraImages, cmd.OutOrStdout())
		},
	}
	run.Flags().StringArrayVar(&extraImages, "image", nil, "Extra REPO[:TAG]=PATH images for the node agent.")
	local.AddCommand(run)
	return local
}

// status prints the supervisor, the nodes, the workloads and the MetricsCluster, and says whether all are
// healthy.
func (c localCluster) status(cmd *cobra.Command, out io.Writer) (bool, error) {
	if !c.exists() {
		return false, fmt.Errorf("there is no local cluster %s", c.name)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	defer w.Flush()
	fmt.Fprintln(w, "COMPONENT\tHEALTHY\tDETAIL")
	pid := c.supervisorPID()
	fmt.Fprintf(w, "supervisor\t%t\tpid %d\n", pid != 0, pid)
	if pid == 0 {
		return false, nil
	}
	kube, err := c.client()
	if err != nil {
		return false, err
	}
	ctx := cmd.Context()
	healthy := true
	var deployments appsv1.DeploymentList
	var statefulSets appsv1.StatefulSetList
	if err := kube.List(ctx, &deployments); err != nil {
		fmt.Fprintf(w, "kube-apiserver\tfalse\t%v\n", err)
		return false, nil
	}
	fmt.Fprintln(w, "kube-apiserver\ttrue\t")
	if err := kube.List(ctx, &statefulSets); err != nil {
		return false, err
	}
	type row struct {
		name  string
		ready bool
		msg   string
	}
	var rows []row
	workload := func(obj metav1.Object, replicas *int32, ready int32) row {
		want := ptr.Deref(replicas, 1)
		return row{obj.GetNamespace() + "/" + obj.GetName(), ready >= want, fmt.Sprintf("%d/%d ready", ready, want)}
	}
	for _, d := range deployments.Items {
		rows = append(rows, workload(&d, d.Spec.Replicas, d.Status.ReadyReplicas))
	}
	for _, s := range statefulSets.Items {
		rows = append(rows, workload(&s, s.Spec.Replicas, s.Status.ReadyReplicas))
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].name < rows[j].name })
	for _, r := range rows {
		healthy = healthy && r.ready
		fmt.Fprintf(w, "%s\t%t\t%s\n", r.name, r.ready, r.msg)
	}
	var mc v1alpha1.MetricsCluster
	if err := kube.Get(ctx, client.ObjectKey{Namespace: LocalNamespace, Name: c.name}, &mc); err != nil {
		fmt.Fprintf(w, "metricscluster/%s\tfalse\t%v\n", c.name, err)
		return false, nil
	}
	ready := meta.FindStatusCondition(mc.Status.Conditions, v1alpha1.ConditionReady)
	ok := ready != nil && ready.Status == metav1.ConditionTrue
	msg := "no status yet"
	if ready != nil {
		msg = ready.Message + " (since " + ready.LastTransitionTime.Format(time.RFC3339) + ")"
	}
	fmt.Fprintf(w, "metricscluster/%s\t%t\t%s\n", c.name, ok, msg)
	return healthy && ok, nil
}

// writeSecretFile writes a token so that only its owner can read it, also when the file already existed
// with wider permissions.
func writeSecretFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
