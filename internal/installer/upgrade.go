package installer

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/manifests"
	"github.com/opstrace/opstrace/internal/upgrade"
	"github.com/opstrace/opstrace/internal/version"
)

// upgradeLocal is `opstrace upgrade local NAME`: the controller of this CLI's version, with its CRDs, then
// a wait until the controller has rolled the cluster out, then a canary write and read.
func upgradeLocal(ctx context.Context, name string, out io.Writer) error {
	c, err := openLocalCluster(name)
	if err != nil {
		return err
	}
	if c.supervisorPID() == 0 {
		return fmt.Errorf("local cluster %s is not running (opstrace list local shows the clusters)", name)
	}
	kube, err := c.client()
	if err != nil {
		return err
	}
	controllerKey := client.ObjectKey{Namespace: ControllerNamespace, Name: ControllerRelease + "-controller"}
	var deployment appsv1.Deployment
	if err := kube.Get(ctx, controllerKey, &deployment); err != nil {
		return fmt.Errorf("read the installed controller: %w", err)
	}
	installed := imageTag(deployment.Spec.Template.Spec.Containers[0].Image)
	if err := upgrade.CheckCLIControllerSkew(version.Version, installed); err != nil {
		return err
	}

	p := &progress{out: out}
	p.step(fmt.Sprintf("upgrading the controller from %s to %s with Helm (CRDs by server-side apply)", installed, version.Version))
	revision, err := InstallController(ctx, c.Kubeconfig(), ControllerNamespace, map[string]any{
		"image":        map[string]any{"tag": version.Version},
		"gatewayImage": map[string]any{"tag": version.Version},
	})
	if err != nil {
		return fmt.Errorf("step: upgrade the controller: %w", err)
	}
	p.step(fmt.Sprintf("helm release %s is at revision %d", ControllerRelease, revision))

	if err := p.wait(ctx, "the controller to roll out", 3*time.Minute, c.nodeAgentLog(), func() (bool, string) {
		if err := kube.Get(ctx, controllerKey, &deployment); err != nil {
			return false, ""
		}
		want := ptr.Deref(deployment.Spec.Replicas, 1)
		s := deployment.Status
		done := s.ObservedGeneration >= deployment.Generation && s.UpdatedReplicas == want && s.AvailableReplicas == want && s.Replicas == want
		return done, fmt.Sprintf("%d/%d updated and available", s.AvailableReplicas, want)
	}); err != nil {
		return err
	}
	if err := p.wait(ctx, "MetricsCluster "+name+" to run its version everywhere", 10*time.Minute, c.nodeAgentLog(), func() (bool, string) {
		var mc v1alpha1.MetricsCluster
		if err := kube.Get(ctx, client.ObjectKey{Namespace: LocalNamespace, Name: name}, &mc); err != nil {
			return false, ""
		}
		want := mc.Spec.Version
		if want == "" {
			want = manifests.DefaultCortexVersion
		}
		ready := meta.IsStatusConditionTrue(mc.Status.Conditions, v1alpha1.ConditionReady)
		progressing := meta.FindStatusCondition(mc.Status.Conditions, v1alpha1.ConditionProgressing)
		detail := "waiting for the controller"
		if progressing != nil {
			detail = progressing.Message
		}
		return ready && mc.Status.Version == want && mc.Status.ObservedGeneration == mc.Generation, detail
	}); err != nil {
		return err
	}
	// The controller renews the gateway's CA (at 80% of its lifetime) and a recreated cluster has a new one:
	// trust the one it serves now.
	if err := c.writeCA(ctx, kube); err != nil {
		return err
	}
	return verifyLocal(ctx, name, v1alpha1.SystemTenant, out)
}

// imageTag is the tag of an image reference, "latest" when it has none.
func imageTag(image string) string {
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		return image[i+1:]
	}
	return "latest"
}
