package v1alpha1

// Condition types shared by MetricsCluster and Tenant. Components of a MetricsCluster add one condition each,
// named after the component.
const (
	// ConditionReady is True when every part serves traffic.
	ConditionReady = "Ready"
	// ConditionProgressing is True while the controller rolls out a change.
	ConditionProgressing = "Progressing"
	// ConditionDegraded is True when something the user must fix stops the controller, with the reason.
	ConditionDegraded = "Degraded"
)
