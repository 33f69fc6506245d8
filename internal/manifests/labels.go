package manifests

// Label keys and values of every object the builders make. Selectors use SelectorLabels, never hand-written
// maps, so a workload, its Services, PodDisruptionBudget, NetworkPolicy and ServiceMonitor always agree.
const (
	LabelName      = "app.kubernetes.io/name"
	LabelInstance  = "app.kubernetes.io/instance"
	LabelComponent = "app.kubernetes.io/component"
	LabelPartOf    = "app.kubernetes.io/part-of"
	LabelManagedBy = "app.kubernetes.io/managed-by"

	// LabelHeadless marks headless Services, so that a ServiceMonitor selecting a component's Services scrapes
	// each pod once, through the ClusterIP Service.
	LabelHeadless = "opstrace.io/headless"

	AppCortex  = "cortex"
	AppGateway = "opstrace-gateway"
	PartOf     = "opstrace"
	ManagedBy  = "opstrace-controller"

	// ComponentGossipRing is the component label of the gossip-ring Service, which belongs to no single
	// component.
	ComponentGossipRing = "gossip-ring"
	// ComponentCortexShared is the component label of the objects all Cortex components share: the
	// ConfigMaps, the ServiceAccount and the NetworkPolicy.
	ComponentCortexShared = "cortex"

	// ConfigHashAnnotation on a Cortex pod template is the SHA-256 of the Cortex configuration, so a change
	// to it rolls the pods. The runtime overrides are not hashed: Cortex re-reads them itself.
	ConfigHashAnnotation = "opstrace.io/config-hash"

	// TemplateHashAnnotation on a Cortex pod template is the hash of the whole built template (this
	// annotation left out): the revision the upgrade planner compares. Every pod created from the template
	// carries it too, so the controller can tell which pods run the desired template.
	TemplateHashAnnotation = "opstrace.io/template-hash"
)

// appFor is the app.kubernetes.io/name of a component: the gateway is its own application, the rest Cortex.
func appFor(component string) string {
	if component == ComponentGateway {
		return AppGateway
	}
	if IsLokiComponent(component) {
		return AppLoki
	}
	return AppCortex
}

// Labels are the labels of every object of a component (TargetAll, a Component* constant,
// ComponentGateway or ComponentGossipRing) of a cluster.
func Labels(cluster, component string) map[string]string {
	labels := SelectorLabels(cluster, component)
	labels[LabelPartOf] = PartOf
	labels[LabelManagedBy] = ManagedBy
	return labels
}

// SelectorLabels select the pods of one component of a cluster.
func SelectorLabels(cluster, component string) map[string]string {
	return map[string]string{
		LabelName:      appFor(component),
		LabelInstance:  cluster,
		LabelComponent: component,
	}
}

// CortexPodsSelector selects every Cortex pod of a cluster, whatever its component.
func CortexPodsSelector(cluster string) map[string]string {
	return map[string]string{LabelName: AppCortex, LabelInstance: cluster}
}

// GatewayPodsSelector selects the gateway pods of a cluster.
func GatewayPodsSelector(cluster string) map[string]string {
	return SelectorLabels(cluster, ComponentGateway)
}
