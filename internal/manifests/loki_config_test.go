package manifests

import (
	"bytes"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
)

// productionLokiOptions are the LokiOptions the controller builds for MetricsCluster "metrics" in namespace
// "observability" with logs on and the constants of loki_names.go.
func productionLokiOptions(topology v1alpha1.Topology, size v1alpha1.SizePreset, storage v1alpha1.StorageSpec) LokiOptions {
	replication := ReplicationFactor(size)
	if topology == v1alpha1.TopologySingle {
		replication = 1
	}
	return LokiOptions{
		ClusterName:         "metrics",
		Namespace:           "observability",
		Topology:            topology,
		Storage:             storage,
		RetentionDays:       7,
		ReplicationFactor:   replication,
		DataDir:             LokiDataDir,
		ConfigFile:          LokiConfigFile,
		RuntimeConfigFile:   LokiRuntimeConfigFile,
		HTTPPort:            LokiHTTPPort,
		GRPCPort:            LokiGRPCPort,
		GossipPort:          LokiGossipPort,
		DefaultTenantLimits: v1alpha1.TenantLimits{LogIngestionRate: ptr.To[int64](8 << 20)},
		TLS:                 &ComponentTLS{Dir: CortexTLSDir, Hash: "9f86d081884c7d65"},
	}
}

var (
	lokiFSStorage  = v1alpha1.StorageSpec{Type: v1alpha1.StorageFilesystem}
	lokiS3Storage  = v1alpha1.StorageSpec{Type: v1alpha1.StorageS3, S3: &v1alpha1.S3Storage{Bucket: "acme-metrics", Region: "eu-west-1"}}
	lokiGCSStorage = v1alpha1.StorageSpec{Type: v1alpha1.StorageGCS, GCS: &v1alpha1.GCSStorage{Bucket: "acme-metrics"}}
)

func TestLokiConfigMatchesGoldenFiles(t *testing.T) {
	cases := []struct {
		golden   string
		topology v1alpha1.Topology
		size     v1alpha1.SizePreset
		storage  v1alpha1.StorageSpec
		bucket   string
	}{
		{"loki-single-filesystem.golden", v1alpha1.TopologySingle, v1alpha1.SizeDemo, lokiFSStorage, ""},
		{"loki-single-s3.golden", v1alpha1.TopologySingle, v1alpha1.SizeDemo, lokiS3Storage, ""},
		{"loki-single-gcs.golden", v1alpha1.TopologySingle, v1alpha1.SizeDemo, lokiGCSStorage, "acme-logs"},
		{"loki-microservices-s3.golden", v1alpha1.TopologyMicroservices, v1alpha1.SizeSmall, lokiS3Storage, "acme-logs"},
		{"loki-microservices-gcs.golden", v1alpha1.TopologyMicroservices, v1alpha1.SizeSmall, lokiGCSStorage, ""},
	}
	for _, tc := range cases {
		t.Run(tc.golden, func(t *testing.T) {
			opts := productionLokiOptions(tc.topology, tc.size, tc.storage)
			opts.Bucket = tc.bucket
			config, err := LokiConfig(opts)
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, tc.golden, config)
			for i, line := range strings.Split(string(config), "\n") {
				if !strings.HasPrefix(strings.TrimSpace(line), "#") && strings.Contains(line, "0.0.0.0") {
					t.Errorf("line %d refers to 0.0.0.0: every address must be the pod's IP: %s", i+1, line)
				}
			}
		})
	}
}

func TestLokiConfigFollowsOptions(t *testing.T) {
	parse := func(t *testing.T, opts LokiOptions) map[string]any {
		t.Helper()
		config, err := LokiConfig(opts)
		if err != nil {
			t.Fatal(err)
		}
		var doc map[string]any
		if err := yaml.Unmarshal(config, &doc); err != nil {
			t.Fatal(err)
		}
		return doc
	}
	t.Run("multi-tenant, TSDB v13, retention", func(t *testing.T) {
		doc := parse(t, productionLokiOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, lokiFSStorage))
		if lookup(t, doc, "auth_enabled") != true {
			t.Error("auth_enabled is not true: tenants would share one store")
		}
		schema := lookup(t, doc, "schema_config", "configs").([]any)[0].(map[string]any)
		if schema["store"] != "tsdb" || schema["schema"] != "v13" || schema["object_store"] != "filesystem" {
			t.Errorf("schema = %v, want tsdb v13 on filesystem", schema)
		}
		if lookup(t, doc, "compactor", "retention_enabled") != true || lookup(t, doc, "limits_config", "retention_period") != "7d" {
			t.Error("retention is not enabled at 7 days")
		}
		if got := lookup(t, doc, "limits_config", "ingestion_rate_mb"); got != float64(8) {
			t.Errorf("ingestion_rate_mb = %v, want 8 (8 MiB/s from defaultTenantLimits)", got)
		}
		if got := lookup(t, doc, "ingester", "wal", "dir"); got != "/data/wal" {
			t.Errorf("WAL in %v, want on the volume at /data/wal", got)
		}
		if got := lookup(t, doc, "common", "ring", "kvstore", "store"); got != "inmemory" {
			t.Errorf("single process ring store %v, want inmemory", got)
		}
		if _, ok := doc["memberlist"]; ok {
			t.Error("the single process gossips")
		}
	})
	t.Run("shared bucket gets the _logs/ prefix", func(t *testing.T) {
		doc := parse(t, productionLokiOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, lokiS3Storage))
		if lookup(t, doc, "storage_config", "object_prefix") != LokiLogsPrefix || lookup(t, doc, "storage_config", "aws", "bucketnames") != "acme-metrics" {
			t.Errorf("storage_config = %v, want the metrics bucket under %s", doc["storage_config"], LokiLogsPrefix)
		}
		if lookup(t, doc, "storage_config", "aws", "s3forcepathstyle") != false {
			t.Error("AWS S3 is addressed by path")
		}
	})
	t.Run("own bucket has no prefix", func(t *testing.T) {
		opts := productionLokiOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, lokiGCSStorage)
		opts.Bucket = "acme-logs"
		doc := parse(t, opts)
		storage := lookup(t, doc, "storage_config").(map[string]any)
		if _, ok := storage["object_prefix"]; ok || lookup(t, doc, "storage_config", "gcs", "bucket_name") != "acme-logs" {
			t.Errorf("storage_config = %v, want bucket acme-logs and no prefix", storage)
		}
	})
	t.Run("MinIO is addressed by path", func(t *testing.T) {
		storage := v1alpha1.StorageSpec{Type: v1alpha1.StorageS3, S3: &v1alpha1.S3Storage{Bucket: "metrics", Endpoint: "minio.storage.svc:9000", Insecure: true}}
		doc := parse(t, productionLokiOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, storage))
		if lookup(t, doc, "storage_config", "aws", "s3forcepathstyle") != true || lookup(t, doc, "storage_config", "aws", "insecure") != true {
			t.Errorf("aws = %v, want path style over plain HTTP", lookup(t, doc, "storage_config", "aws"))
		}
	})
	t.Run("microservices gossip and find the frontend and compactor", func(t *testing.T) {
		doc := parse(t, productionLokiOptions(v1alpha1.TopologyMicroservices, v1alpha1.SizeSmall, lokiS3Storage))
		if got := lookup(t, doc, "memberlist", "join_members").([]any)[0]; got != "dns+metrics-loki-gossip-ring.observability.svc.cluster.local:7946" {
			t.Errorf("join_members = %v", got)
		}
		if got := lookup(t, doc, "frontend_worker", "frontend_address"); got != "metrics-loki-query-frontend-headless.observability.svc.cluster.local:9095" {
			t.Errorf("frontend_address = %v", got)
		}
		if got := lookup(t, doc, "common", "compactor_grpc_address"); got != "metrics-loki-compactor.observability.svc.cluster.local:9095" {
			t.Errorf("compactor_grpc_address = %v", got)
		}
		if got := lookup(t, doc, "common", "replication_factor"); got != float64(3) {
			t.Errorf("replication_factor = %v, want 3 for size small", got)
		}
	})
}

func TestLokiConfigRejectsIncompleteOptions(t *testing.T) {
	opts := productionLokiOptions(v1alpha1.TopologyMicroservices, v1alpha1.SizeSmall, lokiFSStorage)
	opts.DataDir, opts.HTTPPort, opts.RetentionDays = "data", 0, 0
	_, err := LokiConfig(opts)
	if err == nil {
		t.Fatal("rendered a configuration from invalid options")
	}
	for _, want := range []string{"filesystem storage works only with topology single", `data directory "data" must be an absolute path`,
		"HTTP port 0 is not a port number", "logs retention of 0 days"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	shared := productionLokiOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, lokiS3Storage)
	shared.Bucket = "acme-metrics"
	if _, err := LokiConfig(shared); err == nil || !strings.Contains(err.Error(), "must differ from the metrics bucket") {
		t.Errorf("logs in the metrics bucket without a prefix: error %v", err)
	}
}

func TestLokiRuntimeOverridesMatchGoldenFile(t *testing.T) {
	defaults := v1alpha1.TenantLimits{LogIngestionRate: ptr.To[int64](2 << 20), LogRetentionDays: ptr.To[int32](14)}
	overrides, err := LokiRuntimeOverrides(defaults, map[string]v1alpha1.TenantLimits{
		"team-b":              {LogIngestionRate: ptr.To[int64](1536 << 10), LogIngestionBurst: ptr.To[int64](3 << 20)},
		"team-a":              {LogRetentionDays: ptr.To[int32](30)},
		v1alpha1.SystemTenant: {},
	})
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "loki-runtime-overrides.golden", overrides)
}

func TestLokiLimitsInheritFieldByField(t *testing.T) {
	cases := []struct {
		name             string
		defaults, tenant v1alpha1.TenantLimits
		rate, burst      int64
		rateMB, burstMB  string
		retention        string
	}{
		{"built-in", v1alpha1.TenantLimits{}, v1alpha1.TenantLimits{}, 4 << 20, 6 << 20, "4", "6", ""},
		{"defaults", v1alpha1.TenantLimits{LogIngestionBurst: ptr.To[int64](10 << 20), LogRetentionDays: ptr.To[int32](3)},
			v1alpha1.TenantLimits{}, 4 << 20, 10 << 20, "4", "10", "3d"},
		{"tenant over defaults", v1alpha1.TenantLimits{LogIngestionRate: ptr.To[int64](1 << 20)},
			v1alpha1.TenantLimits{LogIngestionRate: ptr.To[int64](512 << 10), LogRetentionDays: ptr.To[int32](90)}, 512 << 10, 6 << 20, "0.5", "6", "90d"},
		{"burst raised to a higher rate", v1alpha1.TenantLimits{},
			v1alpha1.TenantLimits{LogIngestionRate: ptr.To[int64](20 << 20)}, 20 << 20, 20 << 20, "20", "20", ""},
		{"bytes that are not whole MiB", v1alpha1.TenantLimits{},
			v1alpha1.TenantLimits{LogIngestionRate: ptr.To[int64](1000000), LogIngestionBurst: ptr.To[int64](1000000)}, 1000000, 1000000, "0.95367431640625", "0.95367431640625", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rate, burst := LogIngestionLimits(tc.defaults, tc.tenant)
			if rate != tc.rate || burst != tc.burst {
				t.Errorf("LogIngestionLimits = %d, %d; want %d, %d", rate, burst, tc.rate, tc.burst)
			}
			got := resolveLokiLimits(tc.defaults, tc.tenant)
			if got.IngestionRateMB != tc.rateMB || got.IngestionBurstSizeMB != tc.burstMB || got.RetentionPeriod != tc.retention {
				t.Errorf("resolved %+v; want rate %s MiB, burst %s MiB, retention %q", got, tc.rateMB, tc.burstMB, tc.retention)
			}
		})
	}
}

// lokiBuildOptions are the BuildOptions of the cluster of buildOptions with logs on.
func lokiBuildOptions(topology v1alpha1.Topology, size v1alpha1.SizePreset, storage v1alpha1.StorageSpec) BuildOptions {
	opts := buildOptions(topology, size, storage)
	opts.Loki = &LokiBuildOptions{LokiOptions: productionLokiOptions(topology, size, storage), Image: LokiImage(DefaultLokiVersion)}
	opts.MonitoringCRDs = true
	return opts
}

// lokiObjects are the objects of BuildAll that belong to Loki (app.kubernetes.io/name=loki).
func lokiObjects(objects []client.Object) []client.Object {
	var out []client.Object
	for _, obj := range objects {
		if obj.GetLabels()[LabelName] == AppLoki {
			out = append(out, obj)
		}
	}
	return out
}

func TestLokiObjectsMatchGoldenFiles(t *testing.T) {
	for _, tc := range []struct {
		golden string
		opts   BuildOptions
	}{
		{"objects-loki-single-filesystem.golden", lokiBuildOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, lokiFSStorage)},
		{"objects-loki-microservices-s3.golden", lokiBuildOptions(v1alpha1.TopologyMicroservices, v1alpha1.SizeSmall, lokiS3Storage)},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			out := toYAML(t, lokiObjects(buildAll(t, tc.opts)))
			checkGolden(t, tc.golden, out)
			if again := toYAML(t, lokiObjects(buildAll(t, tc.opts))); !bytes.Equal(again, out) {
				t.Fatal("a second BuildAll differs from the first")
			}
		})
	}
}

func TestLokiWorkloadsPerTopology(t *testing.T) {
	t.Run("single", func(t *testing.T) {
		objects := buildAll(t, lokiBuildOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, lokiFSStorage))
		sts := find[*appsv1.StatefulSet](t, objects, "metrics-loki")
		c := sts.Spec.Template.Spec.Containers[0]
		if c.Image != "grafana/loki:"+DefaultLokiVersion || strings.Join(c.Args, " ") != "-config.file=/etc/loki/config/loki.yaml -config.expand-env=true -target=all" {
			t.Errorf("container %s %v", c.Image, c.Args)
		}
		if c.Env[0].Name != PodIPEnv || c.Env[0].ValueFrom.FieldRef.FieldPath != "status.podIP" {
			t.Errorf("POD_IP does not come from the downward API: %+v", c.Env)
		}
		if mountAt(c, LokiDataDir) == nil || sts.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests.Storage().String() != "10Gi" {
			t.Error("the single Loki keeps no data on a 10Gi volume")
		}
		if h := sts.Spec.Template.Annotations[ConfigHashAnnotation]; h == "" || sts.Spec.Template.Annotations[TemplateHashAnnotation] == "" {
			t.Error("no config hash or template hash annotation")
		}
		// The gateway sends every logs route to the one process.
		gw := find[*appsv1.Deployment](t, objects, "metrics-gateway").Spec.Template.Spec.Containers[0].Args
		for _, want := range []string{"--loki-distributor-service=metrics-loki", "--loki-query-frontend-service=metrics-loki", "--loki-querier-service=metrics-loki"} {
			if !contains(gw, want) {
				t.Errorf("gateway args %v lack %s", gw, want)
			}
		}
	})
	t.Run("microservices", func(t *testing.T) {
		objects := buildAll(t, lokiBuildOptions(v1alpha1.TopologyMicroservices, v1alpha1.SizeSmall, lokiS3Storage))
		ingester := find[*appsv1.StatefulSet](t, objects, "metrics-loki-ingester")
		if ingester.Spec.UpdateStrategy.Type != appsv1.OnDeleteStatefulSetStrategyType || *ingester.Spec.Replicas != 3 {
			t.Errorf("ingester strategy %s replicas %d, want OnDelete and 3", ingester.Spec.UpdateStrategy.Type, *ingester.Spec.Replicas)
		}
		if c := ingester.Spec.Template.Spec.Containers[0]; c.Name != LokiComponentIngester || !contains(c.Args, "-target=ingester") {
			t.Errorf("ingester container %s args %v", c.Name, c.Args)
		}
		find[*appsv1.StatefulSet](t, objects, "metrics-loki-compactor")
		for _, name := range []string{"metrics-loki-distributor", "metrics-loki-querier", "metrics-loki-query-frontend"} {
			find[*appsv1.Deployment](t, objects, name)
		}
		if !find[*corev1.Service](t, objects, "metrics-loki-query-frontend-headless").Spec.PublishNotReadyAddresses {
			t.Error("queriers cannot find a query-frontend that is not ready yet, and it is not ready until they connect")
		}
		ring := find[*corev1.Service](t, objects, "metrics-loki-gossip-ring")
		if !ring.Spec.PublishNotReadyAddresses || ring.Spec.Selector[LabelName] != AppLoki {
			t.Errorf("gossip ring Service %+v", ring.Spec)
		}
		// Cortex's gossip ring and NetworkPolicy select Cortex pods only: the two rings never mix.
		if find[*corev1.Service](t, objects, "metrics-gossip-ring").Spec.Selector[LabelName] != AppCortex {
			t.Error("the Cortex gossip ring selects Loki pods")
		}
		gw := find[*appsv1.Deployment](t, objects, "metrics-gateway").Spec.Template.Spec.Containers[0].Args
		for _, want := range []string{"--loki-distributor-service=metrics-loki-distributor", "--loki-query-frontend-service=metrics-loki-query-frontend", "--loki-querier-service=metrics-loki-querier"} {
			if !contains(gw, want) {
				t.Errorf("gateway args %v lack %s", gw, want)
			}
		}
		kinds, _ := kindsOf(lokiObjects(objects))
		// 2 ConfigMaps; 5 ClusterIP + 5 headless + gossip ring Services; PDBs for the 4 components with 2+
		// replicas; ServiceMonitors for the 5 components.
		want := map[string]int{"ConfigMap": 2, "ServiceAccount": 1, "Service": 11, "StatefulSet": 2, "Deployment": 3,
			"PodDisruptionBudget": 4, "NetworkPolicy": 1, "ServiceMonitor": 5}
		for kind, n := range want {
			if kinds[kind] != n {
				t.Errorf("%d Loki %s, want %d (all: %v)", kinds[kind], kind, n, kinds)
			}
		}
	})
	t.Run("logs off", func(t *testing.T) {
		opts := lokiBuildOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, lokiFSStorage)
		opts.Loki = nil
		objects := buildAll(t, opts)
		if l := lokiObjects(objects); len(l) != 0 {
			t.Errorf("%d Loki objects with logs off", len(l))
		}
		for _, arg := range find[*appsv1.Deployment](t, objects, "metrics-gateway").Spec.Template.Spec.Containers[0].Args {
			if strings.HasPrefix(arg, "--loki-") {
				t.Errorf("gateway arg %s with logs off", arg)
			}
		}
		for _, rule := range BuildPrometheusRule(opts).Spec.Groups[0].Rules {
			if strings.HasPrefix(rule.Alert, "Loki") {
				t.Errorf("alert %s with logs off", rule.Alert)
			}
		}
	})
}

func TestLokiTenantLimitsRollNoPod(t *testing.T) {
	opts := lokiBuildOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, lokiFSStorage)
	template := func(overrides []byte) string {
		o := opts
		loki := *o.Loki
		loki.RuntimeOverrides = overrides
		o.Loki = &loki
		return find[*appsv1.StatefulSet](t, buildAll(t, o), "metrics-loki").Spec.Template.Annotations[TemplateHashAnnotation]
	}
	before, err := LokiRuntimeOverrides(v1alpha1.TenantLimits{}, map[string]v1alpha1.TenantLimits{"team-a": {}})
	if err != nil {
		t.Fatal(err)
	}
	after, err := LokiRuntimeOverrides(v1alpha1.TenantLimits{}, map[string]v1alpha1.TenantLimits{"team-a": {LogIngestionRate: ptr.To[int64](1 << 20)}})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(before, after) {
		t.Fatal("the tenant's new limit is not in the overrides")
	}
	if template(before) != template(after) {
		t.Error("a tenant's log limit changed the Loki pod template: it would restart Loki for nothing")
	}
	o := opts
	loki := *o.Loki
	loki.RetentionDays = 30
	o.Loki = &loki
	if find[*appsv1.StatefulSet](t, buildAll(t, o), "metrics-loki").Spec.Template.Annotations[ConfigHashAnnotation] ==
		find[*appsv1.StatefulSet](t, buildAll(t, opts), "metrics-loki").Spec.Template.Annotations[ConfigHashAnnotation] {
		t.Error("a new retention left the config hash unchanged: the pods would keep the old configuration")
	}
}

func TestNewBuildOptionsTurnsLokiOnByDefault(t *testing.T) {
	mc := &v1alpha1.MetricsCluster{Spec: v1alpha1.MetricsClusterSpec{Topology: v1alpha1.TopologyMicroservices, Size: v1alpha1.SizeSmall,
		Storage: lokiS3Storage, Retention: v1alpha1.RetentionSpec{LogsDays: 14}}}
	mc.Name, mc.Namespace = "prod", "ns"
	opts := NewBuildOptions(mc, "gateway:test", false)
	if opts.Loki == nil || opts.Loki.Image != "grafana/loki:"+DefaultLokiVersion || opts.Loki.RetentionDays != 14 || opts.Loki.ReplicationFactor != 3 {
		t.Fatalf("Loki options %+v", opts.Loki)
	}
	mc.Spec.Logs = v1alpha1.LogsSpec{Version: "v3.8.0", Storage: v1alpha1.LogsStorageSpec{Bucket: "prod-logs"}}
	if opts := NewBuildOptions(mc, "gateway:test", false); opts.Loki.Image != "grafana/loki:v3.8.0" || opts.Loki.Bucket != "prod-logs" {
		t.Errorf("Loki options %+v ignore spec.logs", opts.Loki)
	}
	mc.Spec.Logs.Enabled = ptr.To(false)
	if opts := NewBuildOptions(mc, "gateway:test", false); opts.Loki != nil {
		t.Error("logs.enabled false still builds Loki")
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
