package manifests

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
)

// Preset is the size of one component in a size preset.
type Preset struct {
	Replicas int32
	// CPU and Memory are the container's requests; MemoryLimit its memory limit. There is no CPU limit:
	// throttling a Cortex process under load only makes it slower to catch up.
	CPU, Memory, MemoryLimit string
	// Volume is the size of the component's persistent volume; empty for stateless components.
	Volume string
}

// Presets is the one table of replicas and resources per size and component (TargetAll for topology
// single, a Component* constant or ComponentGateway). A component's spec.components entry replaces its
// replicas and/or its resources (requests and limits together). Ingesters and store-gateways never run
// fewer replicas than the replication factor.
//
//	size    component       replicas  cpu   memory  mem limit  volume
//	demo    all                    1  500m  1Gi     2Gi        10Gi (filesystem.size when set)
//	demo    distributor            1  100m  256Mi   512Mi      -
//	demo    ingester               1  250m  1Gi     2Gi        10Gi
//	demo    querier                1  100m  256Mi   1Gi        -
//	demo    query-frontend         1  100m  128Mi   256Mi      -
//	demo    store-gateway          1  100m  256Mi   1Gi        5Gi
//	demo    compactor              1  100m  256Mi   1Gi        10Gi
//	demo    gateway                1  50m   64Mi    256Mi      -
//	small   all                    1  1     2Gi     4Gi        10Gi (filesystem.size when set)
//	small   distributor            2  250m  512Mi   1Gi        -
//	small   ingester               3  500m  2Gi     4Gi        20Gi
//	small   querier                2  250m  512Mi   2Gi        -
//	small   query-frontend         2  100m  256Mi   512Mi      -
//	small   store-gateway          3  250m  1Gi     2Gi        10Gi
//	small   compactor              1  250m  512Mi   2Gi        20Gi
//	small   gateway                2  100m  128Mi   256Mi      -
//	medium  all                    1  2     4Gi     8Gi        10Gi (filesystem.size when set)
//	medium  distributor            3  500m  1Gi     2Gi        -
//	medium  ingester               5  1     4Gi     8Gi        50Gi
//	medium  querier                3  500m  1Gi     4Gi        -
//	medium  query-frontend         2  250m  512Mi   1Gi        -
//	medium  store-gateway          3  500m  2Gi     4Gi        20Gi
//	medium  compactor              2  500m  1Gi     4Gi        50Gi
//	medium  gateway                3  250m  256Mi   512Mi      -
var Presets = map[v1alpha1.SizePreset]map[string]Preset{
	v1alpha1.SizeDemo: {
		TargetAll:              {1, "500m", "1Gi", "2Gi", "10Gi"},
		ComponentDistributor:   {1, "100m", "256Mi", "512Mi", ""},
		ComponentIngester:      {1, "250m", "1Gi", "2Gi", "10Gi"},
		ComponentQuerier:       {1, "100m", "256Mi", "1Gi", ""},
		ComponentQueryFrontend: {1, "100m", "128Mi", "256Mi", ""},
		ComponentStoreGateway:  {1, "100m", "256Mi", "1Gi", "5Gi"},
		ComponentCompactor:     {1, "100m", "256Mi", "1Gi", "10Gi"},
		ComponentGateway:       {1, "50m", "64Mi", "256Mi", ""},
	},
	v1alpha1.SizeSmall: {
		TargetAll:              {1, "1", "2Gi", "4Gi", "10Gi"},
		ComponentDistributor:   {2, "250m", "512Mi", "1Gi", ""},
		ComponentIngester:      {3, "500m", "2Gi", "4Gi", "20Gi"},
		ComponentQuerier:       {2, "250m", "512Mi", "2Gi", ""},
		ComponentQueryFrontend: {2, "100m", "256Mi", "512Mi", ""},
		ComponentStoreGateway:  {3, "250m", "1Gi", "2Gi", "10Gi"},
		ComponentCompactor:     {1, "250m", "512Mi", "2Gi", "20Gi"},
		ComponentGateway:       {2, "100m", "128Mi", "256Mi", ""},
	},
	v1alpha1.SizeMedium: {
		TargetAll:              {1, "2", "4Gi", "8Gi", "10Gi"},
		ComponentDistributor:   {3, "500m", "1Gi", "2Gi", ""},
		ComponentIngester:      {5, "1", "4Gi", "8Gi", "50Gi"},
		ComponentQuerier:       {3, "500m", "1Gi", "4Gi", ""},
		ComponentQueryFrontend: {2, "250m", "512Mi", "1Gi", ""},
		ComponentStoreGateway:  {3, "500m", "2Gi", "4Gi", "20Gi"},
		ComponentCompactor:     {2, "500m", "1Gi", "4Gi", "50Gi"},
		ComponentGateway:       {3, "250m", "256Mi", "512Mi", ""},
	},
}

// componentSize is what a component runs with once the preset and the overrides are combined.
type componentSize struct {
	Replicas  int32
	Resources corev1.ResourceRequirements
	Volume    resource.Quantity // zero for stateless components
}

// override is the spec.components entry of a component, or nil.
func override(overrides *v1alpha1.ComponentOverrides, component string) *v1alpha1.ComponentSpec {
	if overrides == nil {
		return nil
	}
	switch component {
	case TargetAll:
		return overrides.All
	case ComponentDistributor:
		return overrides.Distributor
	case ComponentIngester:
		return overrides.Ingester
	case ComponentQuerier:
		return overrides.Querier
	case ComponentQueryFrontend:
		return overrides.QueryFrontend
	case ComponentStoreGateway:
		return overrides.StoreGateway
	case ComponentCompactor:
		return overrides.Compactor
	case ComponentGateway:
		return overrides.Gateway
	}
	return nil
}

// sizeOf combines the preset of component with its override. The single process always runs one replica;
// ingesters and store-gateways run at least the replication factor.
func sizeOf(opts BuildOptions, component string) componentSize {
	size := opts.Size
	if size == "" {
		size = v1alpha1.SizeDemo
	}
	preset := Presets[size][component]
	out := componentSize{
		Replicas: preset.Replicas,
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse(preset.CPU),
				corev1.ResourceMemory: resource.MustParse(preset.Memory),
			},
			Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(preset.MemoryLimit)},
		},
	}
	if preset.Volume != "" {
		out.Volume = resource.MustParse(preset.Volume)
	}
	if o := override(opts.Components, component); o != nil {
		if o.Replicas != nil {
			out.Replicas = *o.Replicas
		}
		if o.Resources != nil {
			out.Resources = *o.Resources.DeepCopy()
		}
	}
	switch component {
	case TargetAll:
		out.Replicas = 1
		if fs := opts.Storage.Filesystem; opts.Storage.Type == v1alpha1.StorageFilesystem && fs != nil && fs.Size != nil {
			out.Volume = fs.Size.DeepCopy()
		}
	case ComponentIngester, ComponentStoreGateway:
		out.Replicas = max(out.Replicas, int32(opts.ReplicationFactor))
	}
	return out
}
