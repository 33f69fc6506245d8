package manifests

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/certs"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/ from the current output")

// checkGolden compares got with testdata/name, or rewrites the file with -update.
func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	file := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(file, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run `go test ./internal/manifests -update` to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s; if the change is intended, run `go test ./internal/manifests -update` "+
			"and review the diff.\n%s", file, lineDiff(string(want), string(got)))
	}
}

// lineDiff lists the lines of want and got that differ, position by position: enough to see what moved.
func lineDiff(want, got string) string {
	wantLines, gotLines := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < max(len(wantLines), len(gotLines)); i++ {
		var w, g string
		if i < len(wantLines) {
			w = wantLines[i]
		}
		if i < len(gotLines) {
			g = gotLines[i]
		}
		if w != g {
			fmt.Fprintf(&b, "line %d:\n  want: %s\n  got:  %s\n", i+1, w, g)
		}
	}
	return b.String()
}

// productionOptions are the Options the controller builds for a MetricsCluster "metrics" in namespace
// "observability" with the constants of names.go.
func productionOptions(topology v1alpha1.Topology, size v1alpha1.SizePreset, storage v1alpha1.StorageSpec) Options {
	return Options{
		ClusterName:          "metrics",
		Namespace:            "observability",
		Topology:             topology,
		Size:                 size,
		Storage:              storage,
		MetricsRetentionDays: 30,
		ReplicationFactor:    ReplicationFactor(size),
		DataDir:              DataDir,
		ConfigFile:           ConfigFile,
		RuntimeConfigFile:    RuntimeConfigFile,
		HTTPPort:             DefaultHTTPPort,
		GRPCPort:             DefaultGRPCPort,
		GossipPort:           DefaultGossipPort,
		DefaultTenantLimits:  v1alpha1.TenantLimits{IngestionRate: ptr.To[int64](50000)},
		TLS:                  &ComponentTLS{Dir: CortexTLSDir, Hash: "9f86d081884c7d65"},
	}
}

var (
	filesystemStorage = v1alpha1.StorageSpec{Type: v1alpha1.StorageFilesystem}
	minioStorage      = v1alpha1.StorageSpec{Type: v1alpha1.StorageS3, S3: &v1alpha1.S3Storage{
		Bucket: "opstrace-metrics", Endpoint: "minio.storage.svc:9000", Insecure: true,
		CredentialsSecret: &v1alpha1.SecretReference{Name: "minio-credentials"},
	}}
	awsStorage = v1alpha1.StorageSpec{Type: v1alpha1.StorageS3, S3: &v1alpha1.S3Storage{
		Bucket: "acme-prod-opstrace-metrics", Region: "us-east-1",
	}}
	gcsStorage = v1alpha1.StorageSpec{Type: v1alpha1.StorageGCS, GCS: &v1alpha1.GCSStorage{
		Bucket: "acme-opstrace-metrics",
	}}
	gcsEmulatorStorage = v1alpha1.StorageSpec{Type: v1alpha1.StorageGCS, GCS: &v1alpha1.GCSStorage{
		Bucket: "opstrace-metrics", Endpoint: "fake-gcs.storage.svc:4443", Insecure: true,
		CredentialsSecret: &v1alpha1.SecretReference{Name: "gcs-key"},
	}}
)

// configCases are the topology × storage combinations the CRD admits; every one has a golden file.
var configCases = []struct {
	golden string
	opts   Options
}{
	{"cortex-single-filesystem.golden", productionOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, filesystemStorage)},
	{"cortex-single-s3.golden", productionOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, minioStorage)},
	{"cortex-single-gcs.golden", productionOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, gcsEmulatorStorage)},
	{"cortex-microservices-s3.golden", productionOptions(v1alpha1.TopologyMicroservices, v1alpha1.SizeSmall, awsStorage)},
	{"cortex-microservices-gcs.golden", productionOptions(v1alpha1.TopologyMicroservices, v1alpha1.SizeMedium, gcsStorage)},
}

func TestCortexConfigMatchesGoldenFiles(t *testing.T) {
	for _, tc := range configCases {
		t.Run(tc.golden, func(t *testing.T) {
			got, err := CortexConfig(tc.opts)
			if err != nil {
				t.Fatalf("CortexConfig: %v", err)
			}
			checkGolden(t, tc.golden, got)

			// Whatever the golden file says, these hold for every cluster.
			var text string
			for _, line := range strings.Split(string(got), "\n") {
				if !strings.HasPrefix(strings.TrimSpace(line), "#") {
					text += line + "\n"
				}
			}
			for _, forbidden := range []string{"0.0.0.0", "secret_access_key", "access_key_id", "service_account", "listen_address: 0"} {
				if strings.Contains(text, forbidden) {
					t.Errorf("configuration contains %q: no secret and no wildcard address may be in it", forbidden)
				}
			}
			var parsed map[string]any
			if err := yaml.Unmarshal(got, &parsed); err != nil {
				t.Fatalf("not YAML: %v", err)
			}
			if parsed["auth_enabled"] != true {
				t.Errorf("auth_enabled = %v, want true: tenants are told apart by X-Scope-OrgID", parsed["auth_enabled"])
			}
		})
	}
}

// lookup walks a parsed YAML document along keys.
func lookup(t *testing.T, doc map[string]any, keys ...string) any {
	t.Helper()
	var node any = doc
	for _, key := range keys {
		m, ok := node.(map[string]any)
		if !ok {
			t.Fatalf("%s: %v is not a map", strings.Join(keys, "."), node)
		}
		node = m[key]
	}
	return node
}

func TestCortexConfigFollowsOptions(t *testing.T) {
	parse := func(opts Options) map[string]any {
		t.Helper()
		out, err := CortexConfig(opts)
		if err != nil {
			t.Fatalf("CortexConfig: %v", err)
		}
		var doc map[string]any
		if err := yaml.Unmarshal(out, &doc); err != nil {
			t.Fatal(err)
		}
		return doc
	}

	opts := productionOptions(v1alpha1.TopologyMicroservices, v1alpha1.SizeSmall, awsStorage)
	opts.ClusterName, opts.Namespace = "prod", "monitoring"
	opts.MetricsRetentionDays = 90
	opts.DataDir = "/var/lib/cortex"
	doc := parse(opts)
	tests := []struct {
		keys []string
		want any
	}{
		{[]string{"memberlist", "join_members"}, []any{"dns+prod-gossip-ring.monitoring.svc.cluster.local:7946"}},
		{[]string{"frontend_worker", "frontend_address"}, "prod-query-frontend-headless.monitoring.svc.cluster.local:9095"},
		{[]string{"ingester", "lifecycler", "ring", "replication_factor"}, float64(3)},
		{[]string{"ingester", "lifecycler", "ring", "kvstore", "store"}, "memberlist"},
		{[]string{"store_gateway", "sharding_ring", "replication_factor"}, float64(3)},
		{[]string{"limits", "compactor_blocks_retention_period"}, "90d"},
		{[]string{"limits", "ingestion_rate"}, float64(50000)},
		{[]string{"limits", "ingestion_burst_size"}, float64(50000)},
		{[]string{"limits", "max_global_series_per_user"}, float64(BuiltinMaxActiveSeries)},
		{[]string{"blocks_storage", "tsdb", "dir"}, "/var/lib/cortex/tsdb"},
		{[]string{"blocks_storage", "s3", "endpoint"}, "s3.us-east-1.amazonaws.com"},
		{[]string{"alertmanager", "data_dir"}, "/var/lib/cortex/alertmanager"},
		{[]string{"alertmanager", "cluster", "listen_address"}, ""},
		{[]string{"runtime_config", "file"}, RuntimeConfigFile},
		{[]string{"runtime_config", "period"}, "10s"},
	}
	for _, tt := range tests {
		if got := lookup(t, doc, tt.keys...); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s = %#v, want %#v", strings.Join(tt.keys, "."), got, tt.want)
		}
	}

	// The single process keeps its rings in memory and joins nobody.
	single := parse(productionOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, filesystemStorage))
	if got := lookup(t, single, "ingester", "lifecycler", "ring", "kvstore", "store"); got != "inmemory" {
		t.Errorf("single: ingester ring store = %v, want inmemory", got)
	}
	if got := lookup(t, single, "memberlist"); got != nil {
		t.Errorf("single: memberlist = %v, want none", got)
	}
	if got := lookup(t, single, "ingester", "lifecycler", "ring", "replication_factor"); got != float64(1) {
		t.Errorf("single demo: replication factor = %v, want 1", got)
	}

	// Every directory Cortex writes is its own, under the data root.
	dirs := []string{
		lookup(t, single, "blocks_storage", "tsdb", "dir").(string),
		lookup(t, single, "blocks_storage", "bucket_store", "sync_dir").(string),
		lookup(t, single, "blocks_storage", "filesystem", "dir").(string),
		lookup(t, single, "compactor", "data_dir").(string),
		lookup(t, single, "ruler", "rule_path").(string),
		lookup(t, single, "ruler_storage", "filesystem", "dir").(string),
		lookup(t, single, "alertmanager", "data_dir").(string),
		lookup(t, single, "alertmanager_storage", "filesystem", "dir").(string),
	}
	seen := map[string]bool{}
	for _, dir := range dirs {
		if !strings.HasPrefix(dir, DataDir+"/") || seen[dir] {
			t.Errorf("directory %q is not a distinct directory under %s: %v", dir, DataDir, dirs)
		}
		for other := range seen {
			if strings.HasPrefix(dir, other+"/") || strings.HasPrefix(other, dir+"/") {
				t.Errorf("directory %q nests with %q: the alertmanager deletes what it does not know in its own", dir, other)
			}
		}
		seen[dir] = true
	}
}

func TestCortexConfigRejectsIncompleteOptions(t *testing.T) {
	valid := productionOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, filesystemStorage)
	tests := []struct {
		name   string
		mutate func(*Options)
		want   string
	}{
		{"no cluster name", func(o *Options) { o.ClusterName = "" }, "cluster name and namespace are required"},
		{"unknown topology", func(o *Options) { o.Topology = "huge" }, `topology "huge"`},
		{"replication factor zero", func(o *Options) { o.ReplicationFactor = 0 }, "replication factor 0"},
		{"retention zero", func(o *Options) { o.MetricsRetentionDays = 0 }, "retention of 0 days"},
		{"relative data dir", func(o *Options) { o.DataDir = "data" }, `data directory "data" must be an absolute path`},
		{"no runtime config", func(o *Options) { o.RuntimeConfigFile = "" }, "runtime config file"},
		{"no gRPC port", func(o *Options) { o.GRPCPort = 0 }, "gRPC port 0"},
		{"filesystem with microservices", func(o *Options) { o.Topology = v1alpha1.TopologyMicroservices }, "filesystem storage works only with topology single"},
		{"s3 without settings", func(o *Options) { o.Storage = v1alpha1.StorageSpec{Type: v1alpha1.StorageS3} }, "needs s3.bucket"},
		{"s3 without region or endpoint", func(o *Options) {
			o.Storage = v1alpha1.StorageSpec{Type: v1alpha1.StorageS3, S3: &v1alpha1.S3Storage{Bucket: "b-1"}}
		}, "needs s3.region or s3.endpoint"},
		{"gcs without settings", func(o *Options) { o.Storage = v1alpha1.StorageSpec{Type: v1alpha1.StorageGCS} }, "needs gcs.bucket"},
		{"unknown storage", func(o *Options) { o.Storage = v1alpha1.StorageSpec{Type: "azure"} }, `storage type "azure"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := valid
			tt.mutate(&opts)
			out, err := CortexConfig(opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want one containing %q", err, tt.want)
			}
			if out != nil {
				t.Errorf("returned a configuration along with the error")
			}
		})
	}
}

func TestCortexArgsPutEveryAddressOnThePodIP(t *testing.T) {
	single := productionOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, filesystemStorage)
	micro := productionOptions(v1alpha1.TopologyMicroservices, v1alpha1.SizeSmall, awsStorage)
	addressFlags := []string{
		"-server.http-listen-address", "-server.grpc-listen-address", "-memberlist.bind-addr",
		"-ingester.lifecycler.addr", "-distributor.ring.instance-addr", "-store-gateway.sharding-ring.instance-addr",
		"-compactor.ring.instance-addr", "-ruler.ring.instance-addr", "-alertmanager.sharding-ring.instance-addr",
	}
	tests := []struct {
		name     string
		opts     Options
		target   string
		wantSelf bool
	}{
		{"single", single, TargetAll, true},
		{"microservices ingester", micro, ComponentIngester, false},
		{"microservices querier", micro, ComponentQuerier, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := CortexArgs(tt.opts, tt.target)
			flags := map[string]string{}
			for _, arg := range args {
				name, value, ok := strings.Cut(arg, "=")
				if !ok || !strings.HasPrefix(name, "-") {
					t.Fatalf("argument %q is not -flag=value", arg)
				}
				if _, dup := flags[name]; dup {
					t.Errorf("flag %s given twice", name)
				}
				flags[name] = value
			}
			if flags["-config.file"] != ConfigFile || flags["-target"] != tt.target {
				t.Errorf("config file %q and target %q, want %q and %q", flags["-config.file"], flags["-target"], ConfigFile, tt.target)
			}
			for _, name := range addressFlags {
				if flags[name] != PodIPReference {
					t.Errorf("%s = %q, want %q", name, flags[name], PodIPReference)
				}
			}
			self := PodIPReference + ":9095"
			for _, name := range []string{"-querier.frontend-address", "-querier.store-gateway-addresses"} {
				value, ok := flags[name]
				if tt.wantSelf && value != self {
					t.Errorf("%s = %q, want %q: Cortex would use 127.0.0.1, where gRPC does not listen", name, value, self)
				}
				if !tt.wantSelf && ok {
					t.Errorf("%s = %q; microservices find query-frontends and store-gateways through the configuration", name, value)
				}
			}
		})
	}
}

func TestCortexEnvKeepsCredentialsOutOfTheConfig(t *testing.T) {
	podIP := corev1.EnvVar{Name: PodIPEnv, ValueFrom: &corev1.EnvVarSource{
		FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"},
	}}
	secretKey := func(name, secret string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: secret}, Key: name,
		}}}
	}
	tests := []struct {
		name    string
		storage v1alpha1.StorageSpec
		want    []corev1.EnvVar
	}{
		{"filesystem", filesystemStorage, []corev1.EnvVar{podIP}},
		{"s3 with the pod's identity", awsStorage, []corev1.EnvVar{podIP}},
		{"s3 with a credentials secret", minioStorage, []corev1.EnvVar{
			podIP, secretKey("AWS_ACCESS_KEY_ID", "minio-credentials"), secretKey("AWS_SECRET_ACCESS_KEY", "minio-credentials"),
		}},
		{"gcs with the pod's identity", gcsStorage, []corev1.EnvVar{podIP}},
		{"gcs emulator with a key", gcsEmulatorStorage, []corev1.EnvVar{
			podIP,
			{Name: "GOOGLE_APPLICATION_CREDENTIALS", Value: GCSCredentialsFile},
			{Name: "STORAGE_EMULATOR_HOST", Value: "http://fake-gcs.storage.svc:4443"},
		}},
		{"gcs endpoint over HTTPS", v1alpha1.StorageSpec{Type: v1alpha1.StorageGCS, GCS: &v1alpha1.GCSStorage{
			Bucket: "b-1", Endpoint: "gcs.internal.example.com",
		}}, []corev1.EnvVar{podIP, {Name: "STORAGE_EMULATOR_HOST", Value: "https://gcs.internal.example.com"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := CortexEnv(productionOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, tt.storage))
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("CortexEnv =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestRuntimeOverridesMatchGoldenFile(t *testing.T) {
	defaults := v1alpha1.TenantLimits{
		IngestionRate:   ptr.To[int64](10000),
		MaxActiveSeries: ptr.To[int64](200000),
	}
	tenants := map[string]v1alpha1.TenantLimits{
		"team-payments": {IngestionRate: ptr.To[int64](40000), IngestionBurst: ptr.To[int64](80000), MetricRetentionDays: ptr.To[int32](90)},
		"default":       {},
		"batch-jobs":    {MaxActiveSeries: ptr.To[int64](0)},
	}
	got, err := RuntimeOverrides(defaults, tenants)
	if err != nil {
		t.Fatalf("RuntimeOverrides: %v", err)
	}
	checkGolden(t, "runtime-overrides.golden", got)
}

func TestRuntimeOverridesInheritFieldByField(t *testing.T) {
	type tenantLimits struct {
		IngestionRate          int64  `json:"ingestion_rate"`
		IngestionBurstSize     int64  `json:"ingestion_burst_size"`
		MaxGlobalSeriesPerUser int64  `json:"max_global_series_per_user"`
		RetentionPeriod        string `json:"compactor_blocks_retention_period"`
	}
	tests := []struct {
		name     string
		defaults v1alpha1.TenantLimits
		tenant   v1alpha1.TenantLimits
		want     tenantLimits
	}{
		{
			name: "nothing set: built-in values, retention left to the cluster",
			want: tenantLimits{BuiltinIngestionRate, BuiltinIngestionBurst, BuiltinMaxActiveSeries, ""},
		},
		{
			name:     "cluster defaults fill what the tenant leaves unset",
			defaults: v1alpha1.TenantLimits{IngestionRate: ptr.To[int64](1000), IngestionBurst: ptr.To[int64](2000), MetricRetentionDays: ptr.To[int32](14)},
			tenant:   v1alpha1.TenantLimits{IngestionBurst: ptr.To[int64](5000)},
			want:     tenantLimits{1000, 5000, BuiltinMaxActiveSeries, "14d"},
		},
		{
			name:     "tenant values win over the defaults",
			defaults: v1alpha1.TenantLimits{IngestionRate: ptr.To[int64](1000), MaxActiveSeries: ptr.To[int64](10), MetricRetentionDays: ptr.To[int32](14)},
			tenant:   v1alpha1.TenantLimits{IngestionRate: ptr.To[int64](3000), IngestionBurst: ptr.To[int64](9000), MaxActiveSeries: ptr.To[int64](0), MetricRetentionDays: ptr.To[int32](7)},
			want:     tenantLimits{3000, 9000, 0, "7d"},
		},
		{
			name:   "an inherited burst below the tenant's rate is raised to it",
			tenant: v1alpha1.TenantLimits{IngestionRate: ptr.To[int64](100000)},
			want:   tenantLimits{100000, 100000, BuiltinMaxActiveSeries, ""},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := RuntimeOverrides(tt.defaults, map[string]v1alpha1.TenantLimits{"team-a": tt.tenant})
			if err != nil {
				t.Fatalf("RuntimeOverrides: %v", err)
			}
			var parsed struct {
				Overrides map[string]tenantLimits `json:"overrides"`
			}
			if err := yaml.UnmarshalStrict(out, &parsed); err != nil {
				t.Fatalf("output has keys beyond the four limits: %v\n%s", err, out)
			}
			if got := parsed.Overrides["team-a"]; got != tt.want || len(parsed.Overrides) != 1 {
				t.Errorf("overrides = %+v, want only team-a: %+v", parsed.Overrides, tt.want)
			}
		})
	}
}

func TestRuntimeOverridesAreSortedAndStable(t *testing.T) {
	tenants := map[string]v1alpha1.TenantLimits{}
	ids := []string{"zeta", "alpha", "team-7", "mid", "team-10", "b"}
	for _, id := range ids {
		tenants[id] = v1alpha1.TenantLimits{}
	}
	first, err := RuntimeOverrides(v1alpha1.TenantLimits{}, tenants)
	if err != nil {
		t.Fatal(err)
	}
	// Map iteration order changes from run to run; the output must not.
	for range 20 {
		again, err := RuntimeOverrides(v1alpha1.TenantLimits{}, tenants)
		if err != nil || !bytes.Equal(again, first) {
			t.Fatalf("second rendering differs (err %v):\n%s\n---\n%s", err, first, again)
		}
	}
	var order []string
	for _, line := range strings.Split(string(first), "\n") {
		if strings.HasPrefix(line, "  ") && !strings.HasPrefix(line, "    ") {
			order = append(order, strings.TrimSuffix(strings.TrimSpace(line), ":"))
		}
	}
	want := []string{`"alpha"`, `"b"`, `"mid"`, `"team-10"`, `"team-7"`, `"zeta"`}
	if !reflect.DeepEqual(order, want) {
		t.Errorf("tenants in order %v, want %v", order, want)
	}

	empty, err := RuntimeOverrides(v1alpha1.TenantLimits{}, nil)
	if err != nil || !strings.Contains(string(empty), "overrides: {}\n") {
		t.Errorf("no tenants: got %q, %v; want an empty overrides map", empty, err)
	}
	if _, err := RuntimeOverrides(v1alpha1.TenantLimits{}, map[string]v1alpha1.TenantLimits{"": {}}); err == nil {
		t.Errorf("an empty tenant ID was accepted")
	}
}

// Every name a client of the rendered configuration expects on its peer's certificate is one the component
// certificate is issued for (certs.ServiceDNSNames of CortexServices, as the controller issues it), and every
// TLS file is in the mounted directory.
func TestCortexConfigTLSNamesAreOnTheComponentCertificate(t *testing.T) {
	now := time.Now()
	ca, err := certs.NewCA("test CA", now, certs.CALifetime)
	if err != nil {
		t.Fatal(err)
	}
	for _, topology := range []v1alpha1.Topology{v1alpha1.TopologySingle, v1alpha1.TopologyMicroservices} {
		t.Run(string(topology), func(t *testing.T) {
			opts := productionOptions(topology, v1alpha1.SizeSmall, awsStorage)
			services, headless := CortexServices(opts.ClusterName, topology)
			leaf, err := certs.IssueServing(ca, certs.ServiceDNSNames(opts.Namespace, services, headless), nil, now, certs.LeafLifetime)
			if err != nil {
				t.Fatal(err)
			}
			cert, _, err := certs.ParseKeyPair(leaf.CertPEM, leaf.KeyPEM)
			if err != nil {
				t.Fatal(err)
			}
			out, err := CortexConfig(opts)
			if err != nil {
				t.Fatal(err)
			}
			var doc map[string]any
			if err := yaml.Unmarshal(out, &doc); err != nil {
				t.Fatal(err)
			}
			clients := [][]string{
				{"ingester_client", "grpc_client_config"},
				{"frontend_worker", "grpc_client_config"},
				{"querier", "store_gateway_client"},
			}
			if topology == v1alpha1.TopologySingle {
				clients = append(clients, []string{"ruler", "ruler_client"}, []string{"alertmanager", "alertmanager_client"})
			} else {
				clients = append(clients, []string{"memberlist"})
			}
			for _, keys := range clients {
				client, ok := lookup(t, doc, keys...).(map[string]any)
				if !ok {
					t.Fatalf("%s is missing", strings.Join(keys, "."))
				}
				if client["tls_enabled"] != true {
					t.Errorf("%s.tls_enabled = %v, want true", strings.Join(keys, "."), client["tls_enabled"])
				}
				name, _ := client["tls_server_name"].(string)
				if err := cert.VerifyHostname(name); err != nil {
					t.Errorf("%s.tls_server_name %q is not on the component certificate: %v", strings.Join(keys, "."), name, err)
				}
				for _, key := range []string{"tls_cert_path", "tls_key_path", "tls_ca_path"} {
					if file, _ := client[key].(string); filepath.Dir(file) != CortexTLSDir {
						t.Errorf("%s.%s = %q, want a file in %s", strings.Join(keys, "."), key, file, CortexTLSDir)
					}
				}
			}
			if got := lookup(t, doc, "server", "grpc_tls_config", "client_auth_type"); got != "RequireAndVerifyClientCert" {
				t.Errorf("server.grpc_tls_config.client_auth_type = %v, want RequireAndVerifyClientCert", got)
			}
			if got := lookup(t, doc, "server", "http_tls_config"); got != nil {
				t.Errorf("server.http_tls_config = %v; the HTTP port stays plain for the gateway, probes and scrapes", got)
			}
		})
	}

	// Without TLS (as testenv.StartCortex runs it) nothing of it is rendered.
	opts := productionOptions(v1alpha1.TopologyMicroservices, v1alpha1.SizeSmall, awsStorage)
	opts.TLS = nil
	out, err := CortexConfig(opts)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "tls_") {
		t.Errorf("a configuration without TLS options mentions TLS:\n%s", out)
	}
	opts.TLS = &ComponentTLS{Dir: "relative/tls"}
	if _, err := CortexConfig(opts); err == nil || !strings.Contains(err.Error(), "TLS directory") {
		t.Errorf("a relative TLS directory: %v, want an error naming it", err)
	}
}
