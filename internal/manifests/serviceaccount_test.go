package manifests

import (
	"maps"
	"testing"

	corev1 "k8s.io/api/core/v1"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
)

// spec.serviceAccounts gives the Cortex and the Loki pods a cloud identity each: the annotations land on
// their own ServiceAccount only, and a MetricsCluster without them builds ServiceAccounts without annotations.
func TestServiceAccountAnnotationsFromTheSpec(t *testing.T) {
	const cortexRole, lokiRole = "arn:aws:iam::111122223333:role/opstrace/opstrace-prod-cortex", "arn:aws:iam::111122223333:role/opstrace/opstrace-prod-loki"
	for _, tc := range []struct {
		name         string
		spec         v1alpha1.ServiceAccountsSpec
		cortex, loki map[string]string
	}{
		{name: "none", spec: v1alpha1.ServiceAccountsSpec{}},
		{name: "IRSA, a role each",
			spec: v1alpha1.ServiceAccountsSpec{
				Cortex: v1alpha1.ServiceAccountSettings{Annotations: map[string]string{"eks.amazonaws.com/role-arn": cortexRole}},
				Loki:   v1alpha1.ServiceAccountSettings{Annotations: map[string]string{"eks.amazonaws.com/role-arn": lokiRole}},
			},
			cortex: map[string]string{"eks.amazonaws.com/role-arn": cortexRole},
			loki:   map[string]string{"eks.amazonaws.com/role-arn": lokiRole}},
		{name: "workload identity for Cortex only",
			spec: v1alpha1.ServiceAccountsSpec{
				Cortex: v1alpha1.ServiceAccountSettings{Annotations: map[string]string{"iam.gke.io/gcp-service-account": "cortex@p.iam.gserviceaccount.com"}},
			},
			cortex: map[string]string{"iam.gke.io/gcp-service-account": "cortex@p.iam.gserviceaccount.com"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mc := &v1alpha1.MetricsCluster{}
			mc.Name, mc.Namespace = "prod", "opstrace"
			mc.Spec = v1alpha1.MetricsClusterSpec{Topology: v1alpha1.TopologyMicroservices, Size: v1alpha1.SizeSmall,
				Storage: awsStorage, Retention: v1alpha1.RetentionSpec{MetricsDays: 30, LogsDays: 7}, ServiceAccounts: tc.spec}
			objects := buildAll(t, NewBuildOptions(mc, testGatewayImage, false))
			cortex := find[*corev1.ServiceAccount](t, objects, CortexServiceAccountName("prod"))
			loki := find[*corev1.ServiceAccount](t, objects, LokiServiceAccountName("prod"))
			gateway := find[*corev1.ServiceAccount](t, objects, GatewayServiceAccountName("prod"))
			if !maps.Equal(cortex.Annotations, tc.cortex) || !maps.Equal(loki.Annotations, tc.loki) {
				t.Errorf("annotations: cortex %v, loki %v; want %v, %v", cortex.Annotations, loki.Annotations, tc.cortex, tc.loki)
			}
			if len(gateway.Annotations) != 0 {
				t.Errorf("the gateway's ServiceAccount got %v: it reads no bucket", gateway.Annotations)
			}
			// The objects do not share the spec's maps: the applier adds its hash annotation to them.
			if tc.cortex != nil {
				cortex.Annotations["x"] = "y"
				if _, shared := mc.Spec.ServiceAccounts.Cortex.Annotations["x"]; shared {
					t.Error("the ServiceAccount shares its annotations map with the MetricsCluster")
				}
			}
		})
	}
}
