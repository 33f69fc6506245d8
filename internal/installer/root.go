// Package installer implements the opstrace CLI.
package installer

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/opstrace/opstrace/internal/version"
)

// NewRootCommand builds the opstrace command tree.
func NewRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "opstrace",
		Short:         "Run secure, multi-tenant Prometheus metrics and logs in your own cloud account",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newVersionCommand(), newCreateCommand(), newDestroyCommand(), newStatusCommand(),
		newListCommand(), newTenantCommand(), newUpgradeCommand(), newVerifyCommand(), newLocalCommand())
	addCloudCommands(root)
	addGCPCommands(root)
	return root
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of this CLI",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "opstrace %s\n", version.Version)
			return err
		},
	}
}
