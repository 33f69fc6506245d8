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

// Reasons of conditions. They are stable identifiers; messages carry the details.
const (
	ReasonReady                    = "Ready"
	ReasonNotReady                 = "NotReady"
	ReasonReconciling              = "Reconciling"
	ReasonUpToDate                 = "UpToDate"
	ReasonRollingOut               = "RollingOut"
	ReasonNoProblem                = "NoProblem"
	ReasonCredentialsSecretMissing = "CredentialsSecretMissing"
	ReasonCredentialsSecretInvalid = "CredentialsSecretInvalid"
	ReasonClusterNotFound          = "ClusterNotFound"
	ReasonClusterAmbiguous         = "ClusterAmbiguous"
	ReasonClusterNotReady          = "ClusterNotReady"
	ReasonInvalidLimits            = "InvalidLimits"
	ReasonMonitoringUnavailable    = "MonitoringUnavailable"
	ReasonMonitoringConfigured     = "MonitoringConfigured"
	ReasonCertManagerUnavailable   = "CertManagerUnavailable"
	ReasonApplyFailed              = "ApplyFailed"
	// ReasonUpgrading: the Cortex components are being rolled out one at a time, in the upgrade order.
	ReasonUpgrading = "Upgrading"
	// ReasonUpgradeStalled: a pod of the new revision does not become Ready; the rollout waits for a person.
	ReasonUpgradeStalled = "UpgradeStalled"
	// ReasonVersionRefused: spec.version breaks the version skew policy (a downgrade, a skipped minor or a
	// new major version); no pod template is changed.
	ReasonVersionRefused = "VersionRefused"
)

// ConditionMonitoring says whether ServiceMonitors and alerts are set up for the cluster.
const ConditionMonitoring = "Monitoring"
