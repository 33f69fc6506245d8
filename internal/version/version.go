// Package version says which release of the distribution a binary belongs to. The release process stamps it
// with -ldflags "-X github.com/opstrace/opstrace/internal/version.Version=v0.1.0".
package version

// Version of this build; "dev" for a build from a work tree.
var Version = "dev"
