// Package apply writes desired objects with server-side apply under one field owner, and skips the write when
// the object already carries the hash of what would be applied, so a reconcile with nothing changed makes no
// write call at all (as prometheus-operator does with its input hash).
package apply

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
)

// FieldOwner is the field manager of everything the controller writes.
const FieldOwner = client.FieldOwner("opstrace-controller")

// HashAnnotation holds the hash of the applied configuration of an object.
const HashAnnotation = "opstrace.io/applied-hash"

// Applier applies objects owned by one owner.
type Applier struct {
	Client client.Client
	Scheme *runtime.Scheme
}

// Apply sets owner as controller of obj, then applies obj unless the live object already carries the hash of
// this exact configuration. It reports whether it wrote. The live object is read through the client's cache.
//
// Drift made by hand on fields we own is corrected on the next change of the desired state, not on every
// reconcile: that is the price of zero idle writes, and the same trade prometheus-operator makes.
func (a *Applier) Apply(ctx context.Context, owner client.Object, obj client.Object) (bool, error) {
	if err := controllerutil.SetControllerReference(owner, obj, a.Scheme); err != nil {
		return false, fmt.Errorf("set owner of %s: %w", describe(obj), err)
	}
	u, err := toUnstructured(obj, a.Scheme)
	if err != nil {
		return false, err
	}
	hash, err := hashOf(u)
	if err != nil {
		return false, err
	}

	live := a.liveObject(u)
	switch err := a.Client.Get(ctx, client.ObjectKeyFromObject(u), live); {
	case err == nil && live.GetAnnotations()[HashAnnotation] == hash:
		return false, nil
	case err != nil && !apierrors.IsNotFound(err):
		return false, fmt.Errorf("get %s: %w", describe(obj), err)
	}

	annotations := u.GetAnnotations()
	if annotations == nil {
		annotations = map[string]string{}
	}
	annotations[HashAnnotation] = hash
	u.SetAnnotations(annotations)
	if err := a.Client.Patch(ctx, u, client.Apply, FieldOwner, client.ForceOwnership); err != nil {
		return false, fmt.Errorf("apply %s: %w", describe(obj), err)
	}
	return true, nil
}

// liveObject is an empty object to read the live state into: typed where the scheme knows the kind, so the
// read is served from the manager's cache.
func (a *Applier) liveObject(u *unstructured.Unstructured) client.Object {
	if typed, err := a.Scheme.New(u.GroupVersionKind()); err == nil {
		if obj, ok := typed.(client.Object); ok {
			return obj
		}
	}
	live := &unstructured.Unstructured{}
	live.SetGroupVersionKind(u.GroupVersionKind())
	return live
}

// toUnstructured converts a typed object, filling in apiVersion and kind from the scheme, and drops what a
// server-side apply must not send: status, managed fields, resourceVersion and creation time.
func toUnstructured(obj client.Object, scheme *runtime.Scheme) (*unstructured.Unstructured, error) {
	gvk := obj.GetObjectKind().GroupVersionKind()
	if gvk.Empty() {
		kinds, _, err := scheme.ObjectKinds(obj)
		if err != nil || len(kinds) == 0 {
			return nil, fmt.Errorf("kind of %T: %w", obj, err)
		}
		gvk = kinds[0]
	}
	content, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, fmt.Errorf("convert %s: %w", describe(obj), err)
	}
	u := &unstructured.Unstructured{Object: content}
	u.SetGroupVersionKind(gvk)
	delete(u.Object, "status")
	u.SetManagedFields(nil)
	u.SetResourceVersion("")
	unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
	return u, nil
}

func hashOf(u *unstructured.Unstructured) (string, error) {
	data, err := json.Marshal(u.Object)
	if err != nil {
		return "", fmt.Errorf("hash %s %s: %w", u.GetKind(), u.GetName(), err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:16]), nil
}

func describe(obj client.Object) string {
	kind := obj.GetObjectKind().GroupVersionKind().Kind
	if kind == "" {
		kind = fmt.Sprintf("%T", obj)
	}
	return fmt.Sprintf("%s %s/%s", kind, obj.GetNamespace(), obj.GetName())
}
