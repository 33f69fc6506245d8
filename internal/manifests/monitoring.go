package manifests

import (
	"fmt"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
)

// RunbookURL is where the runbook of an alert lives.
func RunbookURL(alert string) string {
	return "https://github.com/opstrace/opstrace/blob/main/docs/runbooks.md#" + strings.ToLower(alert)
}

// BuildMonitoring are the prometheus-operator objects of a cluster: a ServiceMonitor per Cortex and Loki
// component (port http) and for the gateway (port http-metrics), and the PrometheusRule of BuildPrometheusRule. Build
// them only when the monitoring.coreos.com CRDs exist.
func BuildMonitoring(opts BuildOptions) []client.Object {
	var objects []client.Object
	for _, component := range cortexComponents(opts) {
		objects = append(objects, serviceMonitor(opts, component, PortHTTP))
	}
	objects = append(objects, lokiServiceMonitors(opts)...)
	objects = append(objects, serviceMonitor(opts, ComponentGateway, PortHTTPMetrics))
	objects = append(objects, BuildPrometheusRule(opts))
	return objects
}

// serviceMonitor scrapes /metrics on port of the ClusterIP Service of component; headless Services, which
// select the same pods, are left out so every pod is scraped once.
func serviceMonitor(opts BuildOptions, component, port string) *monitoringv1.ServiceMonitor {
	return &monitoringv1.ServiceMonitor{
		TypeMeta:   metav1.TypeMeta{APIVersion: monitoringv1.SchemeGroupVersion.String(), Kind: monitoringv1.ServiceMonitorsKind},
		ObjectMeta: objectMeta(opts, ComponentName(opts.ClusterName, component), component),
		Spec: monitoringv1.ServiceMonitorSpec{
			Selector: metav1.LabelSelector{
				MatchLabels: SelectorLabels(opts.ClusterName, component),
				MatchExpressions: []metav1.LabelSelectorRequirement{{
					Key: LabelHeadless, Operator: metav1.LabelSelectorOpDoesNotExist,
				}},
			},
			Endpoints: []monitoringv1.Endpoint{{Port: port, Path: "/metrics"}},
		},
	}
}

// alertRule is an alert with the annotations every alert carries.
func alertRule(name, expr, forDuration, severity, summary, description string) monitoringv1.Rule {
	return monitoringv1.Rule{
		Alert:  name,
		Expr:   intstr.FromString(expr),
		For:    ptr.To(monitoringv1.Duration(forDuration)),
		Labels: map[string]string{"severity": severity},
		Annotations: map[string]string{
			"summary":     summary,
			"description": description,
			"runbook_url": RunbookURL(name),
		},
	}
}

// BuildPrometheusRule holds the essential alerts of a cluster, each scoped to the cluster's namespace and
// Services (Prometheus' job label is the Service name).
func BuildPrometheusRule(opts BuildOptions) *monitoringv1.PrometheusRule {
	ns, cluster := opts.Namespace, opts.ClusterName
	// Every Cortex job of the cluster; the one that sees the ingester ring from outside (the distributor,
	// or the single process); the ingesters; the compactors.
	cortexJobs := fmt.Sprintf(`namespace=%q, job=~%q`, ns, cluster+"-("+strings.Join(cortexComponents(opts), "|")+")")
	ringJob, ingesterJob, compactorJob := ComponentDistributor, ComponentIngester, ComponentCompactor
	if opts.Topology == v1alpha1.TopologySingle {
		ringJob, ingesterJob, compactorJob = TargetAll, TargetAll, TargetAll
	}
	job := func(component string) string {
		return fmt.Sprintf(`namespace=%q, job=%q`, ns, ComponentName(cluster, component))
	}
	rules := []monitoringv1.Rule{
		alertRule("CortexIngesterUnhealthy",
			fmt.Sprintf(`min by (namespace, job) (cortex_ring_members{%s, name="ingester", state="Unhealthy"}) > 0`, job(ringJob)),
			"15m", "critical",
			"Cortex ingesters of {{ $labels.namespace }} are unhealthy.",
			"{{ $value }} ingesters of MetricsCluster "+cluster+" are unhealthy in the ring: writes may fail and recent samples may be missing from queries."),
		alertRule("CortexRequestErrors",
			fmt.Sprintf(`100 * sum by (namespace, job, route) (rate(cortex_request_duration_seconds_count{%s, status_code=~"5..", route!~"ready"}[5m]))
  / sum by (namespace, job, route) (rate(cortex_request_duration_seconds_count{%s, route!~"ready"}[5m])) > 1`, cortexJobs, cortexJobs),
			"15m", "critical",
			"Cortex {{ $labels.job }} route {{ $labels.route }} fails requests.",
			"{{ printf \"%.2f\" $value }}% of the requests to {{ $labels.job }} route {{ $labels.route }} end in a 5xx error."),
		alertRule("CortexIngesterReachingSeriesLimit",
			fmt.Sprintf(`(cortex_ingester_memory_series{%[1]s} / ignoring(limit) cortex_ingester_instance_limits{%[1]s, limit="max_series"})
  and ignoring(limit) (cortex_ingester_instance_limits{%[1]s, limit="max_series"} > 0) > 0.8`, job(ingesterJob)),
			"3h", "warning",
			"Cortex ingester {{ $labels.pod }} is reaching its series limit.",
			"Ingester {{ $labels.pod }} holds {{ $value | humanizePercentage }} of the series it may hold; add ingesters (spec.components.ingester.replicas) before it refuses writes."),
		alertRule("CortexCompactorHasNotSuccessfullyRunCompaction",
			fmt.Sprintf(`(time() - cortex_compactor_last_successful_run_timestamp_seconds{%[1]s} > 86400)
  and (cortex_compactor_last_successful_run_timestamp_seconds{%[1]s} > 0)`, job(compactorJob)),
			"1h", "critical",
			"Cortex compactor {{ $labels.pod }} has not compacted blocks for 24 hours.",
			"Compactor {{ $labels.pod }} of MetricsCluster "+cluster+" has not finished a compaction in 24 hours: queries slow down and retention is not applied."),
		alertRule("OpstraceGatewayAuthFailuresHigh",
			fmt.Sprintf(`sum by (namespace, job, reason) (rate(opstrace_gateway_auth_failures_total{%s}[5m])) > 1`, job(ComponentGateway)),
			"15m", "warning",
			"The gateway of {{ $labels.namespace }} refuses many requests ({{ $labels.reason }}).",
			"The gateway of MetricsCluster "+cluster+" refuses {{ $value }} requests per second for reason {{ $labels.reason }}: a client may use a revoked or expired token, or someone is guessing."),
	}
	rules = append(rules, lokiAlertRules(opts)...)
	return &monitoringv1.PrometheusRule{
		TypeMeta:   metav1.TypeMeta{APIVersion: monitoringv1.SchemeGroupVersion.String(), Kind: monitoringv1.PrometheusRuleKind},
		ObjectMeta: objectMeta(opts, PrometheusRuleName(cluster), ComponentCortexShared),
		Spec: monitoringv1.PrometheusRuleSpec{Groups: []monitoringv1.RuleGroup{{
			Name:  "opstrace-" + cluster,
			Rules: rules,
		}}},
	}
}
