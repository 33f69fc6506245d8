package manifests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
)

const testGatewayImage = "opstrace/opstrace-gateway:dev"

// buildOptions are the BuildOptions of the productionOptions cluster "metrics" in "observability".
func buildOptions(topology v1alpha1.Topology, size v1alpha1.SizePreset, storage v1alpha1.StorageSpec) BuildOptions {
	opts := productionOptions(topology, size, storage)
	if topology == v1alpha1.TopologySingle {
		opts.ReplicationFactor = 1
	}
	return BuildOptions{
		Options:      opts,
		CortexImage:  CortexImage(DefaultCortexVersion),
		GatewayImage: testGatewayImage,
	}
}

func buildAll(t *testing.T, opts BuildOptions) []client.Object {
	t.Helper()
	objects, err := BuildAll(opts)
	if err != nil {
		t.Fatalf("BuildAll: %v", err)
	}
	return objects
}

// toYAML serializes objects as a multi-document YAML stream, as kubectl would apply it, leaving out the
// empty status and creationTimestamp fields the typed objects carry.
func toYAML(t *testing.T, objects []client.Object) []byte {
	t.Helper()
	var out bytes.Buffer
	for _, obj := range objects {
		data, err := json.Marshal(obj)
		if err != nil {
			t.Fatal(err)
		}
		var doc map[string]any
		if err := json.Unmarshal(data, &doc); err != nil {
			t.Fatal(err)
		}
		delete(doc, "status")
		dropNullTimestamps(doc)
		text, err := yaml.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		out.WriteString("---\n")
		out.Write(text)
	}
	return out.Bytes()
}

func dropNullTimestamps(node any) {
	switch n := node.(type) {
	case map[string]any:
		if v, ok := n["creationTimestamp"]; ok && v == nil {
			delete(n, "creationTimestamp")
		}
		for _, v := range n {
			dropNullTimestamps(v)
		}
	case []any:
		for _, v := range n {
			dropNullTimestamps(v)
		}
	}
}

// find is the object of type T named name; the test fails without it.
func find[T client.Object](t *testing.T, objects []client.Object, name string) T {
	t.Helper()
	for _, obj := range objects {
		if typed, ok := obj.(T); ok && obj.GetName() == name {
			return typed
		}
	}
	var zero T
	t.Fatalf("no %T named %s", zero, name)
	return zero
}

// kindsOf counts objects by Kind and lists "Kind/name" in order.
func kindsOf(objects []client.Object) (map[string]int, []string) {
	counts := map[string]int{}
	var names []string
	for _, obj := range objects {
		kind := obj.GetObjectKind().GroupVersionKind().Kind
		counts[kind]++
		names = append(names, kind+"/"+obj.GetName())
	}
	return counts, names
}

// podSpecs are the pod templates of the Deployments and StatefulSets among objects, by workload name.
func podTemplates(objects []client.Object) map[string]corev1.PodTemplateSpec {
	out := map[string]corev1.PodTemplateSpec{}
	for _, obj := range objects {
		switch w := obj.(type) {
		case *appsv1.Deployment:
			out[w.Name] = w.Spec.Template
		case *appsv1.StatefulSet:
			out[w.Name] = w.Spec.Template
		}
	}
	return out
}

var goldenCases = []struct {
	golden string
	opts   func() BuildOptions
}{
	{"objects-single-filesystem.golden", func() BuildOptions {
		opts := buildOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, v1alpha1.StorageSpec{
			Type: v1alpha1.StorageFilesystem,
			Filesystem: &v1alpha1.FilesystemStorage{
				Size: ptr.To(resource.MustParse("25Gi")), StorageClassName: ptr.To("local-path"),
			},
		})
		return opts
	}},
	{"objects-microservices-s3.golden", func() BuildOptions {
		opts := buildOptions(v1alpha1.TopologyMicroservices, v1alpha1.SizeSmall, minioStorage)
		opts.Gateway = v1alpha1.GatewaySpec{
			ServiceType: corev1.ServiceTypeLoadBalancer, Hostname: "metrics.example.com",
			AllowedSourceRanges: []string{"203.0.113.0/24"},
		}
		opts.MonitoringCRDs = true
		return opts
	}},
}

func TestBuildAllMatchesGoldenFiles(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.golden, func(t *testing.T) {
			out := toYAML(t, buildAll(t, tc.opts()))
			checkGolden(t, tc.golden, out)
			// Comments of the embedded Cortex configuration explain why 0.0.0.0 is avoided; nothing else may name it.
			for i, line := range strings.Split(string(out), "\n") {
				if !strings.HasPrefix(strings.TrimSpace(line), "#") && strings.Contains(line, "0.0.0.0") {
					t.Errorf("line %d refers to 0.0.0.0: every address must be the pod's IP: %s", i+1, line)
				}
			}
			if !strings.Contains(string(out), PodIPReference) {
				t.Errorf("no address refers to the pod IP")
			}
			// The same options give the same bytes, whatever map order the run picks.
			for range 5 {
				if again := toYAML(t, buildAll(t, tc.opts())); !bytes.Equal(again, out) {
					t.Fatalf("a second BuildAll differs from the first")
				}
			}
		})
	}
}

func TestBuildAllObjectsPerTopology(t *testing.T) {
	tests := []struct {
		name  string
		opts  BuildOptions
		want  map[string]int
		names []string
	}{
		{
			name: "single filesystem demo",
			opts: buildOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, filesystemStorage),
			want: map[string]int{
				"ConfigMap": 2, "ServiceAccount": 2, "Service": 3, "StatefulSet": 1, "NetworkPolicy": 1,
				"Role": 1, "RoleBinding": 1, "Deployment": 1,
			},
			names: []string{
				"ConfigMap/metrics-cortex-config", "ConfigMap/metrics-cortex-runtime", "ServiceAccount/metrics-cortex",
				"Service/metrics-all", "Service/metrics-all-headless", "StatefulSet/metrics-all",
				"NetworkPolicy/metrics-cortex", "ServiceAccount/metrics-gateway", "Role/metrics-gateway",
				"RoleBinding/metrics-gateway", "Deployment/metrics-gateway", "Service/metrics-gateway",
			},
		},
		{
			name: "microservices s3 small",
			opts: buildOptions(v1alpha1.TopologyMicroservices, v1alpha1.SizeSmall, awsStorage),
			want: map[string]int{
				// 6 components × (Service + headless) + gossip ring + gateway.
				"ConfigMap": 2, "ServiceAccount": 2, "Service": 14, "StatefulSet": 3, "Deployment": 4,
				// Every small component but the compactor runs more than one replica; so does the gateway.
				"PodDisruptionBudget": 6, "NetworkPolicy": 1, "Role": 1, "RoleBinding": 1,
			},
		},
		{
			name: "microservices gcs demo: one replica each, no PodDisruptionBudget",
			opts: buildOptions(v1alpha1.TopologyMicroservices, v1alpha1.SizeDemo, gcsStorage),
			want: map[string]int{
				"ConfigMap": 2, "ServiceAccount": 2, "Service": 14, "StatefulSet": 3, "Deployment": 4,
				"NetworkPolicy": 1, "Role": 1, "RoleBinding": 1,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objects := buildAll(t, tt.opts)
			counts, names := kindsOf(objects)
			if !reflect.DeepEqual(counts, tt.want) {
				t.Errorf("kinds = %v, want %v", counts, tt.want)
			}
			if tt.names != nil && !reflect.DeepEqual(names, tt.names) {
				t.Errorf("objects = %v, want %v", names, tt.names)
			}
			seen := map[string]bool{}
			for _, obj := range objects {
				key := fmt.Sprintf("%T/%s", obj, obj.GetName())
				if seen[key] {
					t.Errorf("%s built twice", key)
				}
				seen[key] = true
				if obj.GetNamespace() != "observability" {
					t.Errorf("%s is in namespace %q", key, obj.GetNamespace())
				}
				if len(obj.GetOwnerReferences()) > 0 {
					t.Errorf("%s has owner references; the controller sets them", key)
				}
				if obj.GetObjectKind().GroupVersionKind().Version == "" {
					t.Errorf("%s has no apiVersion", key)
				}
				l := obj.GetLabels()
				if l[LabelPartOf] != PartOf || l[LabelManagedBy] != ManagedBy || l[LabelInstance] != "metrics" || l[LabelComponent] == "" {
					t.Errorf("%s has labels %v", key, l)
				}
			}
		})
	}
}

func TestSingleTopologyVolume(t *testing.T) {
	tests := []struct {
		name      string
		storage   v1alpha1.StorageSpec
		wantSize  string
		wantClass *string
	}{
		{"filesystem default", filesystemStorage, "10Gi", nil},
		{"filesystem size and class", v1alpha1.StorageSpec{Type: v1alpha1.StorageFilesystem, Filesystem: &v1alpha1.FilesystemStorage{
			Size: ptr.To(resource.MustParse("50Gi")), StorageClassName: ptr.To("fast"),
		}}, "50Gi", ptr.To("fast")},
		{"s3 keeps a volume for the WAL", minioStorage, "10Gi", nil},
		{"gcs keeps a volume for the WAL", gcsEmulatorStorage, "10Gi", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objects := buildAll(t, buildOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, tt.storage))
			sts := find[*appsv1.StatefulSet](t, objects, "metrics-all")
			if *sts.Spec.Replicas != 1 {
				t.Errorf("replicas = %d, want 1", *sts.Spec.Replicas)
			}
			if len(sts.Spec.VolumeClaimTemplates) != 1 {
				t.Fatalf("volume claim templates: %d, want 1", len(sts.Spec.VolumeClaimTemplates))
			}
			claim := sts.Spec.VolumeClaimTemplates[0]
			if got := claim.Spec.Resources.Requests[corev1.ResourceStorage]; got.String() != tt.wantSize {
				t.Errorf("volume size = %s, want %s", got.String(), tt.wantSize)
			}
			if !reflect.DeepEqual(claim.Spec.StorageClassName, tt.wantClass) {
				t.Errorf("storage class = %v, want %v", claim.Spec.StorageClassName, tt.wantClass)
			}
			mount := mountAt(sts.Spec.Template.Spec.Containers[0], DataDir)
			if mount == nil || mount.Name != claim.Name {
				t.Errorf("the claim %s is not mounted at %s: %+v", claim.Name, DataDir, mount)
			}
		})
	}
}

func mountAt(c corev1.Container, dir string) *corev1.VolumeMount {
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].MountPath == dir {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

func volumeNamed(spec corev1.PodSpec, name string) *corev1.Volume {
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == name {
			return &spec.Volumes[i]
		}
	}
	return nil
}

func TestMicroservicesWorkloads(t *testing.T) {
	objects := buildAll(t, buildOptions(v1alpha1.TopologyMicroservices, v1alpha1.SizeSmall, awsStorage))
	for _, component := range []string{ComponentDistributor, ComponentQuerier, ComponentQueryFrontend} {
		d := find[*appsv1.Deployment](t, objects, ComponentName("metrics", component))
		if v := volumeNamed(d.Spec.Template.Spec, "data"); v == nil || v.EmptyDir == nil {
			t.Errorf("%s: data volume %+v, want an emptyDir", component, v)
		}
		if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType {
			t.Errorf("%s: strategy %s", component, d.Spec.Strategy.Type)
		}
	}
	for _, tt := range []struct {
		component string
		strategy  appsv1.StatefulSetUpdateStrategyType
		grace     int64
	}{
		{ComponentIngester, appsv1.OnDeleteStatefulSetStrategyType, 240},
		{ComponentStoreGateway, appsv1.RollingUpdateStatefulSetStrategyType, 30},
		{ComponentCompactor, appsv1.RollingUpdateStatefulSetStrategyType, 30},
	} {
		sts := find[*appsv1.StatefulSet](t, objects, ComponentName("metrics", tt.component))
		if sts.Spec.UpdateStrategy.Type != tt.strategy {
			t.Errorf("%s: update strategy %s, want %s", tt.component, sts.Spec.UpdateStrategy.Type, tt.strategy)
		}
		if *sts.Spec.Template.Spec.TerminationGracePeriodSeconds != tt.grace {
			t.Errorf("%s: grace period %d, want %d", tt.component, *sts.Spec.Template.Spec.TerminationGracePeriodSeconds, tt.grace)
		}
		if sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
			t.Errorf("%s: pod management %s, want Parallel", tt.component, sts.Spec.PodManagementPolicy)
		}
		if sts.Spec.ServiceName != HeadlessServiceName("metrics", tt.component) {
			t.Errorf("%s: serviceName %s", tt.component, sts.Spec.ServiceName)
		}
		if len(sts.Spec.VolumeClaimTemplates) != 1 || volumeNamed(sts.Spec.Template.Spec, "data") != nil {
			t.Errorf("%s: data must come from one volume claim template, not a pod volume", tt.component)
		}
	}

	// A query-frontend is ready only once a querier connected, and queriers find it through its headless Service.
	for _, component := range []string{ComponentQueryFrontend, ComponentQuerier, ComponentIngester} {
		headless := find[*corev1.Service](t, objects, HeadlessServiceName("metrics", component))
		if want := component == ComponentQueryFrontend; headless.Spec.PublishNotReadyAddresses != want {
			t.Errorf("%s headless Service: publishNotReadyAddresses %v, want %v", component, headless.Spec.PublishNotReadyAddresses, want)
		}
	}

	gossip := find[*corev1.Service](t, objects, GossipRingServiceName("metrics"))
	if gossip.Spec.ClusterIP != corev1.ClusterIPNone || !gossip.Spec.PublishNotReadyAddresses {
		t.Errorf("gossip ring: clusterIP %q publishNotReady %v", gossip.Spec.ClusterIP, gossip.Spec.PublishNotReadyAddresses)
	}
	if !reflect.DeepEqual(gossip.Spec.Selector, map[string]string{LabelName: AppCortex, LabelInstance: "metrics"}) {
		t.Errorf("gossip ring selects %v, want every Cortex pod of the cluster", gossip.Spec.Selector)
	}
	templates := podTemplates(objects)
	for _, component := range MicroservicesComponents {
		name := ComponentName("metrics", component)
		pod := labels.Set(templates[name].Labels)
		if !labels.SelectorFromSet(gossip.Spec.Selector).Matches(pod) {
			t.Errorf("gossip ring does not select %s", name)
		}
		for _, svcName := range []string{name, HeadlessServiceName("metrics", component)} {
			svc := find[*corev1.Service](t, objects, svcName)
			if !labels.SelectorFromSet(svc.Spec.Selector).Matches(pod) {
				t.Errorf("Service %s does not select the pods of %s", svcName, name)
			}
			for other, tmpl := range templates {
				if other != name && labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(tmpl.Labels)) {
					t.Errorf("Service %s also selects the pods of %s", svcName, other)
				}
			}
		}
		if !slices.ContainsFunc(templates[name].Spec.Containers[0].Ports, func(p corev1.ContainerPort) bool {
			return p.Name == PortGossip && p.ContainerPort == DefaultGossipPort
		}) {
			t.Errorf("%s has no gossip port", name)
		}
	}
}

func TestOverridesReplacePresets(t *testing.T) {
	custom := corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("3")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("12Gi")},
	}
	tests := []struct {
		name         string
		size         v1alpha1.SizePreset
		overrides    *v1alpha1.ComponentOverrides
		workload     string
		wantReplicas int32
		wantCPU      string
		wantMemLimit string
	}{
		{"preset querier small", v1alpha1.SizeSmall, nil, "metrics-querier", 2, "250m", "2Gi"},
		{"preset ingester medium", v1alpha1.SizeMedium, nil, "metrics-ingester", 5, "1", "8Gi"},
		{"replicas override keeps preset resources", v1alpha1.SizeSmall,
			&v1alpha1.ComponentOverrides{Querier: &v1alpha1.ComponentSpec{Replicas: ptr.To[int32](7)}},
			"metrics-querier", 7, "250m", "2Gi"},
		{"resources override replaces requests and limits", v1alpha1.SizeSmall,
			&v1alpha1.ComponentOverrides{Ingester: &v1alpha1.ComponentSpec{Resources: &custom}},
			"metrics-ingester", 3, "3", "12Gi"},
		{"ingesters never fewer than the replication factor", v1alpha1.SizeSmall,
			&v1alpha1.ComponentOverrides{Ingester: &v1alpha1.ComponentSpec{Replicas: ptr.To[int32](1)}},
			"metrics-ingester", 3, "500m", "4Gi"},
		{"gateway override", v1alpha1.SizeMedium,
			&v1alpha1.ComponentOverrides{Gateway: &v1alpha1.ComponentSpec{Replicas: ptr.To[int32](5)}},
			"metrics-gateway", 5, "250m", "512Mi"},
		{"gateway demo", v1alpha1.SizeDemo, nil, "metrics-gateway", 1, "50m", "256Mi"},
		{"gateway small", v1alpha1.SizeSmall, nil, "metrics-gateway", 2, "100m", "256Mi"},
		{"gateway medium", v1alpha1.SizeMedium, nil, "metrics-gateway", 3, "250m", "512Mi"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := buildOptions(v1alpha1.TopologyMicroservices, tt.size, awsStorage)
			opts.Components = tt.overrides
			objects := buildAll(t, opts)
			var replicas int32
			for _, obj := range objects {
				switch w := obj.(type) {
				case *appsv1.Deployment:
					if w.Name == tt.workload {
						replicas = *w.Spec.Replicas
					}
				case *appsv1.StatefulSet:
					if w.Name == tt.workload {
						replicas = *w.Spec.Replicas
					}
				}
			}
			if replicas != tt.wantReplicas {
				t.Errorf("replicas = %d, want %d", replicas, tt.wantReplicas)
			}
			res := podTemplates(objects)[tt.workload].Spec.Containers[0].Resources
			if got := res.Requests[corev1.ResourceCPU]; got.String() != tt.wantCPU {
				t.Errorf("cpu request = %s, want %s", got.String(), tt.wantCPU)
			}
			if got := res.Limits[corev1.ResourceMemory]; got.String() != tt.wantMemLimit {
				t.Errorf("memory limit = %s, want %s", got.String(), tt.wantMemLimit)
			}
			if tt.overrides != nil && tt.overrides.Ingester != nil && tt.overrides.Ingester.Resources != nil {
				if _, ok := res.Requests[corev1.ResourceMemory]; ok {
					t.Errorf("the preset's memory request survived a resources override: %v", res.Requests)
				}
			}
			hasPDB := slices.ContainsFunc(objects, func(o client.Object) bool {
				return o.GetObjectKind().GroupVersionKind().Kind == "PodDisruptionBudget" && o.GetName() == tt.workload
			})
			if hasPDB != (tt.wantReplicas > 1) {
				t.Errorf("PodDisruptionBudget present %v with %d replicas", hasPDB, tt.wantReplicas)
			}
		})
	}
}

func TestPresetsCoverEverySizeAndComponent(t *testing.T) {
	components := append([]string{TargetAll, ComponentGateway}, MicroservicesComponents...)
	for _, size := range []v1alpha1.SizePreset{v1alpha1.SizeDemo, v1alpha1.SizeSmall, v1alpha1.SizeMedium} {
		if len(Presets[size]) != len(components) {
			t.Errorf("%s: %d presets, want %d", size, len(Presets[size]), len(components))
		}
		for _, component := range components {
			p, ok := Presets[size][component]
			if !ok || p.Replicas < 1 {
				t.Errorf("%s %s: preset %+v", size, component, p)
				continue
			}
			for _, q := range []string{p.CPU, p.Memory, p.MemoryLimit} {
				if _, err := resource.ParseQuantity(q); err != nil {
					t.Errorf("%s %s: %q: %v", size, component, q, err)
				}
			}
			if (p.Volume != "") != stateful(component) {
				t.Errorf("%s %s: volume %q, stateful %v", size, component, p.Volume, stateful(component))
			}
			if (component == ComponentIngester || component == ComponentStoreGateway) && int(p.Replicas) < ReplicationFactor(size) {
				t.Errorf("%s %s: %d replicas below the replication factor", size, component, p.Replicas)
			}
		}
	}
}

func TestConfigHashFollowsTheCortexConfigOnly(t *testing.T) {
	hashes := func(opts BuildOptions) map[string]string {
		t.Helper()
		out := map[string]string{}
		for name, tmpl := range podTemplates(buildAll(t, opts)) {
			if tmpl.Labels[LabelName] == AppCortex {
				out[name] = tmpl.Annotations[ConfigHashAnnotation]
			}
		}
		if len(out) == 0 {
			t.Fatal("no Cortex pod template")
		}
		return out
	}
	base := buildOptions(v1alpha1.TopologyMicroservices, v1alpha1.SizeSmall, awsStorage)
	before := hashes(base)
	config, err := CortexConfig(base.Options)
	if err != nil {
		t.Fatal(err)
	}
	for name, hash := range before {
		if hash != ConfigHash(config) || len(hash) != 64 {
			t.Errorf("%s: hash %q, want the SHA-256 of the rendered config", name, hash)
		}
	}

	// A tenant's new limit changes the runtime ConfigMap, not the pods.
	withTenant := base
	overrides, err := RuntimeOverrides(base.DefaultTenantLimits, map[string]v1alpha1.TenantLimits{
		"team-a": {IngestionRate: ptr.To[int64](99999)},
	})
	if err != nil {
		t.Fatal(err)
	}
	withTenant.RuntimeOverrides = overrides
	if got := hashes(withTenant); !reflect.DeepEqual(got, before) {
		t.Errorf("new runtime overrides changed the pod templates' hash: %v -> %v", before, got)
	}
	runtimeCM := find[*corev1.ConfigMap](t, buildAll(t, withTenant), RuntimeConfigMapName("metrics"))
	if runtimeCM.Data[RuntimeConfigKey] != string(overrides) {
		t.Errorf("runtime ConfigMap does not hold the overrides it was given")
	}

	// A change to the Cortex configuration rolls every Cortex pod.
	longer := base
	longer.MetricsRetentionDays = 90
	after := hashes(longer)
	for name, hash := range after {
		if hash == before[name] {
			t.Errorf("%s: hash unchanged after the Cortex config changed", name)
		}
	}
	cm := find[*corev1.ConfigMap](t, buildAll(t, longer), CortexConfigMapName("metrics"))
	if !strings.Contains(cm.Data[CortexConfigKey], "compactor_blocks_retention_period: 90d") {
		t.Errorf("Cortex ConfigMap lacks the new retention:\n%s", cm.Data[CortexConfigKey])
	}
}

func TestCortexContainers(t *testing.T) {
	tests := []struct {
		name    string
		opts    BuildOptions
		wantGCS bool
	}{
		{"single filesystem", buildOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, filesystemStorage), false},
		{"single gcs with key", buildOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, gcsEmulatorStorage), true},
		{"microservices gcs with workload identity", buildOptions(v1alpha1.TopologyMicroservices, v1alpha1.SizeMedium, gcsStorage), false},
		{"microservices s3", buildOptions(v1alpha1.TopologyMicroservices, v1alpha1.SizeSmall, minioStorage), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objects := buildAll(t, tt.opts)
			count := 0
			for name, tmpl := range podTemplates(objects) {
				if tmpl.Labels[LabelName] != AppCortex {
					continue
				}
				count++
				spec := tmpl.Spec
				c := spec.Containers[0]
				target := tmpl.Labels[LabelComponent]
				if c.Image != "cortexproject/cortex:"+DefaultCortexVersion {
					t.Errorf("%s: image %s", name, c.Image)
				}
				if !reflect.DeepEqual(c.Args, CortexArgs(tt.opts.Options, target)) || !reflect.DeepEqual(c.Env, CortexEnv(tt.opts.Options)) {
					t.Errorf("%s: args or env are not CortexArgs/CortexEnv of target %s", name, target)
				}
				if spec.ServiceAccountName != "metrics-cortex" || spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
					t.Errorf("%s: service account %s automount %v", name, spec.ServiceAccountName, spec.AutomountServiceAccountToken)
				}
				p := c.ReadinessProbe
				if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/ready" || p.HTTPGet.Port.StrVal != PortHTTP {
					t.Errorf("%s: readiness probe %+v", name, p)
				}
				for dir, volume := range map[string]string{"/etc/cortex/config": "config", "/etc/cortex/runtime": "runtime", DataDir: "data"} {
					if m := mountAt(c, dir); m == nil || m.Name != volume {
						t.Errorf("%s: mount at %s = %+v, want volume %s", name, dir, m, volume)
					}
				}
				for volume, cm := range map[string]string{"config": "metrics-cortex-config", "runtime": "metrics-cortex-runtime"} {
					v := volumeNamed(spec, volume)
					if v == nil || v.ConfigMap == nil || v.ConfigMap.Name != cm {
						t.Errorf("%s: volume %s = %+v, want ConfigMap %s", name, volume, v, cm)
					}
				}
				gcsMount := mountAt(c, "/etc/cortex/gcs")
				if (gcsMount != nil) != tt.wantGCS {
					t.Errorf("%s: GCS credentials mounted %v, want %v", name, gcsMount != nil, tt.wantGCS)
				}
				if tt.wantGCS {
					v := volumeNamed(spec, gcsMount.Name)
					if v == nil || v.Secret == nil || v.Secret.SecretName != "gcs-key" ||
						!reflect.DeepEqual(v.Secret.Items, []corev1.KeyToPath{{Key: "service-account.json", Path: "service-account.json"}}) {
						t.Errorf("%s: GCS volume %+v, want Secret gcs-key's service-account.json", name, v)
					}
				}
			}
			if count == 0 {
				t.Fatal("no Cortex pod template")
			}
		})
	}
}

func TestEveryContainerIsRestricted(t *testing.T) {
	for _, opts := range []BuildOptions{
		buildOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, filesystemStorage),
		buildOptions(v1alpha1.TopologyMicroservices, v1alpha1.SizeMedium, gcsEmulatorStorage),
	} {
		templates := podTemplates(buildAll(t, opts))
		if len(templates) < 2 {
			t.Fatalf("only %d pod templates", len(templates))
		}
		for name, tmpl := range templates {
			containers := append(slices.Clone(tmpl.Spec.InitContainers), tmpl.Spec.Containers...)
			for _, c := range containers {
				sc := c.SecurityContext
				if sc == nil || !ptr.Deref(sc.RunAsNonRoot, false) || !ptr.Deref(sc.ReadOnlyRootFilesystem, false) ||
					ptr.Deref(sc.AllowPrivilegeEscalation, true) || sc.Capabilities == nil ||
					!reflect.DeepEqual(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 ||
					sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
					t.Errorf("%s/%s: security context %+v", name, c.Name, sc)
				}
			}
			psc := tmpl.Spec.SecurityContext
			if psc == nil || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
				t.Errorf("%s: pod must name a non-root user; the Cortex image does not", name)
			}
		}
	}
}

func TestNetworkPolicyAdmitsOnlyTheClusterAndScrapers(t *testing.T) {
	opts := buildOptions(v1alpha1.TopologyMicroservices, v1alpha1.SizeSmall, awsStorage)
	objects := buildAll(t, opts)
	np := find[*networkingv1.NetworkPolicy](t, objects, "metrics-cortex")
	if !reflect.DeepEqual(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}) {
		t.Errorf("policy types %v", np.Spec.PolicyTypes)
	}
	podSel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		t.Fatal(err)
	}
	for name, tmpl := range podTemplates(objects) {
		cortex := tmpl.Labels[LabelName] == AppCortex
		if podSel.Matches(labels.Set(tmpl.Labels)) != cortex {
			t.Errorf("policy applies to %s: %v, want %v", name, !cortex, cortex)
		}
	}
	// Other clusters' Cortex pods are not covered and are not admitted.
	other := labels.Set(Labels("other", ComponentIngester))
	if podSel.Matches(other) {
		t.Errorf("the policy selects another cluster's pods")
	}

	type peer struct {
		selector   map[string]string
		anyNS      bool
		onlyHTTP   bool
		allowedFor string
	}
	want := []peer{
		{CortexPodsSelector("metrics"), false, false, "Cortex pods of the cluster"},
		{GatewayPodsSelector("metrics"), false, true, "gateway"},
		{map[string]string{LabelName: "prometheus"}, true, true, "Prometheus"},
		{map[string]string{LabelName: "opstrace", LabelComponent: "controller"}, true, true, "the controller (ingester ring during upgrades)"},
	}
	if len(np.Spec.Ingress) != len(want) {
		t.Fatalf("%d ingress rules, want %d", len(np.Spec.Ingress), len(want))
	}
	for i, rule := range np.Spec.Ingress {
		w := want[i]
		if len(rule.From) != 1 || rule.From[0].IPBlock != nil || rule.From[0].PodSelector == nil {
			t.Errorf("%s: from %+v", w.allowedFor, rule.From)
			continue
		}
		from := rule.From[0]
		if !reflect.DeepEqual(from.PodSelector.MatchLabels, w.selector) || len(from.PodSelector.MatchExpressions) > 0 {
			t.Errorf("%s: pod selector %+v, want %v", w.allowedFor, from.PodSelector, w.selector)
		}
		if (from.NamespaceSelector != nil) != w.anyNS {
			t.Errorf("%s: namespace selector %+v", w.allowedFor, from.NamespaceSelector)
		}
		if w.onlyHTTP {
			if len(rule.Ports) != 1 || rule.Ports[0].Port.IntValue() != DefaultHTTPPort {
				t.Errorf("%s: ports %+v, want only %d", w.allowedFor, rule.Ports, DefaultHTTPPort)
			}
		} else if len(rule.Ports) != 0 {
			t.Errorf("%s: ports %+v, want all", w.allowedFor, rule.Ports)
		}
	}
}

func TestGateway(t *testing.T) {
	tests := []struct {
		name                       string
		opts                       BuildOptions
		distributor, queryFrontend string
		serviceType                corev1.ServiceType
		wantMetricsService         bool
	}{
		{
			name:        "single, ClusterIP",
			opts:        buildOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, filesystemStorage),
			distributor: "metrics-all", queryFrontend: "metrics-all", serviceType: corev1.ServiceTypeClusterIP,
		},
		{
			name: "microservices, LoadBalancer",
			opts: func() BuildOptions {
				o := buildOptions(v1alpha1.TopologyMicroservices, v1alpha1.SizeSmall, awsStorage)
				o.Gateway = v1alpha1.GatewaySpec{ServiceType: corev1.ServiceTypeLoadBalancer, AllowedSourceRanges: []string{"203.0.113.0/24"}}
				return o
			}(),
			distributor: "metrics-distributor", queryFrontend: "metrics-query-frontend",
			serviceType: corev1.ServiceTypeLoadBalancer, wantMetricsService: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objects := buildAll(t, tt.opts)
			d := find[*appsv1.Deployment](t, objects, "metrics-gateway")
			c := d.Spec.Template.Spec.Containers[0]
			wantArgs := []string{
				"--audience=observability/metrics",
				"--namespace=$(POD_NAMESPACE)",
				"--auth-secret=metrics-gateway-auth",
				"--distributor-service=" + tt.distributor,
				"--query-frontend-service=" + tt.queryFrontend,
				"--tls-cert-file=/etc/opstrace/tls/tls.crt",
				"--tls-key-file=/etc/opstrace/tls/tls.key",
				"--listen-address=$(POD_IP):8443",
				"--internal-listen-address=$(POD_IP):8081",
			}
			if !reflect.DeepEqual(c.Args, wantArgs) {
				t.Errorf("args =\n%q\nwant\n%q", c.Args, wantArgs)
			}
			if c.Image != testGatewayImage {
				t.Errorf("image %s", c.Image)
			}
			env := map[string]string{}
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
					env[e.Name] = e.ValueFrom.FieldRef.FieldPath
				}
			}
			if env["POD_NAMESPACE"] != "metadata.namespace" || env["POD_IP"] != "status.podIP" {
				t.Errorf("downward API env %v", env)
			}
			if c.ReadinessProbe.HTTPGet.Path != "/-/ready" || c.LivenessProbe.HTTPGet.Path != "/-/healthy" ||
				c.ReadinessProbe.HTTPGet.Port.StrVal != PortHTTPMetrics || c.LivenessProbe.HTTPGet.Port.StrVal != PortHTTPMetrics {
				t.Errorf("probes %+v %+v, want /-/ready and /-/healthy on the internal port", c.ReadinessProbe.HTTPGet, c.LivenessProbe.HTTPGet)
			}
			tls := volumeNamed(d.Spec.Template.Spec, mountAt(c, "/etc/opstrace/tls").Name)
			if tls == nil || tls.Secret == nil || tls.Secret.SecretName != "metrics-gateway-tls" {
				t.Errorf("TLS volume %+v", tls)
			}
			spec := d.Spec.Template.Spec
			if spec.ServiceAccountName != "metrics-gateway" || !ptr.Deref(spec.AutomountServiceAccountToken, false) {
				t.Errorf("gateway service account %s automount %v", spec.ServiceAccountName, spec.AutomountServiceAccountToken)
			}
			sa := find[*corev1.ServiceAccount](t, objects, "metrics-gateway")
			if !ptr.Deref(sa.AutomountServiceAccountToken, false) {
				t.Errorf("gateway ServiceAccount does not mount its token")
			}

			role := find[*rbacv1.Role](t, objects, "metrics-gateway")
			wantRules := []rbacv1.PolicyRule{
				{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{"metrics-gateway-auth"}, Verbs: []string{"get", "list", "watch"}},
				{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
			}
			if !reflect.DeepEqual(role.Rules, wantRules) {
				t.Errorf("role rules %+v, want %+v", role.Rules, wantRules)
			}
			binding := find[*rbacv1.RoleBinding](t, objects, "metrics-gateway")
			if binding.RoleRef.Name != role.Name || binding.RoleRef.Kind != "Role" || len(binding.Subjects) != 1 ||
				binding.Subjects[0].Name != sa.Name || binding.Subjects[0].Namespace != "observability" {
				t.Errorf("role binding %+v", binding)
			}

			svc := find[*corev1.Service](t, objects, "metrics-gateway")
			if svc.Spec.Type != tt.serviceType {
				t.Errorf("service type %s, want %s", svc.Spec.Type, tt.serviceType)
			}
			https := svc.Spec.Ports[0]
			if https.Name != "https" || https.Port != 443 || https.TargetPort.StrVal != PortHTTPS {
				t.Errorf("https port %+v", https)
			}
			if !reflect.DeepEqual(svc.Spec.LoadBalancerSourceRanges, tt.opts.Gateway.AllowedSourceRanges) {
				t.Errorf("source ranges %v", svc.Spec.LoadBalancerSourceRanges)
			}
			metricsSvc := svc
			if tt.wantMetricsService {
				if len(svc.Spec.Ports) != 1 {
					t.Errorf("the %s Service exposes %v; the internal port must stay inside", tt.serviceType, svc.Spec.Ports)
				}
				metricsSvc = find[*corev1.Service](t, objects, "metrics-gateway-metrics")
				if metricsSvc.Spec.Type != corev1.ServiceTypeClusterIP {
					t.Errorf("metrics Service type %s", metricsSvc.Spec.Type)
				}
			}
			if !slices.ContainsFunc(metricsSvc.Spec.Ports, func(p corev1.ServicePort) bool {
				return p.Name == PortHTTPMetrics && p.Port == 8081
			}) {
				t.Errorf("no http-metrics port 8081 on %s: %+v", metricsSvc.Name, metricsSvc.Spec.Ports)
			}
			for _, s := range []*corev1.Service{svc, metricsSvc} {
				if !labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
					t.Errorf("Service %s does not select the gateway pods", s.Name)
				}
			}
		})
	}
}

func TestMonitoringOnlyWithTheCRDs(t *testing.T) {
	for _, enabled := range []bool{false, true} {
		opts := buildOptions(v1alpha1.TopologyMicroservices, v1alpha1.SizeSmall, awsStorage)
		opts.MonitoringCRDs = enabled
		objects := buildAll(t, opts)
		var monitors []*monitoringv1.ServiceMonitor
		var rules []*monitoringv1.PrometheusRule
		for _, obj := range objects {
			switch o := obj.(type) {
			case *monitoringv1.ServiceMonitor:
				monitors = append(monitors, o)
			case *monitoringv1.PrometheusRule:
				rules = append(rules, o)
			}
			if obj.GetObjectKind().GroupVersionKind().Group == "monitoring.coreos.com" && !enabled {
				t.Errorf("%s built without the monitoring CRDs", obj.GetName())
			}
		}
		if !enabled {
			if len(monitors)+len(rules) > 0 {
				t.Errorf("monitoring objects without the CRDs")
			}
			continue
		}
		if len(monitors) != len(MicroservicesComponents)+1 || len(rules) != 1 {
			t.Fatalf("%d ServiceMonitors and %d PrometheusRules, want %d and 1", len(monitors), len(rules), len(MicroservicesComponents)+1)
		}
		// Each ServiceMonitor selects exactly one Service of the cluster, which has the port it scrapes.
		for _, sm := range monitors {
			sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
			if err != nil {
				t.Fatal(err)
			}
			var matched []*corev1.Service
			for _, obj := range objects {
				if svc, ok := obj.(*corev1.Service); ok && sel.Matches(labels.Set(svc.Labels)) {
					matched = append(matched, svc)
				}
			}
			if len(matched) != 1 || len(sm.Spec.Endpoints) != 1 {
				t.Errorf("ServiceMonitor %s selects %d Services with %d endpoints, want 1 and 1", sm.Name, len(matched), len(sm.Spec.Endpoints))
				continue
			}
			ep := sm.Spec.Endpoints[0]
			if ep.Path != "/metrics" || !slices.ContainsFunc(matched[0].Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == ep.Port }) {
				t.Errorf("ServiceMonitor %s scrapes %s%s, which Service %s lacks", sm.Name, ep.Port, ep.Path, matched[0].Name)
			}
			wantPort := PortHTTP
			if sm.Name == "metrics-gateway" {
				wantPort = PortHTTPMetrics
			}
			if ep.Port != wantPort {
				t.Errorf("ServiceMonitor %s port %s, want %s", sm.Name, ep.Port, wantPort)
			}
		}
		alerts := map[string]monitoringv1.Rule{}
		for _, rule := range rules[0].Spec.Groups[0].Rules {
			alerts[rule.Alert] = rule
		}
		for _, name := range []string{
			"CortexIngesterUnhealthy", "CortexRequestErrors", "CortexIngesterReachingSeriesLimit",
			"CortexCompactorHasNotSuccessfullyRunCompaction", "OpstraceGatewayAuthFailuresHigh",
		} {
			rule, ok := alerts[name]
			if !ok {
				t.Errorf("no alert %s", name)
				continue
			}
			if rule.Annotations["summary"] == "" || rule.Annotations["description"] == "" ||
				rule.Annotations["runbook_url"] != "https://github.com/opstrace/opstrace/blob/main/docs/runbooks.md#"+strings.ToLower(name) {
				t.Errorf("%s: annotations %v", name, rule.Annotations)
			}
			if !strings.Contains(rule.Expr.StrVal, `namespace="observability"`) || rule.Labels["severity"] == "" {
				t.Errorf("%s: expression %q is not scoped to the namespace, or has no severity", name, rule.Expr.StrVal)
			}
		}
		if !strings.Contains(alerts["OpstraceGatewayAuthFailuresHigh"].Expr.StrVal, "opstrace_gateway_auth_failures_total") {
			t.Errorf("gateway alert does not use opstrace_gateway_auth_failures_total")
		}
	}
}

func TestBuildAllRejectsIncompleteOptions(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*BuildOptions)
		want   string
	}{
		{"no Cortex image", func(o *BuildOptions) { o.CortexImage = "" }, "the Cortex image is required"},
		{"no gateway image", func(o *BuildOptions) { o.GatewayImage = "" }, "the gateway image is required"},
		{"unknown size", func(o *BuildOptions) { o.Size = "xl" }, `size "xl"`},
		{"invalid Cortex options", func(o *BuildOptions) { o.Namespace = "" }, "cluster name and namespace are required"},
		{"invalid options with a given config", func(o *BuildOptions) { o.CortexConfig = []byte("x: 1\n"); o.HTTPPort = 0 }, "HTTP port 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := buildOptions(v1alpha1.TopologySingle, v1alpha1.SizeDemo, filesystemStorage)
			tt.mutate(&opts)
			objects, err := BuildAll(opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) || objects != nil {
				t.Fatalf("BuildAll = %d objects, %v; want an error containing %q", len(objects), err, tt.want)
			}
		})
	}
}

func TestNewBuildOptions(t *testing.T) {
	mc := &v1alpha1.MetricsCluster{}
	mc.Name, mc.Namespace = "metrics", "observability"
	mc.Spec = v1alpha1.MetricsClusterSpec{
		Topology: v1alpha1.TopologySingle, Size: v1alpha1.SizeSmall, Storage: filesystemStorage,
		Retention:  v1alpha1.RetentionSpec{MetricsDays: 30},
		Components: &v1alpha1.ComponentOverrides{Gateway: &v1alpha1.ComponentSpec{Replicas: ptr.To[int32](4)}},
		Gateway:    v1alpha1.GatewaySpec{ServiceType: corev1.ServiceTypeNodePort},
	}
	opts := NewBuildOptions(mc, testGatewayImage, true)
	if opts.CortexImage != "cortexproject/cortex:v1.21.1" || opts.GatewayImage != testGatewayImage || !opts.MonitoringCRDs {
		t.Errorf("images %s %s monitoring %v", opts.CortexImage, opts.GatewayImage, opts.MonitoringCRDs)
	}
	if opts.ReplicationFactor != 1 {
		t.Errorf("single process with size small: replication factor %d, want 1 (there is one ingester)", opts.ReplicationFactor)
	}
	objects := buildAll(t, opts)
	if d := find[*appsv1.Deployment](t, objects, "metrics-gateway"); *d.Spec.Replicas != 4 {
		t.Errorf("gateway replicas %d, want the override 4", *d.Spec.Replicas)
	}
	mc.Spec.Version = "v1.22.0"
	mc.Spec.Topology = v1alpha1.TopologyMicroservices
	mc.Spec.Storage = awsStorage
	opts = NewBuildOptions(mc, testGatewayImage, false)
	if opts.CortexImage != "cortexproject/cortex:v1.22.0" || opts.ReplicationFactor != 3 {
		t.Errorf("image %s replication %d", opts.CortexImage, opts.ReplicationFactor)
	}
	// The options are a copy: changing them leaves the MetricsCluster alone.
	*opts.Components.Gateway.Replicas = 9
	if *mc.Spec.Components.Gateway.Replicas != 4 {
		t.Errorf("NewBuildOptions shares the MetricsCluster's overrides")
	}
}
