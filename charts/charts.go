// Package charts embeds the Helm chart of the controller, so the opstrace CLI installs exactly the chart it
// was built with, from anywhere.
package charts

import "embed"

// Opstrace holds charts/opstrace, with its CRDs.
//
//go:embed all:opstrace
var Opstrace embed.FS
