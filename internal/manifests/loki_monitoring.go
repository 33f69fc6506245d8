package manifests

import (
	"fmt"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
)

// lokiServiceMonitors scrape /metrics of every Loki component's ClusterIP Service; none when logs are off.
func lokiServiceMonitors(opts BuildOptions) []client.Object {
	if opts.Loki == nil {
		return nil
	}
	var objects []client.Object
	for _, component := range lokiComponents(opts.Topology) {
		objects = append(objects, serviceMonitor(opts, component, PortHTTP))
	}
	return objects
}

// lokiAlertRules are the essential Loki alerts, scoped like the Cortex ones to the cluster's namespace and
// Loki Services; none when logs are off. The metric names are Loki v3.7's (checked against a running Loki by
// TestLokiRunsOnTheRenderedConfig).
func lokiAlertRules(opts BuildOptions) []monitoringv1.Rule {
	if opts.Loki == nil {
		return nil
	}
	ns, cluster := opts.Namespace, opts.ClusterName
	lokiJobs := fmt.Sprintf(`namespace=%q, job=~%q`, ns, cluster+"-("+strings.Join(lokiComponents(opts.Topology), "|")+")")
	ringJob, compactorJob := LokiComponentDistributor, LokiComponentCompactor
	if opts.Topology == v1alpha1.TopologySingle {
		ringJob, compactorJob = LokiComponentAll, LokiComponentAll
	}
	job := func(component string) string {
		return fmt.Sprintf(`namespace=%q, job=%q`, ns, ComponentName(cluster, component))
	}
	return []monitoringv1.Rule{
		alertRule("LokiRequestErrors",
			fmt.Sprintf(`100 * sum by (namespace, job, route) (rate(loki_request_duration_seconds_count{%s, status_code=~"5..", route!~"ready"}[5m]))
  / sum by (namespace, job, route) (rate(loki_request_duration_seconds_count{%s, route!~"ready"}[5m])) > 1`, lokiJobs, lokiJobs),
			"15m", "critical",
			"Loki {{ $labels.job }} route {{ $labels.route }} fails requests.",
			"{{ printf \"%.2f\" $value }}% of the requests to {{ $labels.job }} route {{ $labels.route }} end in a 5xx error: log pushes or queries fail."),
		alertRule("LokiIngesterUnhealthy",
			fmt.Sprintf(`min by (namespace, job) (loki_ring_members{%s, name="ingester", state="Unhealthy"}) > 0`, job(ringJob)),
			"15m", "critical",
			"Loki ingesters of {{ $labels.namespace }} are unhealthy.",
			"{{ $value }} Loki ingesters of MetricsCluster "+cluster+" are unhealthy in the ring: log pushes may fail and recent lines may be missing from queries."),
		alertRule("LokiCompactorHasNotSuccessfullyRunCompaction",
			fmt.Sprintf(`(time() - loki_boltdb_shipper_compact_tables_operation_last_successful_run_timestamp_seconds{%[1]s} > 86400)
  and (loki_boltdb_shipper_compact_tables_operation_last_successful_run_timestamp_seconds{%[1]s} > 0)`, job(compactorJob)),
			"1h", "critical",
			"Loki compactor {{ $labels.pod }} has not compacted the index for 24 hours.",
			"Loki compactor {{ $labels.pod }} of MetricsCluster "+cluster+" has not finished a compaction in 24 hours: queries slow down and log retention is not applied."),
		alertRule("LokiTenantRateLimited",
			fmt.Sprintf(`sum by (namespace, tenant) (rate(loki_discarded_samples_total{%s, reason="rate_limited"}[5m])) > 0`, lokiJobs),
			"15m", "warning",
			"Loki refuses log lines of tenant {{ $labels.tenant }}: it pushes above its limit.",
			"Loki of MetricsCluster "+cluster+" discards {{ $value }} log lines per second of tenant {{ $labels.tenant }} for exceeding limits.logIngestionRate; raise the tenant's limit or reduce what it ships."),
	}
}
