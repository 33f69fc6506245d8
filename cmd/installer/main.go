// Command opstrace installs, upgrades and removes Opstrace clusters. Wiring only: the commands live in
// internal/installer.
package main

import (
	"fmt"
	"os"

	"github.com/opstrace/opstrace/internal/installer"
)

func main() {
	if err := installer.NewRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
