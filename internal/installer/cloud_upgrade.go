package installer

// One upgrade flow for every kind of cluster (local, AWS, GCP): read what is installed, plan the new
// controller and engine versions and refuse what the skew policy forbids (internal/upgrade/skew.go), print
// the plan, ask, apply the CRDs by server-side apply and upgrade the Helm release, wait for the controller
// and then the MetricsCluster to roll out (printing the Progressing message as it changes), then verify.
// What differs by kind is an upgradeTarget: how to connect, what else to store, how to verify.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/release"
	"helm.sh/helm/v3/pkg/storage/driver"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/manifests"
	"github.com/opstrace/opstrace/internal/upgrade"
	"github.com/opstrace/opstrace/internal/version"
)

// upgradeTarget is what the upgrade flow needs from one kind of cluster.
type upgradeTarget struct {
	// what names the cluster in messages: "AWS cluster prod in us-west-2".
	what string
	// name and namespace of the MetricsCluster.
	name, namespace string
	connect         func(context.Context) (*rest.Config, error)
	// again is the command that runs this upgrade again, for the messages of a failed wait.
	again string
	// store, when set, records the new images after the Helm upgrade: a cloud cluster's stored config.
	store func(ctx context.Context, kube client.Client, controllerImage, gatewayImage string) error
	// verify runs once the cluster has rolled out.
	verify func(ctx context.Context, kube client.Client) error
	// diagnose, when set, is added to a failed wait: where to look next.
	diagnose func() string
}

// upgradeOptions are the choices of the user and, for tests, the timing.
type upgradeOptions struct {
	// controllerImage and gatewayImage are the images to upgrade to; "" keeps the installed repository,
	// at this CLI's version.
	controllerImage, gatewayImage string
	yes, dryRun                   bool
	// confirm asks the user; nil with yes unset refuses.
	confirm func(question string) bool
	// timeout bounds the wait for the rollout (30 minutes when zero: ingesters are replaced one at a time);
	// interval is the poll interval (2 s when zero).
	timeout, interval time.Duration
}

// installedCluster is what upgrade reads before it changes anything.
type installedCluster struct {
	controllerImage, gatewayImage string
	release                       *release.Release
	cluster                       v1alpha1.MetricsCluster
}

// upgradePlan is what an upgrade changes, from → to. Pure data: planUpgrade builds it, Describe prints it,
// checkUpgradeSkew judges it.
type upgradePlan struct {
	ControllerFrom, ControllerTo string
	GatewayFrom, GatewayTo       string
	// ChartFrom and ChartTo name the installed release's chart and this CLI's; ChartSame says their
	// content is the same.
	ChartFrom, ChartTo string
	ChartSame          bool
	Revision           int
	// CortexFrom is the version every Cortex component runs (status.version; "" before the first rollout).
	// CortexTo is the version the new controller rolls out; "" when this CLI cannot know it (a controller
	// image of another version without spec.version). CortexWhy says where CortexTo comes from.
	CortexFrom, CortexTo, CortexWhy string
	// LokiFrom is the version every Loki component runs (status.logsVersion; "" before the first rollout or
	// with logs off). LokiTo is the Loki version the new controller runs ("" when logs are off or unknown),
	// LokiWhy where it comes from.
	LokiFrom, LokiTo, LokiWhy string
	// DegradedBefore is the Degraded condition the old controller reported, "" when none.
	DegradedBefore string
}

// atThisVersion is the image of this CLI's version in the repository of the installed image.
func atThisVersion(installed string) string {
	repo, _ := splitImage(installed)
	return repo + ":" + version.Version
}

// planUpgrade decides the images and versions of an upgrade to this CLI's chart. Pure.
func planUpgrade(in installedCluster, embedded *chart.Chart, controllerImage, gatewayImage string) upgradePlan {
	p := upgradePlan{
		ControllerFrom: in.controllerImage, ControllerTo: controllerImage,
		GatewayFrom: in.gatewayImage, GatewayTo: gatewayImage,
		ChartTo: chartName(embedded) + " of this CLI",
	}
	if p.ControllerTo == "" {
		p.ControllerTo = atThisVersion(p.ControllerFrom)
	}
	if p.GatewayTo == "" {
		p.GatewayTo = atThisVersion(p.GatewayFrom)
	}
	if in.release != nil {
		p.Revision = in.release.Version
		p.ChartFrom = fmt.Sprintf("%s (revision %d)", chartName(in.release.Chart), in.release.Version)
		p.ChartSame = in.release.Chart != nil && chartDigest(in.release.Chart) == chartDigest(embedded)
	}
	if _, _, degraded := rolloutState(&in.cluster, rolloutGoal{}); degraded != nil {
		p.DegradedBefore = degraded.Error()
	}
	spec := in.cluster.Spec
	p.CortexFrom = in.cluster.Status.Version
	p.LokiFrom = in.cluster.Status.LogsVersion
	controller := imageTag(p.ControllerTo)
	thisCLI := controller == version.Version
	switch {
	case spec.Version != "":
		p.CortexTo, p.CortexWhy = spec.Version, "spec.version"
	case thisCLI:
		p.CortexTo, p.CortexWhy = manifests.DefaultCortexVersion, "the default of controller "+controller
	default:
		p.CortexWhy = "the default of controller " + controller + ", which this CLI (" + version.Version + ") does not know"
	}
	if spec.Logs.IsEnabled() {
		switch {
		case spec.Logs.Version != "":
			p.LokiTo, p.LokiWhy = spec.Logs.Version, "spec.logs.version"
		case thisCLI:
			p.LokiTo, p.LokiWhy = manifests.DefaultLokiVersion, "the default of controller "+controller
		default:
			p.LokiWhy = "the default of controller " + controller
		}
	}
	return p
}

func chartName(ch *chart.Chart) string {
	if ch == nil || ch.Metadata == nil {
		return "unknown chart"
	}
	return fmt.Sprintf("%s %s (app %s)", ch.Metadata.Name, ch.Metadata.Version, ch.Metadata.AppVersion)
}

// Describe is the plan as the user reads it before saying yes.
func (p upgradePlan) Describe(what, name, namespace string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Upgrade %s:\n", what)
	row := func(what, from, to, note string) {
		change := from + " → " + to
		if from == to {
			change = to + " (unchanged)"
		}
		if note != "" {
			change += " (" + note + ")"
		}
		fmt.Fprintf(&b, "  %-11s %s\n", what, change)
	}
	row("controller", p.ControllerFrom, p.ControllerTo, "")
	row("gateway", p.GatewayFrom, p.GatewayTo, "")
	chartNote := "another chart; CRDs by server-side apply"
	if p.ChartSame {
		chartNote = "same chart; CRDs applied again by server-side apply"
	}
	fmt.Fprintf(&b, "  %-11s %s → %s (%s)\n", "chart", orDash(p.ChartFrom), p.ChartTo, chartNote)
	cortexTo := p.CortexTo
	if cortexTo == "" {
		cortexTo = "unknown"
	}
	row("Cortex", orDash(p.CortexFrom), cortexTo, p.CortexWhy)
	if p.LokiTo != "" || p.LokiWhy != "" {
		lokiTo := p.LokiTo
		if lokiTo == "" {
			lokiTo = "unknown"
		}
		row("Loki", orDash(p.LokiFrom), lokiTo, p.LokiWhy)
	} else {
		fmt.Fprintf(&b, "  %-11s off (spec.logs.enabled: false)\n", "Loki")
	}
	if p.DegradedBefore != "" {
		fmt.Fprintf(&b, "  %-11s %s: the new controller gets %s to clear it before the wait gives up\n", "now", p.DegradedBefore, degradedGrace)
	}
	fmt.Fprintf(&b, "then wait until MetricsCluster %s/%s has rolled out, and verify it.\n", namespace, name)
	return b.String()
}

// checkUpgradeSkew applies the version skew policy (internal/upgrade/skew.go) to a plan: this CLI's chart
// and CRDs and the new controller at most one minor version after the installed controller and never older;
// Cortex never downgraded and never more than one minor version ahead of what runs.
func checkUpgradeSkew(p upgradePlan) error {
	if strings.Contains(p.ControllerFrom, "@") && p.ControllerTo == atThisVersion(p.ControllerFrom) {
		return fmt.Errorf("upgrade refused: the installed controller image %s is pinned by digest, so the image of "+
			"this CLI's version cannot be derived from it; pass --controller-image REPOSITORY:TAG[@DIGEST] of %s",
			p.ControllerFrom, version.Version)
	}
	installed := imageTag(p.ControllerFrom)
	if err := upgrade.CheckCLIControllerSkew(version.Version, installed); err != nil {
		return fmt.Errorf("upgrade refused: %w", err)
	}
	if to := imageTag(p.ControllerTo); to != version.Version {
		if err := upgrade.CheckCLIControllerSkew(to, installed); err != nil {
			return fmt.Errorf("upgrade refused: --controller-image %s: %w", p.ControllerTo, err)
		}
	}
	if p.CortexTo != "" {
		if err := upgrade.CheckEngineChange(p.CortexFrom, p.CortexTo); err != nil {
			return fmt.Errorf("upgrade refused: the new controller would roll out Cortex %s (%s) where %s runs: %w",
				p.CortexTo, p.CortexWhy, p.CortexFrom, err)
		}
	}
	if p.LokiTo != "" {
		if err := upgrade.Loki.CheckChange(p.LokiFrom, p.LokiTo); err != nil {
			return fmt.Errorf("upgrade refused: the new controller would roll out Loki %s (%s) where %s runs: %w",
				p.LokiTo, p.LokiWhy, p.LokiFrom, err)
		}
	}
	return nil
}

// observeInstalled reads the controller's Deployment, its Helm release and the MetricsCluster.
func observeInstalled(ctx context.Context, restConfig *rest.Config, kube client.Client, t upgradeTarget) (installedCluster, error) {
	var in installedCluster
	key := client.ObjectKey{Namespace: ControllerNamespace, Name: ControllerRelease + "-controller"}
	var deployment appsv1.Deployment
	if err := kube.Get(ctx, key, &deployment); err != nil {
		return in, fmt.Errorf("read the installed controller (Deployment %s): %w; is this a cluster opstrace created?", key, err)
	}
	containers := deployment.Spec.Template.Spec.Containers
	if len(containers) == 0 {
		return in, fmt.Errorf("the controller Deployment %s has no container", key)
	}
	in.controllerImage = containers[0].Image
	for _, arg := range containers[0].Args {
		if image, ok := strings.CutPrefix(arg, "--gateway-image="); ok {
			in.gatewayImage = image
		}
	}
	if in.gatewayImage == "" {
		return in, fmt.Errorf("the controller Deployment %s has no --gateway-image argument: it was not installed by this chart", key)
	}
	err := withKubeconfigFile(restConfig, func(kubeconfig string) error {
		cfg, err := helmConfig(kubeconfig)
		if err != nil {
			return err
		}
		in.release, err = action.NewGet(cfg).Run(ControllerRelease)
		return err
	})
	if errors.Is(err, driver.ErrReleaseNotFound) {
		return in, fmt.Errorf("there is no Helm release %s in %s: the controller was not installed by opstrace; install it with opstrace create", ControllerRelease, ControllerNamespace)
	}
	if err != nil {
		return in, fmt.Errorf("read Helm release %s: %w", ControllerRelease, err)
	}
	mcKey := client.ObjectKey{Namespace: t.namespace, Name: t.name}
	if err := kube.Get(ctx, mcKey, &in.cluster); err != nil {
		return in, fmt.Errorf("read MetricsCluster %s: %w", mcKey, err)
	}
	return in, nil
}

// runUpgrade is the upgrade flow (see the top of this file).
func runUpgrade(ctx context.Context, t upgradeTarget, opts upgradeOptions, out io.Writer) error {
	restConfig, kube, err := connectKube(ctx, t.connect, t.what)
	if err != nil {
		return err
	}
	in, err := observeInstalled(ctx, restConfig, kube, t)
	if err != nil {
		return err
	}
	embedded, err := LoadChart()
	if err != nil {
		return err
	}
	p := planUpgrade(in, embedded, opts.controllerImage, opts.gatewayImage)
	fmt.Fprint(out, p.Describe(t.what, t.name, t.namespace))
	if err := checkUpgradeSkew(p); err != nil {
		return err
	}
	if opts.dryRun {
		return nil
	}
	if !opts.yes && (opts.confirm == nil || !opts.confirm("Upgrade?")) {
		return errors.New("not confirmed; nothing was changed")
	}

	start := time.Now()
	var revision int
	if err := withKubeconfigFile(restConfig, func(kubeconfig string) error {
		revision, err = InstallController(ctx, kubeconfig, ControllerNamespace,
			controllerValues(config.Config{ControllerImage: p.ControllerTo, GatewayImage: p.GatewayTo}))
		return err
	}); err != nil {
		return fmt.Errorf("upgrade the controller: %w", err)
	}
	if revision == p.Revision {
		fmt.Fprintf(out, "• CRDs applied; Helm release %s unchanged at revision %d (same chart and values)\n", ControllerRelease, revision)
	} else {
		fmt.Fprintf(out, "• CRDs applied; Helm release %s upgraded from revision %d to %d\n", ControllerRelease, p.Revision, revision)
	}
	if t.store != nil {
		if err := t.store(ctx, kube, p.ControllerTo, p.GatewayTo); err != nil {
			return err
		}
	}
	w := rolloutWait{target: t, opts: opts, out: out, kube: kube, connected: time.Now(), degradedBefore: p.DegradedBefore}
	if err := w.controller(ctx); err != nil {
		return err
	}
	w.controllerDone = time.Now()
	if err := w.cluster(ctx, p.goal()); err != nil {
		return err
	}
	fmt.Fprintf(out, "• %s upgraded in %s; verifying\n", t.what, time.Since(start).Round(time.Second))
	kube, err = w.client(ctx)
	if err != nil {
		return err
	}
	return t.verify(ctx, kube)
}

// rolloutWait polls the cluster until the upgrade has rolled out, printing what changes with the elapsed
// time. It connects again every 5 minutes and after an error: cloud API tokens last minutes (15 on EKS),
// an ingester rollout may take longer.
type rolloutWait struct {
	target    upgradeTarget
	opts      upgradeOptions
	out       io.Writer
	kube      client.Client
	connected time.Time
	// degradedBefore is the Degraded condition of before the upgrade (upgradePlan.DegradedBefore);
	// controllerDone is when the new controller had rolled out.
	degradedBefore string
	controllerDone time.Time
}

// degradedGrace is how long the new controller has to clear a Degraded condition the old one reported: the
// upgrade may be what fixes it, and until the new controller has reconciled, the status is the old one's.
const degradedGrace = 2 * time.Minute

func (w *rolloutWait) client(ctx context.Context) (client.Client, error) {
	if w.kube != nil && time.Since(w.connected) < 5*time.Minute {
		return w.kube, nil
	}
	restConfig, err := w.target.connect(ctx)
	if err != nil {
		return nil, err
	}
	if w.kube, err = newKubeClient(restConfig); err != nil {
		return nil, err
	}
	w.connected = time.Now()
	return w.kube, nil
}

// poll calls state until it says done or fails, printing its detail whenever it changes.
func (w *rolloutWait) poll(ctx context.Context, what string, state func(client.Client) (done bool, detail string, err error)) error {
	timeout, interval := w.opts.timeout, w.opts.interval
	if timeout <= 0 {
		timeout = 30 * time.Minute
	}
	if interval <= 0 {
		interval = 2 * time.Second
	}
	start := time.Now()
	fmt.Fprintf(w.out, "• waiting for %s\n", what)
	var last string
	for {
		var done bool
		detail, err := "", error(nil)
		kube, cerr := w.client(ctx)
		if cerr != nil {
			detail = "cannot reach the API server: " + cerr.Error()
		} else if done, detail, err = state(kube); err != nil {
			return err
		}
		elapsed := time.Since(start).Round(time.Second)
		if done {
			fmt.Fprintf(w.out, "  [%s] done\n", elapsed)
			return nil
		}
		if detail != last {
			fmt.Fprintf(w.out, "  [%s] %s\n", elapsed, detail)
			last = detail
		}
		if time.Since(start) >= timeout {
			msg := fmt.Sprintf("%s: not done after %s (now: %s); the controller goes on by itself: run %s to wait again and verify",
				what, timeout, last, w.target.again)
			if w.target.diagnose != nil {
				msg += "\n" + w.target.diagnose()
			}
			return errors.New(msg)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (now: %s)", what, ctx.Err(), last)
		case <-time.After(interval):
		}
	}
}

// controller waits until the controller's Deployment runs the new release on every replica.
func (w *rolloutWait) controller(ctx context.Context) error {
	key := client.ObjectKey{Namespace: ControllerNamespace, Name: ControllerRelease + "-controller"}
	return w.poll(ctx, "the controller (Deployment "+key.String()+") to roll out", func(kube client.Client) (bool, string, error) {
		var d appsv1.Deployment
		if err := kube.Get(ctx, key, &d); err != nil {
			w.kube = nil
			return false, err.Error(), nil
		}
		return controllerRolloutState(&d)
	})
}

// controllerRolloutState says whether the controller's Deployment has rolled out, and what it waits for. A
// rollout past its progress deadline (an image that cannot be pulled, a pod that crashes) is an error: waiting
// longer changes nothing. Pure.
func controllerRolloutState(d *appsv1.Deployment) (done bool, detail string, failed error) {
	want := ptr.Deref(d.Spec.Replicas, 1)
	s := d.Status
	if s.ObservedGeneration < d.Generation {
		return false, fmt.Sprintf("the Deployment controller has not seen the new template yet (generation %d, status of %d)", d.Generation, s.ObservedGeneration), nil
	}
	for _, c := range s.Conditions {
		if c.Type == appsv1.DeploymentProgressing && c.Status == corev1.ConditionFalse && c.Reason == "ProgressDeadlineExceeded" {
			return false, "", fmt.Errorf("the controller's Deployment %s/%s did not roll out: %s; kubectl -n %s describe pods -l %s shows why "+
				"(for example an image that cannot be pulled); fix it and run the upgrade again",
				d.Namespace, d.Name, c.Message, d.Namespace, metav1.FormatLabelSelector(d.Spec.Selector))
		}
	}
	done = s.UpdatedReplicas == want && s.AvailableReplicas == want && s.Replicas == want
	return done, fmt.Sprintf("%d/%d replicas updated, %d available", s.UpdatedReplicas, want, s.AvailableReplicas), nil
}

// cluster waits until the MetricsCluster has reached goal.
func (w *rolloutWait) cluster(ctx context.Context, goal rolloutGoal) error {
	key := client.ObjectKey{Namespace: w.target.namespace, Name: w.target.name}
	what := "MetricsCluster " + key.String() + " to roll out"
	if goal.cortex != "" {
		what += " Cortex " + goal.cortex
	}
	if goal.loki != "" {
		what += " and Loki " + goal.loki
	}
	return w.poll(ctx, what, func(kube client.Client) (bool, string, error) {
		var mc v1alpha1.MetricsCluster
		if err := kube.Get(ctx, key, &mc); err != nil {
			w.kube = nil
			return false, err.Error(), nil
		}
		done, detail, degraded := w.judge(&mc, goal, time.Now())
		if degraded != nil {
			msg := fmt.Sprintf("%v\nthe controller is upgraded, the cluster is not: fix what the message says, then run %s to wait again and verify",
				degraded, w.target.again)
			if w.target.diagnose != nil {
				msg += "\n" + w.target.diagnose()
			}
			return false, "", errors.New(msg)
		}
		return done, detail, nil
	})
}

// judge is rolloutState, except that the Degraded condition the old controller reported is waited on for
// degradedGrace after the new controller rolled out, instead of ending the wait at once.
func (w *rolloutWait) judge(mc *v1alpha1.MetricsCluster, goal rolloutGoal, now time.Time) (done bool, detail string, degraded error) {
	done, detail, degraded = rolloutState(mc, goal)
	if degraded != nil && degraded.Error() == w.degradedBefore && now.Sub(w.controllerDone) < degradedGrace {
		return false, "still " + degraded.Error() + " (reported before the upgrade; waiting for the new controller)", nil
	}
	return done, detail, degraded
}

// rolloutGoal is what an upgraded cluster reports once it has rolled out; "" is anything.
type rolloutGoal struct {
	// controller is the release of the controller that must have written the status: without it, a Ready
	// status the old controller wrote would end the wait before the new one reconciled.
	controller string
	// cortex and loki are the versions status.version and status.logsVersion must show.
	cortex, loki string
}

// goal is what the cluster reports once the plan is rolled out. The new controller's release is known only
// when it is this CLI's.
func (p upgradePlan) goal() rolloutGoal {
	goal := rolloutGoal{cortex: p.CortexTo, loki: p.LokiTo}
	// A release image reports its tag as its version; another tag (a commit, "latest") says nothing.
	if tag := imageTag(p.ControllerTo); tag == version.Version || upgrade.IsRelease(tag) {
		goal.controller = tag
	}
	return goal
}

// rolloutState says whether a MetricsCluster has reached goal, and what it is doing: the Progressing
// condition's message while it rolls out. A Degraded condition is an error: the controller stopped until
// someone acts. Pure.
func rolloutState(mc *v1alpha1.MetricsCluster, goal rolloutGoal) (done bool, detail string, degraded error) {
	conditions := mc.Status.Conditions
	if d := meta.FindStatusCondition(conditions, v1alpha1.ConditionDegraded); d != nil && d.Status == metav1.ConditionTrue {
		return false, "", fmt.Errorf("MetricsCluster %s/%s is Degraded (%s): %s", mc.Namespace, mc.Name, d.Reason, d.Message)
	}
	if len(conditions) == 0 {
		return false, "the controller has not reported a status yet", nil
	}
	if mc.Status.ObservedGeneration < mc.Generation {
		return false, fmt.Sprintf("the controller has not reported on the latest spec yet (generation %d, status of %d)",
			mc.Generation, mc.Status.ObservedGeneration), nil
	}
	ready := meta.FindStatusCondition(conditions, v1alpha1.ConditionReady)
	progressing := meta.FindStatusCondition(conditions, v1alpha1.ConditionProgressing)
	switch {
	case goal.controller != "" && mc.Status.ControllerVersion != goal.controller:
		return false, fmt.Sprintf("the status is controller %s's; waiting for controller %s to reconcile the cluster",
			orDash(mc.Status.ControllerVersion), goal.controller), nil
	case progressing != nil && progressing.Status == metav1.ConditionTrue:
		return false, progressing.Message, nil
	case ready == nil:
		return false, "no Ready condition yet", nil
	case ready.Status != metav1.ConditionTrue:
		return false, ready.Message, nil
	case goal.cortex != "" && mc.Status.Version != goal.cortex:
		return false, fmt.Sprintf("Ready at Cortex %s; waiting for the new controller to roll out %s", orDash(mc.Status.Version), goal.cortex), nil
	case goal.loki != "" && mc.Status.LogsVersion != goal.loki:
		return false, fmt.Sprintf("Ready at Loki %s; waiting for the new controller to roll out %s", orDash(mc.Status.LogsVersion), goal.loki), nil
	}
	return true, "", nil
}

// newUpgradeCloudCommand is `opstrace upgrade aws|gcp NAME`.
func newUpgradeCloudCommand(provider string) *cobra.Command {
	var opts upgradeOptions
	cmd := newCloudClusterCommand(provider, "upgrade",
		"Upgrade the controller and CRDs of a "+strings.ToUpper(provider)+" cluster to this CLI's version, wait for the rollout, then verify it",
		"Reads the config create stored in the cluster (no file needed) and what is installed, prints what\n"+
			"changes (controller and gateway images, chart, Cortex and Loki versions) and refuses a downgrade or a\n"+
			"skip of more than one minor version, saying what to do instead. Then applies the CRDs by server-side\n"+
			"apply, upgrades the Helm release, stores the new images in the stored config, waits for the controller\n"+
			"and then the MetricsCluster to roll out (printing the Progressing message as it changes), and runs\n"+
			"verify. A Degraded MetricsCluster stops the wait with its message.",
		func(cmd *cobra.Command, c cloudCluster) error {
			t, err := cloudUpgradeTarget(cmd.Context(), c, opts, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			opts.confirm = func(q string) bool { return confirm(cmd, q) }
			return runUpgrade(cmd.Context(), t, opts, cmd.OutOrStdout())
		})
	cmd.Flags().StringVar(&opts.controllerImage, "controller-image", "", "Controller image REPOSITORY:TAG to upgrade to (default: the installed repository at this CLI's version)")
	cmd.Flags().StringVar(&opts.gatewayImage, "gateway-image", "", "Gateway image REPOSITORY:TAG to upgrade to (default: the installed repository at this CLI's version)")
	cmd.Flags().BoolVar(&opts.yes, "yes", false, "Do not ask for confirmation")
	cmd.Flags().BoolVar(&opts.dryRun, "dry-run", false, "Print what would change and exit")
	cmd.Flags().DurationVar(&opts.timeout, "timeout", 30*time.Minute, "How long to wait for the rollout")
	return cmd
}

// cloudUpgradeTarget reads the config create stored in the cluster and checks the images given on the
// command line against it, before anything changes.
func cloudUpgradeTarget(ctx context.Context, c cloudCluster, opts upgradeOptions, out io.Writer) (upgradeTarget, error) {
	_, kube, err := connectKube(ctx, c.connect, c.what)
	if err != nil {
		return upgradeTarget{}, err
	}
	cfg, err := readStoredConfig(ctx, kube, c.provider)
	if err != nil {
		return upgradeTarget{}, fmt.Errorf("%w; upgrade needs the config create stores: run create %s %s -c FILE once with this CLI", err, c.provider, c.name)
	}
	if err := checkImageFlags(cfg, c.provider, opts); err != nil {
		return upgradeTarget{}, err
	}
	return upgradeTarget{
		what: c.what, name: c.name, namespace: cloud.Namespace, connect: c.connect, again: c.command("upgrade"),
		store: func(ctx context.Context, kube client.Client, controllerImage, gatewayImage string) error {
			cfg.ControllerImage, cfg.GatewayImage = controllerImage, gatewayImage
			return storeCloudConfig(ctx, kube, c.name, cfg)
		},
		verify: func(ctx context.Context, _ client.Client) error {
			return verifyCloud(ctx, c, v1alpha1.SystemTenant, out)
		},
		diagnose: func() string { return "every component and condition: " + c.command("status") },
	}, nil
}

// checkImageFlags checks --controller-image and --gateway-image as the config file's controller_image and
// gateway_image are checked, since they go into the stored config.
func checkImageFlags(cfg config.Config, provider string, opts upgradeOptions) error {
	for _, f := range []struct{ flag, key, image string }{
		{"--controller-image", "controller_image", opts.controllerImage},
		{"--gateway-image", "gateway_image", opts.gatewayImage},
	} {
		if f.image == "" {
			continue
		}
		check := cfg
		if f.key == "controller_image" {
			check.ControllerImage = f.image
		} else {
			check.GatewayImage = f.image
		}
		_, err := config.Parse(config.Render(check), provider)
		var problems config.ErrorList
		if errors.As(err, &problems) {
			for _, p := range problems {
				if p.Path == f.key {
					return fmt.Errorf("%s %q: %s; allowed: %s", f.flag, f.image, p.Problem, p.Allowed)
				}
			}
		}
		if err != nil {
			return fmt.Errorf("%s %q: %w", f.flag, f.image, err)
		}
	}
	return nil
}

// storeCloudConfig applies the stored config as create does (BuildCloudObjects' ConfigMap, with its content
// hash), so that status and a later create compare against what the upgrade installed.
func storeCloudConfig(ctx context.Context, kube client.Client, name string, cfg config.Config) error {
	for _, obj := range BuildCloudObjects(cloudWorkload{Name: name, Config: cfg}, cloud.Namespace) {
		if _, ok := obj.(*corev1.ConfigMap); !ok {
			continue
		}
		if err := kube.Patch(ctx, obj, client.Apply, installerFieldOwner, client.ForceOwnership); err != nil {
			return fmt.Errorf("store the config (%s): %w", objectRef(obj), err)
		}
	}
	return nil
}
