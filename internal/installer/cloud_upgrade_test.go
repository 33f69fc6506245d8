package installer

// upgrade aws|gcp on the real test API server (envtest: no controller, no kubelet, so the test moves the
// controller Deployment's and the MetricsCluster's status as the Deployment controller and the opstrace
// controller would), with Helm upgrading the embedded chart and the CRDs applied by server-side apply; the
// verify that ends it goes through a real gateway to a real Cortex and Loki (cloud_verify_test.go).

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/container/apiv1/containerpb"
	gax "github.com/googleapis/gax-go/v2"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/release"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/installer/cloud"
	awscloud "github.com/opstrace/opstrace/internal/installer/cloud/aws"
	gcpcloud "github.com/opstrace/opstrace/internal/installer/cloud/gcp"
	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/manifests"
	"github.com/opstrace/opstrace/internal/testenv"
	"github.com/opstrace/opstrace/internal/version"
)

const (
	testControllerRepo = "registry.example.com:5000/opstrace/opstrace-controller"
	testGatewayRepo    = "registry.example.com:5000/opstrace/opstrace-gateway"
)

// setVersion makes this CLI's version v for the test.
func setVersion(t *testing.T, v string) {
	saved := version.Version
	version.Version = v
	t.Cleanup(func() { version.Version = saved })
}

// installAsCreate puts on the API server what create aws leaves: the Helm release of the controller with
// the config's images, and the stored config, MetricsCluster and Tenants by server-side apply.
func installAsCreate(t *testing.T, env *testenv.Env, cfg config.Config) {
	t.Helper()
	ctx := context.Background()
	if err := withKubeconfigFile(env.Config, func(kubeconfig string) error {
		_, err := InstallController(ctx, kubeconfig, ControllerNamespace, controllerValues(cfg))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, obj := range BuildCloudObjects(testWorkload(cfg), cloud.Namespace) {
		if err := env.Client.Patch(ctx, obj, client.Apply, installerFieldOwner, client.ForceOwnership); err != nil {
			t.Fatal(err)
		}
	}
}

// controllerRolledOut writes the controller Deployment's status as its Deployment controller would once
// every replica runs the current template.
func controllerRolledOut(t *testing.T, env *testenv.Env) {
	ctx := context.Background()
	var d appsv1.Deployment
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ControllerNamespace, Name: "opstrace-controller"}, &d); err != nil {
		t.Error(err)
		return
	}
	d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
	if err := env.Client.Status().Update(ctx, &d); err != nil {
		t.Error(err)
	}
}

// setStatus writes the MetricsCluster's conditions and status.version as the controller would.
func setStatus(t *testing.T, env *testenv.Env, cortex string, conditions ...metav1.Condition) {
	ctx := context.Background()
	var mc v1alpha1.MetricsCluster
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: cloud.Namespace, Name: "prod"}, &mc); err != nil {
		t.Error(err)
		return
	}
	mc.Status.ObservedGeneration = mc.Generation
	mc.Status.Version = cortex
	// Loki keeps its version through these upgrades: the controller reports the one it runs.
	mc.Status.LogsVersion = manifests.DefaultLokiVersion
	mc.Status.ControllerVersion = version.Version
	mc.Status.Conditions = nil
	for _, c := range conditions {
		c.ObservedGeneration = mc.Generation
		c.LastTransitionTime = metav1.Now()
		mc.Status.Conditions = append(mc.Status.Conditions, c)
	}
	if err := env.Client.Status().Update(ctx, &mc); err != nil {
		t.Error(err)
	}
}

func progressing(message string) metav1.Condition {
	return metav1.Condition{Type: v1alpha1.ConditionProgressing, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonUpgrading, Message: message}
}

func upToDate() []metav1.Condition {
	return []metav1.Condition{
		condition(v1alpha1.ConditionReady, true, "every component is ready"),
		{Type: v1alpha1.ConditionProgressing, Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonUpToDate, Message: "every component runs the desired configuration"},
		{Type: v1alpha1.ConditionDegraded, Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonNoProblem},
	}
}

func helmRelease(t *testing.T, env *testenv.Env) *release.Release {
	t.Helper()
	var rel *release.Release
	if err := withKubeconfigFile(env.Config, func(kubeconfig string) error {
		cfg, err := helmConfig(kubeconfig)
		if err != nil {
			return err
		}
		rel, err = action.NewGet(cfg).Run(ControllerRelease)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return rel
}

// waitFor polls until out holds want, so that the test moves the status only after the upgrade printed
// the previous one.
func waitFor(t *testing.T, out *syncBuffer, want string) bool {
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if strings.Contains(out.String(), want) {
			return true
		}
	}
	t.Errorf("the upgrade did not print %q within a minute:\n%s", want, out.String())
	return false
}

func TestUpgradeAndVerifyCloudClusterOnARealAPIServerAndGateway(t *testing.T) {
	env := startCloudEnv(t)
	stack := startCloudGatewayStack(t, v1alpha1.SystemTenant, "team-a")
	ctx := context.Background()
	setVersion(t, "v0.3.0")
	cfg, err := config.Parse([]byte(fmt.Sprintf("tenants: [team-a]\ncontroller_image: %s:v0.3.0\ngateway_image: %s:v0.3.0\n", testControllerRepo, testGatewayRepo)), config.ProviderAWS)
	if err != nil {
		t.Fatal(err)
	}
	installAsCreate(t, env, cfg)
	stack.publish(t, env)
	setStatus(t, env, "v1.20.1", upToDate()...)
	controllerRolledOut(t, env)

	c := cloudCluster{provider: config.ProviderAWS, name: "prod", what: "AWS cluster prod in us-west-2", flags: "--region us-west-2",
		connect: func(context.Context) (*rest.Config, error) { return env.Config, nil }}

	t.Run("verify", func(t *testing.T) { testCloudVerify(t, env, stack, c) })
	t.Run("gcp commands", func(t *testing.T) { testGCPCommands(t, env) })

	// The release as create left it.
	before := helmRelease(t, env)
	if before.Version != 1 || imageOf(before) != testControllerRepo+":v0.3.0" {
		t.Fatalf("release before the upgrade: revision %d, values %v", before.Version, before.Config)
	}
	// Someone changed a field of a CRD that the installer owns: the upgrade's server-side apply puts it back.
	crd := &unstructured.Unstructured{}
	crd.SetGroupVersionKind(apiextensionsv1.SchemeGroupVersion.WithKind("CustomResourceDefinition"))
	if err := env.Client.Get(ctx, client.ObjectKey{Name: "metricsclusters.opstrace.io"}, crd); err != nil {
		t.Fatal(err)
	}
	if err := unstructured.SetNestedStringSlice(crd.Object, []string{"mcx"}, "spec", "names", "shortNames"); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Update(ctx, crd); err != nil {
		t.Fatal(err)
	}

	upgradeWith := func(t *testing.T, opts upgradeOptions) (string, error) {
		target, err := cloudUpgradeTarget(ctx, c, opts, &syncBuffer{})
		if err != nil {
			return "", err
		}
		var out syncBuffer
		err = runUpgrade(ctx, target, opts, &out)
		return out.String(), err
	}
	unchanged := func(t *testing.T) {
		t.Helper()
		if rel := helmRelease(t, env); rel.Version != 1 {
			t.Errorf("the release was upgraded to revision %d", rel.Version)
		}
	}

	// This CLI is v0.4.0: one minor version after the installed controller.
	setVersion(t, "v0.4.0")
	t.Run("dry run prints the plan and changes nothing", func(t *testing.T) {
		out, err := upgradeWith(t, upgradeOptions{dryRun: true})
		if err != nil {
			t.Fatal(err)
		}
		want := "Upgrade AWS cluster prod in us-west-2:\n" +
			"  controller  " + testControllerRepo + ":v0.3.0 → " + testControllerRepo + ":v0.4.0\n" +
			"  gateway     " + testGatewayRepo + ":v0.3.0 → " + testGatewayRepo + ":v0.4.0\n" +
			"  chart       opstrace 0.1.0 (app dev) (revision 1) → opstrace 0.1.0 (app dev) of this CLI (same chart; CRDs applied again by server-side apply)\n" +
			"  Cortex      v1.20.1 → " + manifests.DefaultCortexVersion + " (the default of controller v0.4.0)\n" +
			"  Loki        " + manifests.DefaultLokiVersion + " (unchanged) (the default of controller v0.4.0)\n" +
			"then wait until MetricsCluster opstrace/prod has rolled out, and verify it.\n"
		if out != want {
			t.Errorf("dry run printed\n%s\nwant\n%s", out, want)
		}
		unchanged(t)
	})
	t.Run("not confirmed", func(t *testing.T) {
		asked := ""
		_, err := upgradeWith(t, upgradeOptions{confirm: func(q string) bool { asked = q; return false }})
		if err == nil || err.Error() != "not confirmed; nothing was changed" || asked != "Upgrade?" {
			t.Errorf("declined upgrade: %v (asked %q)", err, asked)
		}
		unchanged(t)
	})
	t.Run("refused", func(t *testing.T) {
		for _, tc := range []struct {
			name, cli, running string
			opts               upgradeOptions
			want               string
		}{
			{"controller downgrade", "v0.2.0", "v1.20.1", upgradeOptions{yes: true},
				"upgrade refused: opstrace v0.2.0 is older than the installed controller v0.3.0: upgrading with it would downgrade the controller and its CRDs; use opstrace v0.3.0 or newer"},
			{"controller minor version skipped", "v0.5.0", "v1.20.1", upgradeOptions{yes: true},
				"upgrade refused: opstrace v0.5.0 is more than one minor version ahead of the installed controller v0.3.0"},
			{"controller image skips", "v0.4.0", "v1.20.1", upgradeOptions{yes: true, controllerImage: testControllerRepo + ":v0.6.1"},
				"upgrade refused: --controller-image " + testControllerRepo + ":v0.6.1: opstrace v0.6.1 is more than one minor version ahead of the installed controller v0.3.0"},
			{"Cortex downgrade", "v0.4.0", "v1.22.0", upgradeOptions{yes: true},
				"upgrade refused: the new controller would roll out Cortex " + manifests.DefaultCortexVersion + " (the default of controller v0.4.0) where v1.22.0 runs: Cortex " +
					manifests.DefaultCortexVersion + " is older than the running v1.22.0: Cortex cannot be downgraded in place"},
			{"Cortex minor version skipped", "v0.4.0", "v1.19.3", upgradeOptions{yes: true},
				"Cortex " + manifests.DefaultCortexVersion + " is more than one minor version ahead of the running v1.19.3: Cortex is upgraded one minor version at a time"},
		} {
			setVersion(t, tc.cli)
			setStatus(t, env, tc.running, upToDate()...)
			out, err := upgradeWith(t, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: %v\nwant %q", tc.name, err, tc.want)
			}
			if !strings.Contains(out, "Upgrade AWS cluster prod") {
				t.Errorf("%s: the plan was not printed before the refusal:\n%s", tc.name, out)
			}
			unchanged(t)
		}
		setVersion(t, "v0.4.0")
		// A newer Loki runs than the one the new controller would roll out.
		setStatus(t, env, "v1.20.1", upToDate()...)
		var mc v1alpha1.MetricsCluster
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: cloud.Namespace, Name: "prod"}, &mc); err != nil {
			t.Fatal(err)
		}
		mc.Status.LogsVersion = "v3.8.0"
		if err := env.Client.Status().Update(ctx, &mc); err != nil {
			t.Fatal(err)
		}
		want := "upgrade refused: the new controller would roll out Loki " + manifests.DefaultLokiVersion +
			" (the default of controller v0.4.0) where v3.8.0 runs: Loki " + manifests.DefaultLokiVersion + " is older than the running v3.8.0"
		if _, err := upgradeWith(t, upgradeOptions{yes: true}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Loki downgrade: %v\nwant %q", err, want)
		}
		unchanged(t)
		setStatus(t, env, "v1.20.1", upToDate()...)
		// A bad image is refused before anything is read from the cluster's release.
		_, err := upgradeWith(t, upgradeOptions{yes: true, gatewayImage: "Registry/UPPER CASE"})
		if err == nil || !strings.Contains(err.Error(), `--gateway-image "Registry/UPPER CASE": invalid value "Registry/UPPER CASE"; allowed: an image reference like`) {
			t.Errorf("bad --gateway-image: %v", err)
		}
		unchanged(t)
	})

	t.Run("degraded", func(t *testing.T) {
		var out syncBuffer
		target, err := cloudUpgradeTarget(ctx, c, upgradeOptions{}, &out)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			if !waitFor(t, &out, "• waiting for the controller") {
				return
			}
			controllerRolledOut(t, env)
			if !waitFor(t, &out, "• waiting for MetricsCluster opstrace/prod") {
				return
			}
			setStatus(t, env, "v1.20.1",
				metav1.Condition{Type: v1alpha1.ConditionDegraded, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonUpgradeStalled,
					Message: "the rollout stopped at pod prod-ingester-2 (ingester): it is in CrashLoopBackOff"},
				condition(v1alpha1.ConditionReady, false, "the cluster is degraded"))
		}()
		err = runUpgrade(ctx, target, upgradeOptions{yes: true, interval: 50 * time.Millisecond, timeout: time.Minute}, &out)
		<-done
		if err == nil || !strings.Contains(err.Error(), "MetricsCluster opstrace/prod is Degraded (UpgradeStalled): the rollout stopped at pod prod-ingester-2 (ingester): it is in CrashLoopBackOff\n"+
			"the controller is upgraded, the cluster is not: fix what the message says, then run ") ||
			!strings.Contains(err.Error(), "upgrade aws prod --region us-west-2 to wait again and verify") ||
			!strings.Contains(err.Error(), "status aws prod --region us-west-2") {
			t.Errorf("upgrade of a cluster that degrades: %v\n%s", err, out.String())
		}
		if rel := helmRelease(t, env); rel.Version != 2 {
			t.Errorf("release revision %d after the first upgrade, want 2", rel.Version)
		}
	})

	t.Run("rolls out and verifies", func(t *testing.T) {
		setStatus(t, env, "v1.20.1", upToDate()...)
		// The degraded run upgraded the controller already; another gateway image changes its template.
		opts := upgradeOptions{yes: true, interval: 50 * time.Millisecond, timeout: time.Minute, gatewayImage: testGatewayRepo + ":v0.4.1"}
		var out syncBuffer
		target, err := cloudUpgradeTarget(ctx, c, opts, &out)
		if err != nil {
			t.Fatal(err)
		}
		steps := []string{"upgrading compactor to " + manifests.DefaultCortexVersion,
			"ingesters 1/3 at " + manifests.DefaultCortexVersion, "ingesters 2/3 at " + manifests.DefaultCortexVersion}
		done := make(chan struct{})
		go func() {
			defer close(done)
			if !waitFor(t, &out, "• waiting for the controller") || !waitFor(t, &out, "the Deployment controller has not seen the new template yet") {
				return
			}
			controllerRolledOut(t, env)
			if !waitFor(t, &out, "Ready at Cortex v1.20.1; waiting for the new controller to roll out "+manifests.DefaultCortexVersion) {
				return
			}
			for _, step := range steps {
				setStatus(t, env, "v1.20.1", progressing(step), condition(v1alpha1.ConditionReady, true, "every component is ready"))
				if !waitFor(t, &out, "] "+step+"\n") {
					return
				}
			}
			setStatus(t, env, manifests.DefaultCortexVersion, upToDate()...)
		}()
		err = runUpgrade(ctx, target, opts, &out)
		<-done
		if err != nil {
			t.Fatalf("upgrade: %v\n%s", err, out.String())
		}
		got := out.String()
		t.Logf("upgrade output:\n%s", got)
		// The progress: each Progressing message once, in order, with the elapsed time.
		last := -1
		for _, step := range steps {
			i := strings.Index(got, "] "+step+"\n")
			if i < 0 || i < last || strings.Count(got, step) != 1 || !strings.Contains(got[:i], "  [") {
				t.Errorf("progress %q missing, out of order or repeated:\n%s", step, got)
			}
			last = i
		}
		for _, want := range []string{
			"  gateway     " + testGatewayRepo + ":v0.4.0 → " + testGatewayRepo + ":v0.4.1\n",
			"• CRDs applied; Helm release opstrace upgraded from revision 2 to 3\n",
			"• waiting for the controller (Deployment opstrace-system/opstrace-controller) to roll out\n",
			"• waiting for MetricsCluster opstrace/prod to roll out Cortex " + manifests.DefaultCortexVersion + " and Loki " + manifests.DefaultLokiVersion + "\n",
			"] done\n",
			"• AWS cluster prod in us-west-2 upgraded in ",
			"verified AWS cluster prod in us-west-2 as tenant system: write ",
			"verified logs of AWS cluster prod in us-west-2 as tenant system",
		} {
			if !strings.Contains(got, want) {
				t.Errorf("output lacks %q", want)
			}
		}

		// The release: this CLI's chart with the new images; the Deployment runs them.
		rel := helmRelease(t, env)
		newCfg := cfg
		newCfg.ControllerImage, newCfg.GatewayImage = testControllerRepo+":v0.4.0", testGatewayRepo+":v0.4.1"
		if rel.Version != 3 || rel.Info.Status != release.StatusDeployed || contentHash(rel.Config) != contentHash(controllerValues(newCfg)) {
			t.Errorf("release after the upgrade: revision %d, %s, values %v", rel.Version, rel.Info.Status, rel.Config)
		}
		embedded, err := LoadChart()
		if err != nil {
			t.Fatal(err)
		}
		if chartDigest(rel.Chart) != chartDigest(embedded) {
			t.Error("the release does not hold this CLI's chart")
		}
		var d appsv1.Deployment
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ControllerNamespace, Name: "opstrace-controller"}, &d); err != nil {
			t.Fatal(err)
		}
		if image, args := d.Spec.Template.Spec.Containers[0].Image, strings.Join(d.Spec.Template.Spec.Containers[0].Args, " "); image != testControllerRepo+":v0.4.0" ||
			!strings.Contains(args, "--gateway-image="+testGatewayRepo+":v0.4.1") {
			t.Errorf("controller Deployment: image %s, args %s", image, args)
		}
		// The CRD is the chart's again, applied by the installer's field manager.
		if err := env.Client.Get(ctx, client.ObjectKey{Name: "metricsclusters.opstrace.io"}, crd); err != nil {
			t.Fatal(err)
		}
		shortNames, _, _ := unstructured.NestedStringSlice(crd.Object, "spec", "names", "shortNames")
		if strings.Join(shortNames, ",") != "mc" || !appliedBy(crd.GetManagedFields(), string(installerFieldOwner)) {
			t.Errorf("CRD after the upgrade: short names %v, managers %v", shortNames, crd.GetManagedFields())
		}
		// The stored config holds the new images, so that status and create agree with what runs: the
		// release and the ConfigMap are as create with the new config would leave them.
		kube, err := newKubeClient(env.Config)
		if err != nil {
			t.Fatal(err)
		}
		stored, err := readStoredConfig(ctx, kube, config.ProviderAWS)
		if err != nil || string(config.Render(stored)) != string(config.Render(newCfg)) {
			t.Errorf("stored config after the upgrade (%v):\n%s", err, config.Render(stored))
		}
		if diff, err := releaseDiff(env.Config, controllerValues(stored)); err != nil || diff != "" {
			t.Errorf("release compared with the stored config: %q %v", diff, err)
		}
		var cm corev1.ConfigMap
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ControllerNamespace, Name: CloudConfigMap}, &cm); err != nil {
			t.Fatal(err)
		}
		if want := BuildCloudObjects(testWorkload(newCfg), cloud.Namespace)[0].GetAnnotations()[installerHashAnnotation]; cm.Annotations[installerHashAnnotation] != want {
			t.Errorf("stored config hash %s, create with the new config would write %s", cm.Annotations[installerHashAnnotation], want)
		}
	})
}

func imageOf(rel *release.Release) string {
	image, _ := rel.Config["image"].(map[string]any)
	return fmt.Sprint(image["repository"]) + ":" + fmt.Sprint(image["tag"])
}

func appliedBy(fields []metav1.ManagedFieldsEntry, manager string) bool {
	for _, f := range fields {
		if f.Manager == manager && f.Operation == metav1.ManagedFieldsOperationApply {
			return true
		}
	}
	return false
}

// What the wait reports for each state of the MetricsCluster, and when it is done.
func TestUpgradeRolloutState(t *testing.T) {
	type status = v1alpha1.MetricsClusterStatus
	mc := func(generation int64, s status, conditions ...metav1.Condition) *v1alpha1.MetricsCluster {
		s.Conditions = conditions
		return &v1alpha1.MetricsCluster{ObjectMeta: metav1.ObjectMeta{Namespace: "opstrace", Name: "prod", Generation: generation}, Status: s}
	}
	ready := condition(v1alpha1.ConditionReady, true, "every component is ready")
	cortex := rolloutGoal{cortex: "v1.21.1"}
	all := rolloutGoal{controller: "v0.4.0", cortex: "v1.21.1", loki: "v3.7.8"}
	for _, tc := range []struct {
		name     string
		mc       *v1alpha1.MetricsCluster
		goal     rolloutGoal
		done     bool
		detail   string
		degraded string
	}{
		{"no status", mc(1, status{}), cortex, false, "the controller has not reported a status yet", ""},
		{"older spec", mc(3, status{ObservedGeneration: 2, Version: "v1.21.1"}, ready), cortex, false, "the controller has not reported on the latest spec yet (generation 3, status of 2)", ""},
		{"progressing", mc(1, status{ObservedGeneration: 1, Version: "v1.20.1"}, ready, progressing("ingesters 2/3 at v1.21.1")), cortex, false, "ingesters 2/3 at v1.21.1", ""},
		{"not ready", mc(1, status{ObservedGeneration: 1, Version: "v1.21.1"}, condition(v1alpha1.ConditionReady, false, "waiting for querier (1/2 replicas ready)")), cortex, false, "waiting for querier (1/2 replicas ready)", ""},
		{"ready at the old version", mc(1, status{ObservedGeneration: 1, Version: "v1.20.1"}, ready), cortex, false, "Ready at Cortex v1.20.1; waiting for the new controller to roll out v1.21.1", ""},
		{"rolled out", mc(1, status{ObservedGeneration: 1, Version: "v1.21.1"}, ready), cortex, true, "", ""},
		{"any version", mc(1, status{ObservedGeneration: 1, Version: "v1.20.1"}, ready), rolloutGoal{}, true, "", ""},
		{"status of the old controller", mc(1, status{ObservedGeneration: 1, ControllerVersion: "v0.3.0", Version: "v1.21.1", LogsVersion: "v3.7.8"}, ready), all, false,
			"the status is controller v0.3.0's; waiting for controller v0.4.0 to reconcile the cluster", ""},
		{"Loki not rolled out", mc(1, status{ObservedGeneration: 1, ControllerVersion: "v0.4.0", Version: "v1.21.1", LogsVersion: "v3.6.0"}, ready), all, false,
			"Ready at Loki v3.6.0; waiting for the new controller to roll out v3.7.8", ""},
		{"all rolled out", mc(1, status{ObservedGeneration: 1, ControllerVersion: "v0.4.0", Version: "v1.21.1", LogsVersion: "v3.7.8"}, ready), all, true, "", ""},
		{"degraded", mc(1, status{ObservedGeneration: 1, Version: "v1.20.1"}, metav1.Condition{Type: v1alpha1.ConditionDegraded, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonVersionRefused, Message: "Cortex v1.23.0 is a new major version"}),
			cortex, false, "", "MetricsCluster opstrace/prod is Degraded (VersionRefused): Cortex v1.23.0 is a new major version"},
	} {
		done, detail, degraded := rolloutState(tc.mc, tc.goal)
		gotDegraded := ""
		if degraded != nil {
			gotDegraded = degraded.Error()
		}
		if done != tc.done || detail != tc.detail || gotDegraded != tc.degraded {
			t.Errorf("%s: %v %q %q; want %v %q %q", tc.name, done, detail, gotDegraded, tc.done, tc.detail, tc.degraded)
		}
	}
}

// A Degraded condition the old controller reported does not end the wait until the new controller has had
// degradedGrace to clear it; another Degraded condition ends it at once.
func TestUpgradeWaitGivesTheNewControllerTimeToClearAnOldDegraded(t *testing.T) {
	mc := func(message string) *v1alpha1.MetricsCluster {
		return &v1alpha1.MetricsCluster{ObjectMeta: metav1.ObjectMeta{Namespace: "opstrace", Name: "prod", Generation: 1},
			Status: v1alpha1.MetricsClusterStatus{ObservedGeneration: 1, Conditions: []metav1.Condition{
				{Type: v1alpha1.ConditionDegraded, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonApplyFailed, Message: message}}}}
	}
	before := mc("apply StatefulSet prod-ingester: field is immutable")
	in := installedCluster{controllerImage: "opstrace/opstrace-controller:v0.3.0", gatewayImage: "opstrace/opstrace-gateway:v0.3.0", cluster: *before}
	p := planUpgrade(in, &chart.Chart{Metadata: &chart.Metadata{Name: "opstrace"}}, "", "")
	want := "MetricsCluster opstrace/prod is Degraded (ApplyFailed): apply StatefulSet prod-ingester: field is immutable"
	if p.DegradedBefore != want || !strings.Contains(p.Describe("AWS cluster prod", "prod", "opstrace"), "  now         "+want+": the new controller gets 2m0s to clear it") {
		t.Fatalf("plan of a degraded cluster: %q\n%s", p.DegradedBefore, p.Describe("AWS cluster prod", "prod", "opstrace"))
	}
	start := time.Now()
	w := rolloutWait{degradedBefore: p.DegradedBefore, controllerDone: start}
	if done, detail, err := w.judge(before, rolloutGoal{}, start.Add(time.Minute)); done || err != nil ||
		detail != "still "+want+" (reported before the upgrade; waiting for the new controller)" {
		t.Errorf("old Degraded within the grace: %v %q %v", done, detail, err)
	}
	if _, _, err := w.judge(before, rolloutGoal{}, start.Add(degradedGrace)); err == nil || err.Error() != want {
		t.Errorf("old Degraded after the grace: %v", err)
	}
	if _, _, err := w.judge(mc("another problem"), rolloutGoal{}, start); err == nil || !strings.Contains(err.Error(), "another problem") {
		t.Errorf("new Degraded within the grace: %v", err)
	}
}

// The plan's versions: spec.version and spec.logs.version win; without them, this CLI's defaults for its
// own controller version, and "unknown" for a controller image of another version.
func TestUpgradePlanVersions(t *testing.T) {
	setVersion(t, "v0.4.0")
	ch := &chart.Chart{Metadata: &chart.Metadata{Name: "opstrace", Version: "0.1.0", AppVersion: "v0.4.0"}}
	in := installedCluster{controllerImage: "opstrace/opstrace-controller:v0.3.0", gatewayImage: "opstrace/opstrace-gateway:v0.3.0",
		cluster: v1alpha1.MetricsCluster{Status: v1alpha1.MetricsClusterStatus{Version: "v1.20.1"}}}
	p := planUpgrade(in, ch, "", "")
	if p.ControllerTo != "opstrace/opstrace-controller:v0.4.0" || p.GatewayTo != "opstrace/opstrace-gateway:v0.4.0" ||
		p.CortexTo != manifests.DefaultCortexVersion || p.LokiTo != manifests.DefaultLokiVersion || p.ChartFrom != "" || checkUpgradeSkew(p) != nil {
		t.Errorf("default plan %+v (%v)", p, checkUpgradeSkew(p))
	}
	in.cluster.Spec.Version, in.cluster.Spec.Logs.Version = "v1.20.2", "v3.6.0"
	if p := planUpgrade(in, ch, "", ""); p.CortexTo != "v1.20.2" || p.CortexWhy != "spec.version" || p.LokiTo != "v3.6.0" || p.LokiWhy != "spec.logs.version" {
		t.Errorf("plan with versions in the spec %+v", p)
	}
	in.cluster.Spec.Version, in.cluster.Spec.Logs.Version = "", ""
	in.cluster.Spec.Logs.Enabled = ptrTo(false)
	p = planUpgrade(in, ch, "ghcr.io/acme/controller:sha-0123", "")
	if p.CortexTo != "" || !strings.Contains(p.CortexWhy, "the default of controller sha-0123, which this CLI (v0.4.0) does not know") ||
		p.LokiTo != "" || p.LokiWhy != "" || checkUpgradeSkew(p) != nil {
		t.Errorf("plan with a custom controller image %+v (%v)", p, checkUpgradeSkew(p))
	}
	if d := p.Describe("local cluster dev", "dev", "opstrace"); !strings.Contains(d, "  Cortex      v1.20.1 → unknown (the default of controller sha-0123") ||
		!strings.Contains(d, "  Loki        off (spec.logs.enabled: false)\n") || !strings.Contains(d, "  chart       - → opstrace 0.1.0 (app v0.4.0) of this CLI") {
		t.Errorf("plan description:\n%s", d)
	}

	// A controller pinned by digest: the tag behind the digest is the installed version; the image of this
	// CLI's version cannot be derived from the digest, so it must be named.
	in.controllerImage = "ghcr.io/acme/controller:v0.3.0@sha256:0123abcd"
	p = planUpgrade(in, ch, "", "")
	if err := checkUpgradeSkew(p); err == nil || !strings.Contains(err.Error(), "is pinned by digest") || !strings.Contains(err.Error(), "pass --controller-image") {
		t.Errorf("digest-pinned controller without --controller-image: %v", err)
	}
	p = planUpgrade(in, ch, "ghcr.io/acme/controller:v0.4.0@sha256:4567cdef", "")
	if err := checkUpgradeSkew(p); err != nil || imageTag(p.ControllerFrom) != "v0.3.0" || p.goal().controller != "v0.4.0" {
		t.Errorf("digest-pinned controller with --controller-image: %v, installed tag %q, goal %+v", err, imageTag(p.ControllerFrom), p.goal())
	}
	p = planUpgrade(in, ch, "ghcr.io/acme/controller:v0.6.0@sha256:4567cdef", "")
	if err := checkUpgradeSkew(p); err == nil || !strings.Contains(err.Error(), "more than one minor version ahead") {
		t.Errorf("digest-pinned controller skipping versions: %v", err)
	}
	// Another release than this CLI's: the wait still needs that controller's own status.
	if g := planUpgrade(in, ch, "ghcr.io/acme/controller:v0.4.1", "").goal(); g.controller != "v0.4.1" {
		t.Errorf("goal of a release image %+v, want controller v0.4.1", g)
	}
	if g := planUpgrade(in, ch, "ghcr.io/acme/controller:sha-0123", "").goal(); g.controller != "" {
		t.Errorf("goal of a commit image %+v, want no controller version", g)
	}
}

func ptrTo[T any](v T) *T { return &v }

// The cloud commands refuse bad input before any cloud call, and take the region and project from their
// flags.
func TestUpgradeAndVerifyCloudCommandsCheckInputFirst(t *testing.T) {
	savedAWS, savedGCP := awsClientsFunc, gcpClientsFunc
	t.Cleanup(func() { awsClientsFunc, gcpClientsFunc = savedAWS, savedGCP })
	var regions []string
	awsClientsFunc = func(_ context.Context, region string) (*awscloud.Clients, error) {
		regions = append(regions, region)
		return nil, errors.New("no AWS credentials in this test")
	}
	gcpClientsFunc = func(context.Context, string, string) (*gcpcloud.Clients, error) {
		t.Error("GCP clients built for bad input")
		return nil, errors.New("no GCP in this test")
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"upgrade", "aws", "Prod_1"}, `cluster name "Prod_1" is invalid`},
		{[]string{"verify", "gcp", "Prod_1", "--project", "acme-prod"}, `cluster name "Prod_1" is invalid`},
		{[]string{"upgrade", "gcp", "prod"}, "--project is required: the GCP project ID the cluster is in, e.g. upgrade gcp prod --project my-project-1"},
		{[]string{"verify", "gcp", "prod"}, "--project is required: the GCP project ID the cluster is in, e.g. verify gcp prod --project my-project-1"},
		{[]string{"upgrade", "aws", "prod", "--region", "eu-west-1", "--yes"}, "no AWS credentials in this test"},
		{[]string{"verify", "aws", "prod", "--tenant", "team-a"}, "no AWS credentials in this test"},
	} {
		_, err := runCLI(t, "", tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
	if strings.Join(regions, " ") != "eu-west-1 "+config.DefaultAWSRegion {
		t.Errorf("AWS clients built for regions %v", regions)
	}
}

// gkeOf is a GKE API that knows one cluster, at the test API server's address; it records the requests.
type gkeOf struct {
	gcpcloud.GKEAPI
	env      *testenv.Env
	requests []string
}

func (g *gkeOf) GetCluster(_ context.Context, req *containerpb.GetClusterRequest, _ ...gax.CallOption) (*containerpb.Cluster, error) {
	g.requests = append(g.requests, req.GetName())
	return &containerpb.Cluster{Name: "prod", Endpoint: strings.TrimPrefix(g.env.Config.Host, "https://"),
		ResourceLabels: map[string]string{cloud.OwnerLabel: "prod"},
		MasterAuth:     &containerpb.MasterAuth{ClusterCaCertificate: base64.StdEncoding.EncodeToString(g.env.Config.CAData)}}, nil
}

// testGCPCommands: upgrade gcp and verify gcp find the GKE cluster through the GKE API (the fake answers
// with the test API server's address and CA) and connect with the Google credentials' token, which the test
// API server does not know and refuses, as GKE refuses a principal without access. The token is not
// printed.
func testGCPCommands(t *testing.T, env *testenv.Env) {
	savedGCP := gcpClientsFunc
	t.Cleanup(func() { gcpClientsFunc = savedGCP })
	const token = "ya29.not-a-token-the-cluster-knows"
	gke := &gkeOf{env: env}
	gcpClientsFunc = func(_ context.Context, project, region string) (*gcpcloud.Clients, error) {
		return &gcpcloud.Clients{Project: project, Region: region, GKE: gke,
			Token: func(context.Context) (string, error) { return token, nil }}, nil
	}
	for _, args := range [][]string{
		{"verify", "gcp", "prod", "--project", "acme-prod", "--region", "europe-west1"},
		{"upgrade", "gcp", "prod", "--project", "acme-prod", "--region", "europe-west1", "--dry-run"},
	} {
		out, err := runCLI(t, "", args...)
		if err == nil || !strings.Contains(err.Error(), "the server has asked for the client to provide credentials") || strings.Contains(err.Error()+out, token) {
			t.Errorf("%v: %v\n%s", args, err, out)
		}
	}
	if want := "projects/acme-prod/locations/europe-west1/clusters/prod"; len(gke.requests) != 2 || gke.requests[0] != want || gke.requests[1] != want {
		t.Errorf("GKE requests %v, want two GetCluster of %s", gke.requests, want)
	}
}

// The controller's Deployment: rolled out, still rolling, or stuck past its progress deadline.
func TestControllerRolloutState(t *testing.T) {
	deployment := func(generation int64, status appsv1.DeploymentStatus) *appsv1.Deployment {
		return &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Namespace: "opstrace-system", Name: "opstrace-controller", Generation: generation},
			Spec: appsv1.DeploymentSpec{Replicas: ptrTo[int32](1),
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": "opstrace"}}},
			Status: status,
		}
	}
	stuck := appsv1.DeploymentCondition{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionFalse, Reason: "ProgressDeadlineExceeded",
		Message: `ReplicaSet "opstrace-controller-5d9c" has timed out progressing.`}
	for _, tc := range []struct {
		name   string
		d      *appsv1.Deployment
		done   bool
		detail string
		failed string
	}{
		{"template not seen", deployment(3, appsv1.DeploymentStatus{ObservedGeneration: 2}), false,
			"the Deployment controller has not seen the new template yet (generation 3, status of 2)", ""},
		{"rolling", deployment(3, appsv1.DeploymentStatus{ObservedGeneration: 3, Replicas: 2, UpdatedReplicas: 1, AvailableReplicas: 1}), false,
			"1/1 replicas updated, 1 available", ""},
		{"rolled out", deployment(3, appsv1.DeploymentStatus{ObservedGeneration: 3, Replicas: 1, UpdatedReplicas: 1, AvailableReplicas: 1}), true,
			"1/1 replicas updated, 1 available", ""},
		{"past its deadline", deployment(3, appsv1.DeploymentStatus{ObservedGeneration: 3, Replicas: 2, UpdatedReplicas: 1, AvailableReplicas: 1,
			Conditions: []appsv1.DeploymentCondition{stuck}}), false, "",
			`the controller's Deployment opstrace-system/opstrace-controller did not roll out: ReplicaSet "opstrace-controller-5d9c" has timed out progressing.; ` +
				"kubectl -n opstrace-system describe pods -l app.kubernetes.io/name=opstrace shows why"},
	} {
		done, detail, failed := controllerRolloutState(tc.d)
		got := ""
		if failed != nil {
			got = failed.Error()
		}
		if done != tc.done || detail != tc.detail || (tc.failed == "") != (failed == nil) || !strings.Contains(got, tc.failed) {
			t.Errorf("%s: %v %q %q; want %v %q %q", tc.name, done, detail, got, tc.done, tc.detail, tc.failed)
		}
	}
}
