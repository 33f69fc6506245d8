package nodeagent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// The local storage class and its provisioner.
const (
	StorageClassName = "opstrace-local"
	ProvisionerName  = "opstrace.io/local"

	annProvisionedBy   = "pv.kubernetes.io/provisioned-by"
	annDefaultClass    = "storageclass.kubernetes.io/is-default-class"
	annSelectedNode    = "volume.kubernetes.io/selected-node"
	annStorageProvider = "volume.kubernetes.io/storage-provisioner"
)

// provisioner creates a hostPath PersistentVolume under <state>/volumes for every pending claim of the
// class opstrace-local (or of no class), pre-bound to the claim so that kube-controller-manager's PV
// controller binds it, and removes the directory when the volume is released (reclaim policy Delete).
type provisioner struct {
	a     *Agent
	pvc   coreinformers.PersistentVolumeClaimInformer
	pv    coreinformers.PersistentVolumeInformer
	queue workqueue.TypedRateLimitingInterface[string]
}

func newProvisioner(a *Agent, pvc coreinformers.PersistentVolumeClaimInformer, pv coreinformers.PersistentVolumeInformer) *provisioner {
	p := &provisioner{a: a, pvc: pvc, pv: pv,
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())}
	enqueue := func(prefix string) cache.ResourceEventHandlerFuncs {
		add := func(obj any) {
			if k, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
				p.queue.Add(prefix + k)
			}
		}
		return cache.ResourceEventHandlerFuncs{AddFunc: add, UpdateFunc: func(_, obj any) { add(obj) }, DeleteFunc: add}
	}
	_, _ = pvc.Informer().AddEventHandler(enqueue("pvc:"))
	_, _ = pv.Informer().AddEventHandler(enqueue("pv:"))
	return p
}

// BuildStorageClass is the default StorageClass of a local cluster.
func BuildStorageClass() *storagev1.StorageClass {
	mode := storagev1.VolumeBindingWaitForFirstConsumer
	policy := corev1.PersistentVolumeReclaimDelete
	return &storagev1.StorageClass{
		ObjectMeta:        metav1.ObjectMeta{Name: StorageClassName, Annotations: map[string]string{annDefaultClass: "true"}},
		Provisioner:       ProvisionerName,
		VolumeBindingMode: &mode,
		ReclaimPolicy:     &policy,
	}
}

// PVName is the name of the volume provisioned for a claim.
func PVName(claim *corev1.PersistentVolumeClaim) string { return "local-" + string(claim.UID) }

// VolumeDir is the host directory of a claim's volume.
func VolumeDir(stateDir, namespace, claim string) string {
	return filepath.Join(stateDir, "volumes", namespace+"-"+claim)
}

// BuildPV is the volume for claim on node.
func BuildPV(claim *corev1.PersistentVolumeClaim, node, dir string) *corev1.PersistentVolume {
	dirType := corev1.HostPathDirectoryOrCreate
	capacity := claim.Spec.Resources.Requests[corev1.ResourceStorage]
	modes := claim.Spec.AccessModes
	if len(modes) == 0 {
		modes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
	}
	mode := corev1.PersistentVolumeFilesystem
	return &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        PVName(claim),
			Annotations: map[string]string{annProvisionedBy: ProvisionerName},
			Labels:      map[string]string{"opstrace.io/local-volume": "true"},
		},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: capacity},
			AccessModes:                   modes,
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			StorageClassName:              StorageClassName,
			VolumeMode:                    &mode,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: &dirType}},
			ClaimRef: &corev1.ObjectReference{
				Kind: "PersistentVolumeClaim", APIVersion: "v1",
				Namespace: claim.Namespace, Name: claim.Name, UID: claim.UID,
			},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpIn, Values: []string{node}}},
			}}}},
		},
	}
}

// wantsLocalVolume says whether the provisioner serves claim on node.
func wantsLocalVolume(claim *corev1.PersistentVolumeClaim, node string) bool {
	if claim.DeletionTimestamp != nil || claim.Spec.VolumeName != "" || claim.Status.Phase != corev1.ClaimPending {
		return false
	}
	if c := claim.Spec.StorageClassName; c != nil && *c != StorageClassName && *c != "" {
		return false
	}
	if claim.Spec.Selector != nil || claim.Spec.DataSource != nil {
		return false
	}
	if n, ok := claim.Annotations[annSelectedNode]; ok && n != node {
		return false
	}
	return true
}

func (p *provisioner) run(ctx context.Context) {
	defer p.queue.ShutDown()
	if err := p.ensureStorageClass(ctx); err != nil {
		p.a.log.Warn("ensure storage class", "err", err)
	}
	if !cache.WaitForCacheSync(ctx.Done(), p.pvc.Informer().HasSynced, p.pv.Informer().HasSynced) {
		return
	}
	go func() {
		<-ctx.Done()
		p.queue.ShutDown()
	}()
	for {
		item, quit := p.queue.Get()
		if quit {
			return
		}
		if err := p.sync(ctx, item); err != nil {
			p.a.log.Warn("local volumes", "item", item, "err", err)
			p.queue.AddRateLimited(item)
		} else {
			p.queue.Forget(item)
		}
		p.queue.Done(item)
	}
}

func (p *provisioner) ensureStorageClass(ctx context.Context) error {
	for {
		_, err := p.a.client.StorageV1().StorageClasses().Create(ctx, BuildStorageClass(), metav1.CreateOptions{})
		if err == nil || apierrors.IsAlreadyExists(err) {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		p.a.log.Warn("create storage class", "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(5 * time.Second):
		}
	}
}

func (p *provisioner) sync(ctx context.Context, item string) error {
	if name, ok := strings.CutPrefix(item, "pv:"); ok {
		return p.syncPV(ctx, name)
	}
	k := strings.TrimPrefix(item, "pvc:")
	ns, name, err := cache.SplitMetaNamespaceKey(k)
	if err != nil {
		return nil
	}
	claim, err := p.pvc.Lister().PersistentVolumeClaims(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if !wantsLocalVolume(claim, p.a.cfg.NodeName) {
		return nil
	}
	pv := BuildPV(claim, p.a.cfg.NodeName, VolumeDir(p.a.cfg.StateDir, claim.Namespace, claim.Name))
	if existing, err := p.pv.Lister().Get(pv.Name); err == nil && existing != nil {
		return nil
	}
	if err := os.MkdirAll(pv.Spec.HostPath.Path, 0o777); err != nil {
		return fmt.Errorf("create volume directory: %w", err)
	}
	_, err = p.a.client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create persistent volume for %s: %w", k, err)
	}
	p.a.log.Info("provisioned local volume", "claim", k, "pv", pv.Name, "dir", pv.Spec.HostPath.Path)
	return nil
}

// syncPV deletes a released volume of ours and its directory.
func (p *provisioner) syncPV(ctx context.Context, name string) error {
	pv, err := p.pv.Lister().Get(name)
	if apierrors.IsNotFound(err) {
		return nil // the directory went with the Released → delete path below
	}
	if err != nil {
		return err
	}
	if pv.Annotations[annProvisionedBy] != ProvisionerName || pv.Spec.HostPath == nil {
		return nil
	}
	if pv.Status.Phase != corev1.VolumeReleased || pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
		return nil
	}
	if err := os.RemoveAll(pv.Spec.HostPath.Path); err != nil {
		return fmt.Errorf("remove volume directory: %w", err)
	}
	err = p.a.client.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	p.a.log.Info("deleted released local volume", "pv", pv.Name, "dir", pv.Spec.HostPath.Path)
	return nil
}
