package manifests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
)

// Every alert's runbook_url must land on a section of docs/runbooks.md.
func TestEveryAlertHasARunbookSection(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "runbooks.md"))
	if err != nil {
		t.Fatal(err)
	}
	opts := NewBuildOptions(&v1alpha1.MetricsCluster{Spec: v1alpha1.MetricsClusterSpec{Topology: v1alpha1.TopologySingle}}, "gateway:test", true)
	opts.ClusterName, opts.Namespace = "metrics", "ns"
	rules := BuildPrometheusRule(opts).Spec.Groups[0].Rules
	if len(rules) == 0 {
		t.Fatal("no alerts")
	}
	for _, rule := range rules {
		if !strings.Contains(string(doc), "\n## "+rule.Alert+"\n") {
			t.Errorf("docs/runbooks.md has no section \"## %s\"", rule.Alert)
		}
		if rule.Annotations["runbook_url"] != RunbookURL(rule.Alert) {
			t.Errorf("alert %s links to %q", rule.Alert, rule.Annotations["runbook_url"])
		}
	}
}
