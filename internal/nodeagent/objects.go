package nodeagent

import (
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	coreinformers "k8s.io/client-go/informers/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// listerObjects reads API objects from informer caches.
type listerObjects struct {
	cm     corelisters.ConfigMapLister
	secret corelisters.SecretLister
	pvc    corelisters.PersistentVolumeClaimLister
	pv     corelisters.PersistentVolumeLister
}

func (o *listerObjects) ConfigMap(namespace, name string) (*corev1.ConfigMap, error) {
	return o.cm.ConfigMaps(namespace).Get(name)
}

func (o *listerObjects) Secret(namespace, name string) (*corev1.Secret, error) {
	return o.secret.Secrets(namespace).Get(name)
}

func (o *listerObjects) PersistentVolumeClaim(namespace, name string) (*corev1.PersistentVolumeClaim, error) {
	return o.pvc.PersistentVolumeClaims(namespace).Get(name)
}

func (o *listerObjects) PersistentVolume(name string) (*corev1.PersistentVolume, error) {
	return o.pv.Get(name)
}

func labelsEverything() labels.Selector { return labels.Everything() }

func meta(obj any) (metav1.Object, error) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	return apimeta.Accessor(obj)
}

// envlessPodInformer hands virtual-kubelet's pod controller the pods without env and envFrom. The pod
// controller resolves environment variables itself before it calls the provider, but it cannot resolve
// status.podIP (the pod has no IP before the provider runs it) and fails the pod; the agent resolves the
// environment itself (ContainerEnv) from the API server's pod.
type envlessPodInformer struct {
	coreinformers.PodInformer
}

func (i envlessPodInformer) Lister() corelisters.PodLister {
	return envlessPodLister{i.PodInformer.Lister()}
}

type envlessPodLister struct{ corelisters.PodLister }

func (l envlessPodLister) List(selector labels.Selector) ([]*corev1.Pod, error) {
	pods, err := l.PodLister.List(selector)
	return stripEnvs(pods), err
}

func (l envlessPodLister) Pods(namespace string) corelisters.PodNamespaceLister {
	return envlessPodNamespaceLister{l.PodLister.Pods(namespace)}
}

type envlessPodNamespaceLister struct{ corelisters.PodNamespaceLister }

func (l envlessPodNamespaceLister) List(selector labels.Selector) ([]*corev1.Pod, error) {
	pods, err := l.PodNamespaceLister.List(selector)
	return stripEnvs(pods), err
}

func (l envlessPodNamespaceLister) Get(name string) (*corev1.Pod, error) {
	pod, err := l.PodNamespaceLister.Get(name)
	if err != nil {
		return nil, err
	}
	return stripEnv(pod), nil
}

func stripEnvs(pods []*corev1.Pod) []*corev1.Pod {
	out := make([]*corev1.Pod, len(pods))
	for i, p := range pods {
		out[i] = stripEnv(p)
	}
	return out
}

func stripEnv(pod *corev1.Pod) *corev1.Pod {
	pod = pod.DeepCopy()
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			cs[i].Env, cs[i].EnvFrom = nil, nil
		}
	}
	return pod
}
