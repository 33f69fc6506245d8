package v1alpha1_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/testenv"
)

// These tests run against a real kube-apiserver and etcd: validation lives in the CRDs' OpenAPI schemas and
// CEL rules, so only the API server can say whether an object is admitted.

var env *testenv.Env

func TestMain(m *testing.M) {
	var err error
	env, err = testenv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if err := env.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stop control plane:", err)
	}
	os.Exit(code)
}

func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "admission-"}}
	if err := env.Client.Create(context.Background(), ns); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	return ns.Name
}

func samplesDir() string { return filepath.Join(testenv.RepoRoot(), "config", "samples") }

// readSamples decodes every document of every YAML file in config/samples.
func readSamples(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(samplesDir(), "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no samples in %s: %v", samplesDir(), err)
	}
	var objects []*unstructured.Unstructured
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		decoder := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			obj := &unstructured.Unstructured{}
			if err := decoder.Decode(&obj.Object); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			if len(obj.Object) > 0 {
				objects = append(objects, obj)
			}
		}
	}
	return objects
}

func TestEverySampleIsAccepted(t *testing.T) {
	ns := newNamespace(t)
	kinds := map[string]int{}
	for _, obj := range readSamples(t) {
		obj.SetNamespace(ns)
		if err := env.Client.Create(context.Background(), obj); err != nil {
			t.Errorf("sample %s %s rejected: %v", obj.GetKind(), obj.GetName(), err)
		}
		kinds[obj.GetKind()]++
	}
	if kinds["MetricsCluster"] < 3 || kinds["Tenant"] < 2 {
		t.Fatalf("samples should show every storage backend and tenant limits; got %v", kinds)
	}

	// The API server applies the schema's defaults; the controller relies on them.
	var gke v1alpha1.MetricsCluster
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "gke"}, &gke); err != nil {
		t.Fatal(err)
	}
	if gke.Spec.Retention.MetricsDays != 30 || gke.Spec.Retention.LogsDays != 7 {
		t.Errorf("retention defaults = %+v, want metricsDays 30 and logsDays 7", gke.Spec.Retention)
	}
	var onprem v1alpha1.MetricsCluster
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "onprem"}, &onprem); err != nil {
		t.Fatal(err)
	}
	if onprem.Spec.Size != v1alpha1.SizeDemo || onprem.Spec.Gateway.ServiceType != corev1.ServiceTypeClusterIP {
		t.Errorf("size %q and gateway.serviceType %q, want the defaults demo and ClusterIP",
			onprem.Spec.Size, onprem.Spec.Gateway.ServiceType)
	}
	var tenant v1alpha1.Tenant
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "default"}, &tenant); err != nil {
		t.Fatal(err)
	}
	if tenant.Spec.Tokens.LifetimeDays != 365 {
		t.Errorf("tokens.lifetimeDays = %d, want the default 365", tenant.Spec.Tokens.LifetimeDays)
	}
}

func TestKubectlAppliesTheSamplesAndShowsRejections(t *testing.T) {
	ns := newNamespace(t)
	out, err := env.Kubectl("apply", "-n", ns, "-f", samplesDir())
	if err != nil {
		t.Fatalf("kubectl apply -f config/samples/: %v\n%s", err, out)
	}
	for _, want := range []string{"metricscluster.opstrace.io/demo created", "tenant.opstrace.io/team-payments created"} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl apply output lacks %q:\n%s", want, out)
		}
	}

	out, err = env.Kubectl("get", "tenants", "-n", ns, "-o", "name")
	if err != nil || !strings.Contains(out, "tenant.opstrace.io/default") {
		t.Fatalf("kubectl get tenants: %v\n%s", err, out)
	}

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	manifest := "apiVersion: opstrace.io/v1alpha1\nkind: Tenant\nmetadata:\n  name: system\n"
	if err := os.WriteFile(bad, []byte(manifest), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = env.Kubectl("apply", "-n", ns, "-f", bad)
	if err == nil {
		t.Fatalf("kubectl apply of a Tenant named system succeeded:\n%s", out)
	}
	if !strings.Contains(out, "reserved for the distribution's own telemetry") {
		t.Fatalf("kubectl does not show why the Tenant was rejected:\n%s", out)
	}
}

func cluster(mutate func(*v1alpha1.MetricsCluster)) *v1alpha1.MetricsCluster {
	mc := &v1alpha1.MetricsCluster{
		ObjectMeta: metav1.ObjectMeta{Name: "metrics"},
		Spec: v1alpha1.MetricsClusterSpec{
			Topology: v1alpha1.TopologyMicroservices,
			Size:     v1alpha1.SizeSmall,
			Storage: v1alpha1.StorageSpec{
				Type: v1alpha1.StorageS3,
				S3:   &v1alpha1.S3Storage{Bucket: "metrics-bucket", Region: "eu-west-1"},
			},
		},
	}
	mutate(mc)
	return mc
}

func tenant(mutate func(*v1alpha1.Tenant)) *v1alpha1.Tenant {
	t := &v1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}}
	mutate(t)
	return t
}

// rejected asserts that err is a 422 whose causes include one for field with a message containing want.
func rejected(t *testing.T, err error, field, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("admitted; want a rejection of %s", field)
	}
	var status *apierrors.StatusError
	if !errors.As(err, &status) || !apierrors.IsInvalid(err) {
		t.Fatalf("error is not an Invalid (422) status: %v", err)
	}
	for _, cause := range status.ErrStatus.Details.Causes {
		if cause.Field == field && strings.Contains(cause.Message, want) {
			if !strings.Contains(err.Error(), field) {
				t.Fatalf("the message the user sees does not name %s: %v", field, err)
			}
			return
		}
	}
	t.Fatalf("no cause for field %s containing %q in: %v", field, want, err)
}

func TestInvalidObjectsAreRejectedWithTheFieldAndTheFix(t *testing.T) {
	ns := newNamespace(t)
	tests := []struct {
		name   string
		object client.Object
		field  string
		want   string
	}{
		{
			name:   "cluster name starts with a digit",
			object: cluster(func(mc *v1alpha1.MetricsCluster) { mc.Name = "1metrics" }),
			field:  "metadata", want: "must start with a lowercase letter",
		},
		{
			name:   "cluster name too long for the names derived from it",
			object: cluster(func(mc *v1alpha1.MetricsCluster) { mc.Name = strings.Repeat("m", 31) }),
			field:  "metadata", want: "at most 30 characters",
		},
		{
			name:   "unknown topology",
			object: cluster(func(mc *v1alpha1.MetricsCluster) { mc.Spec.Topology = "huge" }),
			field:  "spec.topology", want: `supported values: "single", "microservices"`,
		},
		{
			name:   "unknown size",
			object: cluster(func(mc *v1alpha1.MetricsCluster) { mc.Spec.Size = "xl" }),
			field:  "spec.size", want: `supported values: "demo", "small", "medium"`,
		},
		{
			name:   "version that is not a release",
			object: cluster(func(mc *v1alpha1.MetricsCluster) { mc.Spec.Version = "latest" }),
			field:  "spec.version", want: "must be a Cortex release such as v1.21.1",
		},
		{
			name: "filesystem storage with microservices",
			object: cluster(func(mc *v1alpha1.MetricsCluster) {
				mc.Spec.Storage = v1alpha1.StorageSpec{Type: v1alpha1.StorageFilesystem}
			}),
			field: "spec.storage.type", want: "works only with topology single",
		},
		{
			name: "s3 type without s3 settings",
			object: cluster(func(mc *v1alpha1.MetricsCluster) {
				mc.Spec.Storage = v1alpha1.StorageSpec{Type: v1alpha1.StorageS3}
			}),
			field: "spec.storage.s3", want: "storage.s3 is required when storage.type is s3",
		},
		{
			name: "s3 settings with gcs type",
			object: cluster(func(mc *v1alpha1.MetricsCluster) {
				mc.Spec.Storage.Type = v1alpha1.StorageGCS
				mc.Spec.Storage.GCS = &v1alpha1.GCSStorage{Bucket: "metrics-bucket"}
			}),
			field: "spec.storage.s3", want: "storage.s3 does not apply to storage.type gcs",
		},
		{
			name: "gcs type without gcs settings",
			object: cluster(func(mc *v1alpha1.MetricsCluster) {
				mc.Spec.Storage = v1alpha1.StorageSpec{Type: v1alpha1.StorageGCS}
			}),
			field: "spec.storage.gcs", want: "set at least gcs.bucket",
		},
		{
			name:   "s3 without region or endpoint",
			object: cluster(func(mc *v1alpha1.MetricsCluster) { mc.Spec.Storage.S3.Region = "" }),
			field:  "spec.storage.s3.region", want: "s3.region is required for AWS S3",
		},
		{
			name: "s3 endpoint with a scheme",
			object: cluster(func(mc *v1alpha1.MetricsCluster) {
				mc.Spec.Storage.S3.Endpoint = "https://minio.storage.svc:9000"
			}),
			field: "spec.storage.s3.endpoint", want: "host[:port] without a scheme",
		},
		{
			name:   "plain HTTP to AWS S3",
			object: cluster(func(mc *v1alpha1.MetricsCluster) { mc.Spec.Storage.S3.Insecure = true }),
			field:  "spec.storage.s3.insecure", want: "needs a custom s3.endpoint",
		},
		{
			name:   "bucket name with capitals",
			object: cluster(func(mc *v1alpha1.MetricsCluster) { mc.Spec.Storage.S3.Bucket = "My_Bucket" }),
			field:  "spec.storage.s3.bucket", want: "3 to 63 lowercase letters",
		},
		{
			name: "credentials secret with an invalid name",
			object: cluster(func(mc *v1alpha1.MetricsCluster) {
				mc.Spec.Storage.S3.CredentialsSecret = &v1alpha1.SecretReference{Name: "Bad Name"}
			}),
			field: "spec.storage.s3.credentialsSecret.name", want: "must be the name of a Secret",
		},
		{
			name: "negative ingestion rate",
			object: cluster(func(mc *v1alpha1.MetricsCluster) {
				mc.Spec.DefaultTenantLimits.IngestionRate = ptr.To[int64](-5)
			}),
			field: "spec.defaultTenantLimits.ingestionRate", want: "should be greater than or equal to 1",
		},
		{
			name: "burst below rate",
			object: cluster(func(mc *v1alpha1.MetricsCluster) {
				mc.Spec.DefaultTenantLimits.IngestionRate = ptr.To[int64](1000)
				mc.Spec.DefaultTenantLimits.IngestionBurst = ptr.To[int64](10)
			}),
			field: "spec.defaultTenantLimits.ingestionBurst", want: "must be at least ingestionRate",
		},
		{
			name: "microservice overrides with topology single",
			object: cluster(func(mc *v1alpha1.MetricsCluster) {
				mc.Spec.Topology = v1alpha1.TopologySingle
				mc.Spec.Components = &v1alpha1.ComponentOverrides{Ingester: &v1alpha1.ComponentSpec{Replicas: ptr.To[int32](3)}}
			}),
			field: "spec.components", want: "only components.all and components.gateway apply",
		},
		{
			name: "scaling the single process",
			object: cluster(func(mc *v1alpha1.MetricsCluster) {
				mc.Spec.Topology = v1alpha1.TopologySingle
				mc.Spec.Components = &v1alpha1.ComponentOverrides{All: &v1alpha1.ComponentSpec{Replicas: ptr.To[int32](2)}}
			}),
			field: "spec.components.all.replicas", want: "exactly one Cortex process",
		},
		{
			name: "too few ingesters for replication factor 3",
			object: cluster(func(mc *v1alpha1.MetricsCluster) {
				mc.Spec.Components = &v1alpha1.ComponentOverrides{Ingester: &v1alpha1.ComponentSpec{Replicas: ptr.To[int32](2)}}
			}),
			field: "spec.components.ingester.replicas", want: "at least 3 for size small and medium",
		},
		{
			name:   "negative retention",
			object: cluster(func(mc *v1alpha1.MetricsCluster) { mc.Spec.Retention.MetricsDays = -1 }),
			field:  "spec.retention.metricsDays", want: "should be greater than or equal to 1",
		},
		{
			name: "source range that is not a CIDR",
			object: cluster(func(mc *v1alpha1.MetricsCluster) {
				mc.Spec.Gateway = v1alpha1.GatewaySpec{ServiceType: corev1.ServiceTypeLoadBalancer, AllowedSourceRanges: []string{"office"}}
			}),
			field: "spec.gateway.allowedSourceRanges", want: "must be CIDRs such as 203.0.113.0/24",
		},
		{
			name: "gateway issuer without a hostname",
			object: cluster(func(mc *v1alpha1.MetricsCluster) {
				mc.Spec.Gateway = v1alpha1.GatewaySpec{TLS: &v1alpha1.GatewayTLSSpec{IssuerRef: &v1alpha1.IssuerReference{Name: "letsencrypt-prod", Kind: "ClusterIssuer"}}}
			}),
			field: "spec.gateway.tls.issuerRef", want: "issues the gateway's certificate for gateway.hostname only",
		},
		{
			name: "source ranges on a ClusterIP gateway",
			object: cluster(func(mc *v1alpha1.MetricsCluster) {
				mc.Spec.Gateway = v1alpha1.GatewaySpec{AllowedSourceRanges: []string{"10.0.0.0/8"}}
			}),
			field: "spec.gateway.allowedSourceRanges", want: "applies only to gateway.serviceType LoadBalancer",
		},
		{
			name: "hostname given as a URL",
			object: cluster(func(mc *v1alpha1.MetricsCluster) {
				mc.Spec.Gateway.Hostname = "https://metrics.example.com"
			}),
			field: "spec.gateway.hostname", want: "lowercase DNS name such as metrics.example.com",
		},
		{
			name: "unknown issuer kind",
			object: cluster(func(mc *v1alpha1.MetricsCluster) {
				mc.Spec.TLS.IssuerRef = &v1alpha1.IssuerReference{Name: "letsencrypt", Kind: "Vault"}
			}),
			field: "spec.tls.issuerRef.kind", want: `supported values: "Issuer", "ClusterIssuer"`,
		},
		{
			name: "logs bucket with filesystem storage",
			object: cluster(func(mc *v1alpha1.MetricsCluster) {
				mc.Spec.Topology = v1alpha1.TopologySingle
				mc.Spec.Storage = v1alpha1.StorageSpec{Type: v1alpha1.StorageFilesystem}
				mc.Spec.Logs.Storage.Bucket = "logs-bucket"
			}),
			field: "spec.logs.storage.bucket", want: "applies only to storage.type s3 or gcs",
		},
		{
			name:   "logs bucket that is the metrics bucket",
			object: cluster(func(mc *v1alpha1.MetricsCluster) { mc.Spec.Logs.Storage.Bucket = "metrics-bucket" }),
			field:  "spec.logs.storage.bucket", want: "must differ from the metrics bucket",
		},
		{
			name: "gcs logs bucket that is the metrics bucket",
			object: cluster(func(mc *v1alpha1.MetricsCluster) {
				mc.Spec.Storage = v1alpha1.StorageSpec{Type: v1alpha1.StorageGCS, GCS: &v1alpha1.GCSStorage{Bucket: "metrics_bucket"}}
				mc.Spec.Logs.Storage.Bucket = "metrics_bucket"
			}),
			field: "spec.logs.storage.bucket", want: "must differ from the metrics bucket",
		},
		{
			name:   "s3 logs bucket with an underscore",
			object: cluster(func(mc *v1alpha1.MetricsCluster) { mc.Spec.Logs.Storage.Bucket = "team_logs" }),
			field:  "spec.logs.storage.bucket", want: "must not contain '_' for storage.type s3",
		},
		{
			name:   "logs bucket with capitals",
			object: cluster(func(mc *v1alpha1.MetricsCluster) { mc.Spec.Logs.Storage.Bucket = "Logs" }),
			field:  "spec.logs.storage.bucket", want: "3 to 63 lowercase letters",
		},
		{
			name:   "logs version that is not a release",
			object: cluster(func(mc *v1alpha1.MetricsCluster) { mc.Spec.Logs.Version = "3.7" }),
			field:  "spec.logs.version", want: "must be a Loki release such as v3.7.8",
		},
		{
			name:   "negative logs retention",
			object: cluster(func(mc *v1alpha1.MetricsCluster) { mc.Spec.Retention.LogsDays = -1 }),
			field:  "spec.retention.logsDays", want: "should be greater than or equal to 1",
		},
		{
			name: "log burst below log rate",
			object: cluster(func(mc *v1alpha1.MetricsCluster) {
				mc.Spec.DefaultTenantLimits.LogIngestionRate = ptr.To[int64](4 << 20)
				mc.Spec.DefaultTenantLimits.LogIngestionBurst = ptr.To[int64](1 << 20)
			}),
			field: "spec.defaultTenantLimits.logIngestionBurst", want: "must be at least logIngestionRate (both in bytes)",
		},
		{
			name:   "zero log ingestion rate",
			object: tenant(func(t *v1alpha1.Tenant) { t.Spec.Limits.LogIngestionRate = ptr.To[int64](0) }),
			field:  "spec.limits.logIngestionRate", want: "should be greater than or equal to 1",
		},
		{
			name:   "tenant log retention beyond ten years",
			object: tenant(func(t *v1alpha1.Tenant) { t.Spec.Limits.LogRetentionDays = ptr.To[int32](4000) }),
			field:  "spec.limits.logRetentionDays", want: "should be less than or equal to 3650",
		},
		{
			name:   "tenant named system",
			object: tenant(func(t *v1alpha1.Tenant) { t.Name = v1alpha1.SystemTenant }),
			field:  "metadata", want: "'system' is reserved",
		},
		{
			name:   "tenant name with a dot",
			object: tenant(func(t *v1alpha1.Tenant) { t.Name = "team.a" }),
			field:  "metadata", want: "metadata.name is the tenant ID: use lowercase letters, digits and '-'",
		},
		{
			name:   "tenant name longer than a DNS label",
			object: tenant(func(t *v1alpha1.Tenant) { t.Name = strings.Repeat("t", 64) }),
			field:  "metadata", want: "at most 63 characters",
		},
		{
			name:   "negative max active series",
			object: tenant(func(t *v1alpha1.Tenant) { t.Spec.Limits.MaxActiveSeries = ptr.To[int64](-1) }),
			field:  "spec.limits.maxActiveSeries", want: "should be greater than or equal to 0",
		},
		{
			name:   "tenant retention beyond ten years",
			object: tenant(func(t *v1alpha1.Tenant) { t.Spec.Limits.MetricRetentionDays = ptr.To[int32](5000) }),
			field:  "spec.limits.metricRetentionDays", want: "should be less than or equal to 3650",
		},
		{
			name:   "negative token lifetime",
			object: tenant(func(t *v1alpha1.Tenant) { t.Spec.Tokens.LifetimeDays = -3 }),
			field:  "spec.tokens.lifetimeDays", want: "should be greater than or equal to 1",
		},
		{
			name:   "empty revoked token id",
			object: tenant(func(t *v1alpha1.Tenant) { t.Spec.Tokens.RevokedIDs = []string{""} }),
			field:  "spec.tokens.revokedIDs[0]", want: "should be at least 1 chars long",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.object.SetNamespace(ns)
			rejected(t, env.Client.Create(context.Background(), tt.object), tt.field, tt.want)
		})
	}
}

func TestImmutableFieldsCannotChangeAndStoredObjectsSurvive(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	tests := []struct {
		name   string
		object client.Object
		mutate func(client.Object)
		field  string
		want   string
	}{
		{
			name:   "storage bucket",
			object: cluster(func(*v1alpha1.MetricsCluster) {}),
			mutate: func(o client.Object) { o.(*v1alpha1.MetricsCluster).Spec.Storage.S3.Bucket = "other-bucket" },
			field:  "spec.storage", want: "storage cannot be changed after creation",
		},
		{
			name:   "storage backend",
			object: cluster(func(mc *v1alpha1.MetricsCluster) { mc.Name = "metrics-2" }),
			mutate: func(o client.Object) {
				o.(*v1alpha1.MetricsCluster).Spec.Storage = v1alpha1.StorageSpec{
					Type: v1alpha1.StorageGCS, GCS: &v1alpha1.GCSStorage{Bucket: "metrics-bucket"},
				}
			},
			field: "spec.storage", want: "storage cannot be changed after creation",
		},
		{
			name:   "logs bucket added",
			object: cluster(func(mc *v1alpha1.MetricsCluster) { mc.Name = "metrics-3" }),
			mutate: func(o client.Object) { o.(*v1alpha1.MetricsCluster).Spec.Logs.Storage.Bucket = "logs-bucket" },
			field:  "spec.logs.storage", want: "logs.storage cannot be changed after creation",
		},
		{
			name:   "logs bucket changed",
			object: cluster(func(mc *v1alpha1.MetricsCluster) { mc.Name = "metrics-4"; mc.Spec.Logs.Storage.Bucket = "logs-bucket" }),
			mutate: func(o client.Object) { o.(*v1alpha1.MetricsCluster).Spec.Logs.Storage.Bucket = "other-logs" },
			field:  "spec.logs.storage", want: "logs.storage cannot be changed after creation",
		},
		{
			name:   "tenant cluster",
			object: tenant(func(t *v1alpha1.Tenant) { t.Spec.ClusterName = "metrics" }),
			mutate: func(o client.Object) { o.(*v1alpha1.Tenant).Spec.ClusterName = "metrics-2" },
			field:  "spec.clusterName", want: "clusterName cannot be changed",
		},
		{
			name:   "tenant cluster removed",
			object: tenant(func(t *v1alpha1.Tenant) { t.Name = "team-b"; t.Spec.ClusterName = "metrics" }),
			mutate: func(o client.Object) { o.(*v1alpha1.Tenant).Spec.ClusterName = "" },
			field:  "spec.clusterName", want: "clusterName cannot be removed once set",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.object.SetNamespace(ns)
			if err := env.Client.Create(ctx, tt.object); err != nil {
				t.Fatalf("create: %v", err)
			}
			stored := tt.object.DeepCopyObject().(client.Object)
			tt.mutate(tt.object)
			rejected(t, env.Client.Update(ctx, tt.object), tt.field, tt.want)

			fresh := stored.DeepCopyObject().(client.Object)
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(stored), fresh); err != nil {
				t.Fatal(err)
			}
			if fresh.GetResourceVersion() != stored.GetResourceVersion() {
				t.Fatalf("a rejected update changed the stored object (resourceVersion %s -> %s)",
					stored.GetResourceVersion(), fresh.GetResourceVersion())
			}
		})
	}

	// Fields outside the immutable ones still change.
	var mc v1alpha1.MetricsCluster
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "metrics"}, &mc); err != nil {
		t.Fatal(err)
	}
	mc.Spec.Retention.MetricsDays = 90
	if err := env.Client.Update(ctx, &mc); err != nil {
		t.Fatalf("changing retention was rejected: %v", err)
	}
}

func TestLogsAreOnByDefaultAndCanBeTurnedOff(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	mc := cluster(func(*v1alpha1.MetricsCluster) {})
	mc.Namespace = ns
	if err := env.Client.Create(ctx, mc); err != nil {
		t.Fatalf("create: %v", err)
	}
	var stored v1alpha1.MetricsCluster
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(mc), &stored); err != nil {
		t.Fatal(err)
	}
	if stored.Spec.Logs.Enabled == nil || !*stored.Spec.Logs.Enabled || stored.Spec.Logs.Version != "" ||
		stored.Spec.Logs.Storage.Bucket != "" || stored.Spec.Retention.LogsDays != 7 {
		t.Fatalf("defaults = logs %+v, logsDays %d; want logs enabled, no version or bucket, 7 days",
			stored.Spec.Logs, stored.Spec.Retention.LogsDays)
	}
	stored.Spec.Logs.Enabled = ptr.To(false)
	stored.Spec.Logs.Version = "v3.7.8"
	if err := env.Client.Update(ctx, &stored); err != nil {
		t.Fatalf("turning logs off was rejected: %v", err)
	}
	if stored.Spec.Logs.IsEnabled() {
		t.Fatal("logs.enabled false reads back as enabled")
	}
}
