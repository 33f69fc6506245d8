// Package v1alpha1 holds the opstrace.io/v1alpha1 API: MetricsCluster and Tenant.
//
// Validation that needs no cluster state lives here as OpenAPI markers and CEL rules, so the API server rejects
// bad objects at admission with a message that names the field; no webhook is needed.
//
// +kubebuilder:object:generate=true
// +groupName=opstrace.io
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of every object in this package.
	GroupVersion = schema.GroupVersion{Group: "opstrace.io", Version: "v1alpha1"}

	// SchemeBuilder registers the types of this package with a runtime.Scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types of this package to a runtime.Scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
