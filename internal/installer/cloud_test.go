package installer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientauthv1beta1 "k8s.io/client-go/pkg/apis/clientauthentication/v1beta1"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	awscloud "github.com/opstrace/opstrace/internal/installer/cloud/aws"
	"github.com/opstrace/opstrace/internal/installer/config"
)

func runCLI(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	root := NewRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// Bad input is refused before any AWS call: the client constructor fails the test if reached.
func TestCreateAWSRefusesBadInputBeforeCallingAWS(t *testing.T) {
	saved := awsClientsFunc
	t.Cleanup(func() { awsClientsFunc = saved })
	awsClientsFunc = func(context.Context, string) (*awscloud.Clients, error) {
		t.Error("AWS clients built for bad input")
		return nil, errors.New("no AWS in this test")
	}
	for _, tc := range []struct {
		stdin string
		args  []string
		want  string
	}{
		{"", []string{"create", "aws", "Prod_1", "-c", "-"}, `cluster name "Prod_1" is invalid`},
		{"", []string{"create", "aws", "prod"}, "no config file: pass -c FILE"},
		{"node_count: 0\nbogus: 1\n", []string{"create", "aws", "prod", "-c", "-"}, "node_count (line 1): 0 is out of range"},
		{"gcp: {project: my-project-1}\n", []string{"create", "aws", "prod", "-c", "-"}, "gcp"},
	} {
		_, err := runCLI(t, tc.stdin, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}

func TestCloudObjectsCarryTheRenderedConfigAndIdentity(t *testing.T) {
	cfg, err := config.Parse([]byte("tenants: [team-a, team-b]\nmetric_retention_days: 90\n"), config.ProviderAWS)
	if err != nil {
		t.Fatal(err)
	}
	w := testWorkload(cfg)
	objs := BuildCloudObjects(w, "opstrace")
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.GetObjectKind().GroupVersionKind().Kind+"/"+o.GetName())
		if o.GetAnnotations()[installerHashAnnotation] == "" {
			t.Errorf("%s has no hash annotation", objectRef(o))
		}
	}
	if got := strings.Join(kinds, " "); got != "ConfigMap/opstrace-cluster-config Namespace/opstrace MetricsCluster/prod Tenant/team-a Tenant/team-b StorageClass/opstrace-gp3" {
		t.Fatalf("objects %s", got)
	}
	stored, err := config.Parse([]byte(objs[0].(*corev1.ConfigMap).Data["config.yaml"]), config.ProviderAWS)
	if err != nil || string(config.Render(stored)) != string(config.Render(cfg)) {
		t.Errorf("the stored config does not parse back to the same config: %v", err)
	}
	mc := objs[2].(*v1alpha1.MetricsCluster)
	if mc.Spec.Retention.MetricsDays != 90 || mc.Spec.Storage.S3.Bucket != "opstrace-prod-metrics" || mc.Spec.Gateway.ServiceType != corev1.ServiceTypeLoadBalancer ||
		mc.Spec.Logs.Storage.Bucket != "opstrace-prod-logs" {
		t.Errorf("MetricsCluster spec %+v", mc.Spec)
	}
	if sc := objs[5]; sc.GetAnnotations()["storageclass.kubernetes.io/is-default-class"] != "true" {
		t.Errorf("StorageClass annotations %v: not the default class", sc.GetAnnotations())
	}
	if mc.Spec.ServiceAccounts.Cortex.Annotations[awsRoleAnnotation] != testCortexRole || mc.Spec.ServiceAccounts.Loki.Annotations[awsRoleAnnotation] != testLokiRole {
		t.Errorf("service account identities %+v", mc.Spec.ServiceAccounts)
	}
	// The hash follows the content: another retention is another MetricsCluster hash, the same Tenants.
	cfg.MetricRetentionDays = 30
	again := BuildCloudObjects(testWorkload(cfg), "opstrace")
	for i, o := range objs {
		changed := o.GetAnnotations()[installerHashAnnotation] != again[i].GetAnnotations()[installerHashAnnotation]
		if want := i == 0 || i == 2; changed != want {
			t.Errorf("%s: hash changed %v, want %v", objectRef(o), changed, want)
		}
	}
}

func TestSplitImage(t *testing.T) {
	for ref, want := range map[string][2]string{
		"opstrace/opstrace-controller:v1.2.3":             {"opstrace/opstrace-controller", "v1.2.3"},
		"registry.example.com:5000/opstrace/ctl:v1":       {"registry.example.com:5000/opstrace/ctl", "v1"},
		"registry.example.com:5000/opstrace/ctl":          {"registry.example.com:5000/opstrace/ctl", ""},
		"ghcr.io/acme/opstrace-gateway:sha-0123456789abc": {"ghcr.io/acme/opstrace-gateway", "sha-0123456789abc"},
		"ghcr.io/acme/ctl:v1.2.0@sha256:0123abcd":         {"ghcr.io/acme/ctl", "v1.2.0@sha256:0123abcd"},
		"registry.example.com:5000/ctl@sha256:0123abcd":   {"registry.example.com:5000/ctl", "@sha256:0123abcd"},
	} {
		if repo, tag := splitImage(ref); repo != want[0] || tag != want[1] {
			t.Errorf("splitImage(%q) = %q, %q; want %q", ref, repo, tag, want)
		}
	}
}

const (
	testCortexRole = "arn:aws:iam::123456789012:role/opstrace/opstrace-prod-cortex"
	testLokiRole   = "arn:aws:iam::123456789012:role/opstrace/opstrace-prod-loki"
)

func testWorkload(cfg config.Config) cloudWorkload {
	return cloudWorkload{Name: "prod", Config: cfg,
		Storage:         v1alpha1.StorageSpec{Type: v1alpha1.StorageS3, S3: &v1alpha1.S3Storage{Bucket: "opstrace-prod-metrics", Region: "us-west-2"}},
		LogsBucket:      "opstrace-prod-logs",
		ServiceAccounts: serviceAccountsFor(awsRoleAnnotation, testCortexRole, testLokiRole),
		StorageClass:    awsStorageClass(),
	}
}

// The kubeconfig's credential plugin prints an ExecCredential that client-go reads, with a token signed by
// the SDK's real presigner from the AWS credentials (static ones here; nothing is sent).
func TestKubeTokenAWSPrintsAnExecCredential(t *testing.T) {
	saved := awsClientsFunc
	t.Cleanup(func() { awsClientsFunc = saved })
	awsClientsFunc = func(_ context.Context, region string) (*awscloud.Clients, error) {
		return &awscloud.Clients{Region: region, STS: sts.NewPresignClient(sts.New(sts.Options{Region: region,
			Credentials: credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", "")}))}, nil
	}
	out, err := runCLI(t, "", "kube-token", "aws", "prod", "--region", "eu-west-1")
	if err != nil {
		t.Fatal(err)
	}
	var cred clientauthv1beta1.ExecCredential
	if err := json.Unmarshal([]byte(out), &cred); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if cred.Kind != "ExecCredential" || cred.APIVersion != "client.authentication.k8s.io/v1beta1" || cred.Status == nil ||
		!strings.HasPrefix(cred.Status.Token, "k8s-aws-v1.") || cred.Status.ExpirationTimestamp == nil {
		t.Fatalf("ExecCredential %+v", cred)
	}
	if left := time.Until(cred.Status.ExpirationTimestamp.Time); left < 13*time.Minute || left > 14*time.Minute {
		t.Errorf("token expires in %s, want 14 minutes (EKS accepts it for 15)", left)
	}
}

func TestNotReadyNamesWhatIsNotReady(t *testing.T) {
	cond := func(kind string, status metav1.ConditionStatus, message string) metav1.Condition {
		return metav1.Condition{Type: kind, Status: status, Message: message}
	}
	for _, tc := range []struct {
		name       string
		generation int64
		status     v1alpha1.MetricsClusterStatus
		want       string
	}{
		{"no status", 1, v1alpha1.MetricsClusterStatus{}, "the controller has not reported a status yet (is it running? kubectl -n opstrace-system get pods)"},
		{"ready", 2, v1alpha1.MetricsClusterStatus{ObservedGeneration: 2, Conditions: []metav1.Condition{
			cond("Ready", metav1.ConditionTrue, "all ready"), cond("Progressing", metav1.ConditionFalse, "")}}, ""},
		{"ready for an older spec", 3, v1alpha1.MetricsClusterStatus{ObservedGeneration: 2, Conditions: []metav1.Condition{
			cond("Ready", metav1.ConditionTrue, "all ready")}}, "the controller has not reported on the latest spec yet (generation 3, status of 2)"},
		{"components and degraded", 1, v1alpha1.MetricsClusterStatus{ObservedGeneration: 1, Conditions: []metav1.Condition{
			cond("Ready", metav1.ConditionFalse, "2 not ready"), cond("Progressing", metav1.ConditionTrue, "rolling out"),
			cond("Degraded", metav1.ConditionTrue, "Secret s3-credentials is missing"),
			cond("IngesterReady", metav1.ConditionFalse, "1/3 ready"), cond("QuerierReady", metav1.ConditionTrue, "2/2 ready"),
			cond("LokiReady", metav1.ConditionUnknown, "no pods yet")}},
			"Degraded: Secret s3-credentials is missing; IngesterReady: 1/3 ready; LokiReady: no pods yet"},
		{"only Ready false", 1, v1alpha1.MetricsClusterStatus{ObservedGeneration: 1, Conditions: []metav1.Condition{
			cond("Ready", metav1.ConditionFalse, "the gateway has no certificate yet")}}, "Ready: the gateway has no certificate yet"},
	} {
		mc := &v1alpha1.MetricsCluster{Status: tc.status}
		mc.Generation = tc.generation
		if got := notReady(mc); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
