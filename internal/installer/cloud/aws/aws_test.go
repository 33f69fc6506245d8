package aws

// The whole AWS install against the in-memory fakes of fake_test.go (EC2, IAM and EKS cannot run offline;
// S3 is faked here only because these tests run in synctest's fake time — the bucket steps run against a
// real MinIO in s3_test.go). The fakes record every request; the tests assert the exact ones that matter.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/eks"
	elb "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancing"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	iamtypes "github.com/aws/aws-sdk-go-v2/service/iam/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

const testCluster = "prod"

// opsRole is the eks_admin_roles entry of testConfig.
const opsRole = "arn:aws:iam::123456789012:role/ops"

func testConfig(t testing.TB) config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte("node_count: 4\nmetric_retention_days: 90\naws: {region: eu-west-1, zone_suffixes: [a, b], eks_admin_roles: [\""+opsRole+"\"]}\n"), config.ProviderAWS)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// realistic latencies, scaled: what a real install waits for.
func slowWorld() *world {
	w := newWorld("eu-west-1")
	w.latency["eks"] = 10 * time.Minute
	w.latency["nodegroup"] = 4 * time.Minute
	w.latency["nat"] = 2 * time.Minute
	w.latency["addon"] = time.Minute
	w.latency["call"] = 200 * time.Millisecond
	return w
}

func run(t testing.TB, w *world, steps []plan.Step, concurrency int) (plan.Report, error) {
	return plan.Run(context.Background(), steps, plan.Options{Concurrency: concurrency, Rand: func() float64 { return 0.5 }})
}

func install(t testing.TB, w *world, concurrency int) (plan.Report, error) {
	return run(t, w, Steps(w.clients(), testCluster, testConfig(t)), concurrency)
}

func destroy(t testing.TB, w *world) (plan.Report, error) {
	rev, err := plan.Reverse(Steps(w.clients(), testCluster, testConfig(t)))
	if err != nil {
		t.Fatal(err)
	}
	return run(t, w, rev, 8)
}

// previewDestroy returns the reversed steps and their destroy plan.
func previewDestroy(t testing.TB, steps []plan.Step) ([]plan.Step, []plan.Planned) {
	t.Helper()
	rev, err := plan.Reverse(steps)
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Preview(context.Background(), rev)
	if err != nil {
		t.Fatal(err)
	}
	return rev, p
}

func mutations(w *world) []string {
	var out []string
	for _, op := range w.ops("") {
		verb := op[strings.Index(op, ":")+1:]
		if !strings.HasPrefix(verb, "Describe") && !strings.HasPrefix(verb, "Get") && !strings.HasPrefix(verb, "List") && !strings.HasPrefix(verb, "Head") {
			out = append(out, op)
		}
	}
	return out
}

func TestInstallMakesTheExactRequestsAndRerunChangesNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		rep, err := install(t, w, 8)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range rep.Steps {
			want := plan.Create
			if s.Name == "aws/load-balancers" {
				want = plan.NoOp // it deletes what Kubernetes left, on destroy only
			}
			if s.State != plan.Done || s.Action != want {
				t.Errorf("%s: %s %s, want done %s", s.Name, s.State, s.Action, want)
			}
		}

		vpcs := inputs[*ec2.CreateVpcInput](w, "ec2:CreateVpc")
		if len(vpcs) != 1 || aws.ToString(vpcs[0].CidrBlock) != "10.0.0.0/16" || tagValue(specTags(vpcs[0].TagSpecifications), cloud.OwnerTag) != testCluster {
			t.Errorf("CreateVpc requests: %+v", vpcs)
		}
		var cidrs []string
		for _, in := range inputs[*ec2.CreateSubnetInput](w, "ec2:CreateSubnet") {
			cidrs = append(cidrs, aws.ToString(in.AvailabilityZone)+" "+aws.ToString(in.CidrBlock)+" "+tagValue(specTags(in.TagSpecifications), "Name"))
			if tagValue(specTags(in.TagSpecifications), cloud.OwnerTag) != testCluster {
				t.Errorf("subnet created without the owned tag: %+v", in)
			}
		}
		slices.Sort(cidrs)
		want := []string{
			"eu-west-1a 10.0.0.0/19 opstrace-prod-private-eu-west-1a", "eu-west-1a 10.0.192.0/21 opstrace-prod-public-eu-west-1a",
			"eu-west-1b 10.0.200.0/21 opstrace-prod-public-eu-west-1b", "eu-west-1b 10.0.32.0/19 opstrace-prod-private-eu-west-1b",
		}
		if !slices.Equal(cidrs, want) {
			t.Errorf("subnets %q, want %q", cidrs, want)
		}

		clusters := inputs[*eks.CreateClusterInput](w, "eks:CreateCluster")
		if len(clusters) != 1 {
			t.Fatalf("%d CreateCluster requests", len(clusters))
		}
		c := clusters[0]
		if aws.ToString(c.Name) != testCluster || aws.ToString(c.Version) != config.DefaultKubernetesVersion ||
			aws.ToString(c.RoleArn) != "arn:aws:iam::123456789012:role/opstrace/opstrace-prod-eks-cluster" ||
			len(c.ResourcesVpcConfig.SubnetIds) != 4 || c.Tags[cloud.OwnerTag] != testCluster {
			t.Errorf("CreateCluster %+v", c)
		}
		ngs := inputs[*eks.CreateNodegroupInput](w, "eks:CreateNodegroup")
		if len(ngs) != 1 || aws.ToInt32(ngs[0].ScalingConfig.DesiredSize) != 4 || !slices.Equal(ngs[0].InstanceTypes, []string{"m5.xlarge"}) ||
			len(ngs[0].Subnets) != 2 || aws.ToString(ngs[0].NodeRole) != "arn:aws:iam::123456789012:role/opstrace/opstrace-prod-eks-node" {
			t.Errorf("CreateNodegroup %+v", ngs)
		}
		for _, s := range ngs[0].Subnets {
			if !strings.Contains(tagValue(w.subnets[s].tags, "Name"), "private") {
				t.Errorf("node group in public subnet %s", s)
			}
		}

		// IRSA: the Cortex role trusts only the Cortex service account, and may only use the metrics bucket.
		var cortexTrust string
		for _, in := range inputs[*iam.CreateRoleInput](w, "iam:CreateRole") {
			if aws.ToString(in.Path) != "/opstrace/" || len(in.Tags) != 1 || aws.ToString(in.Tags[0].Value) != testCluster {
				t.Errorf("CreateRole %s path %s tags %v", aws.ToString(in.RoleName), aws.ToString(in.Path), in.Tags)
			}
			if aws.ToString(in.RoleName) == "opstrace-prod-cortex" {
				cortexTrust = aws.ToString(in.AssumeRolePolicyDocument)
			}
		}
		wantTrust := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Federated":"arn:aws:iam::123456789012:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/PROD"},"Action":["sts:AssumeRoleWithWebIdentity"],"Condition":{"StringEquals":{"oidc.eks.eu-west-1.amazonaws.com/id/PROD:aud":"sts.amazonaws.com","oidc.eks.eu-west-1.amazonaws.com/id/PROD:sub":"system:serviceaccount:opstrace:prod-cortex"}}}]}`
		if cortexTrust != wantTrust {
			t.Errorf("cortex trust policy\n got %s\nwant %s", cortexTrust, wantTrust)
		}
		var cortexPolicy string
		for _, in := range inputs[*iam.PutRolePolicyInput](w, "iam:PutRolePolicy") {
			if aws.ToString(in.RoleName) == "opstrace-prod-cortex" {
				cortexPolicy = aws.ToString(in.PolicyDocument)
			}
		}
		wantPolicy := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:ListBucket"],"Resource":["arn:aws:s3:::opstrace-prod-metrics"]},{"Effect":"Allow","Action":["s3:GetObject","s3:PutObject","s3:DeleteObject"],"Resource":["arn:aws:s3:::opstrace-prod-metrics/*"]}]}`
		if cortexPolicy != wantPolicy {
			t.Errorf("cortex bucket policy\n got %s\nwant %s", cortexPolicy, wantPolicy)
		}
		for _, in := range inputs[*s3.CreateBucketInput](w, "s3:CreateBucket") {
			if in.CreateBucketConfiguration.LocationConstraint != "eu-west-1" || len(in.CreateBucketConfiguration.Tags) != 1 {
				t.Errorf("CreateBucket %+v", in.CreateBucketConfiguration)
			}
		}
		if rules := w.buckets["opstrace-prod-metrics"].lifecycle; len(rules) != 1 || aws.ToInt32(rules[0].Expiration.Days) != 90 {
			t.Errorf("metrics bucket lifecycle %+v", rules)
		}

		before := len(w.requests)
		rep, err = install(t, w, 8)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range rep.Steps {
			if s.Action != plan.NoOp {
				t.Errorf("rerun: %s planned %s", s.Name, s.Action)
			}
		}
		for _, r := range w.requests[before:] {
			if m := mutations(&world{requests: []request{r}}); len(m) > 0 {
				t.Errorf("rerun made a change: %v", m)
			}
		}
	})
}

// The parallel plan waits only for its critical path (the EKS cluster); a sequential run waits for every
// step. Fake time makes the figures exact; this logs them and asserts only the ordering facts.
func TestParallelPlanFollowsTheCriticalPath(t *testing.T) {
	elapsed := func(concurrency int) (plan.Report, time.Duration) {
		var rep plan.Report
		synctest.Test(t, func(t *testing.T) {
			w := slowWorld()
			var err error
			if rep, err = install(t, w, concurrency); err != nil {
				t.Fatal(err)
			}
		})
		return rep, rep.Elapsed
	}
	seqRep, sequential := elapsed(1)
	_, parallel := elapsed(16)
	durations := map[string]time.Duration{}
	for _, s := range seqRep.Steps {
		durations[s.Name] = s.Elapsed
	}
	path, critical, err := plan.CriticalPath(Steps(newWorld("eu-west-1").clients(), testCluster, testConfig(t)), durations)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(path, "aws/eks-cluster") {
		t.Errorf("critical path %v does not go through the EKS cluster", path)
	}
	if parallel >= sequential {
		t.Errorf("parallel %s is not faster than sequential %s", parallel, sequential)
	}
	t.Logf("critical path %s = %s (step durations of the sequential run)", strings.Join(path, " → "), critical)
	t.Logf("parallel install %s vs sequential %s: %.2fx faster; parallel / critical path = %.2f",
		parallel, sequential, float64(sequential)/float64(parallel), float64(parallel)/float64(critical))
}

// Kill the installer right after each mutating request in turn (AWS has done it; the installer never saw
// the answer), then run create again: every rerun converges to the same resources as an uninterrupted
// install, with nothing duplicated, and a third run changes nothing.
func TestInterruptedAtEveryRequestTheRerunConverges(t *testing.T) {
	var clean []string
	var total int
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		if _, err := install(t, w, 8); err != nil {
			t.Fatal(err)
		}
		clean, total = w.inventory(), w.mutations
	})
	if total < 30 {
		t.Fatalf("an install makes only %d changes?", total)
	}
	for k := 1; k <= total; k++ {
		synctest.Test(t, func(t *testing.T) {
			w := slowWorld()
			w.killAfter = k
			if _, err := install(t, w, 8); !errors.Is(err, errKilled) {
				t.Fatalf("kill after change %d: run ended with %v", k, err)
			}
			w.mu.Lock()
			w.dead, w.killAfter = false, 0
			w.mu.Unlock()
			if _, err := install(t, w, 8); err != nil {
				t.Fatalf("kill after change %d: rerun: %v", k, err)
			}
			if got := w.inventory(); !slices.Equal(got, clean) {
				t.Fatalf("kill after change %d: rerun left\n%s\nwant\n%s", k, strings.Join(got, "\n"), strings.Join(clean, "\n"))
			}
			rep, err := install(t, w, 8)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range rep.Steps {
				if s.Action != plan.NoOp {
					t.Errorf("kill after change %d: third run: %s planned %s", k, s.Name, s.Action)
				}
			}
		})
	}
	t.Logf("interrupted after each of the %d changes of an install; every rerun converged", total)
}

func TestThrottledRequestsAreRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		w.inject["ec2:CreateVpc"] = []error{apiErr("RequestLimitExceeded")}
		w.inject["eks:CreateCluster"] = []error{apiErr("ThrottlingException"), apiErr("TooManyRequestsException")}
		w.inject["s3:PutBucketLifecycleConfiguration"] = []error{apiErr("SlowDown")}
		rep, err := install(t, w, 8)
		if err != nil {
			t.Fatal(err)
		}
		attempts := map[string]int{}
		for _, s := range rep.Steps {
			attempts[s.Name] = s.Attempts
		}
		if attempts["aws/vpc"] != 2 || attempts["aws/eks-cluster"] != 3 || attempts["aws/bucket-metrics"]+attempts["aws/bucket-logs"] != 3 {
			t.Errorf("attempts %v", attempts)
		}
		if n := len(inputs[*eks.CreateClusterInput](w, "eks:CreateCluster")); n != 3 {
			t.Errorf("%d CreateCluster requests, want 3 (two throttled)", n)
		}
		if n := len(w.eks); n != 1 {
			t.Errorf("%d EKS clusters", n)
		}
	})
}

func TestPermissionDeniedIsNotRetriedAndNamesThePermission(t *testing.T) {
	for _, tc := range []struct{ op, code, permission string }{
		{"ec2:CreateVpc", "UnauthorizedOperation", "ec2:CreateVpc"},
		{"eks:CreateCluster", "AccessDeniedException", "eks:CreateCluster"},
		{"iam:CreateOpenIDConnectProvider", "AccessDenied", "iam:CreateOpenIDConnectProvider"},
		{"s3:PutPublicAccessBlock", "AccessDenied", "s3:PutBucketPublicAccessBlock"},
	} {
		synctest.Test(t, func(t *testing.T) {
			w := slowWorld()
			w.inject[tc.op] = []error{apiErr(tc.code), apiErr(tc.code)}
			rep, err := install(t, w, 8)
			if plan.Classify(err) != plan.PermissionDenied || !strings.Contains(err.Error(), "missing permission "+tc.permission) ||
				!strings.Contains(err.Error(), "grant "+tc.permission) {
				t.Fatalf("%s denied: %v", tc.op, err)
			}
			for _, s := range rep.Steps {
				if s.State == plan.Failed && s.Attempts != 1 {
					t.Errorf("%s failed after %d attempts, want 1 (permission errors are not retried)", s.Name, s.Attempts)
				}
			}
		})
	}
}

// A role and an EKS cluster with the expected names but without the owned tag are someone else's: create
// refuses with the fix, and neither create nor destroy changes them.
func TestUntaggedLookAlikesAreNeverTouched(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		w.roles["opstrace-prod-eks-cluster"] = &frole{path: "/", trust: "{}", inline: map[string]string{},
			tags: []iamtypes.Tag{{Key: aws.String("team"), Value: aws.String("payments")}}, attached: []string{"arn:aws:iam::aws:policy/Theirs"}}
		w.buckets["opstrace-prod-logs"] = &fbucket{objects: 3}
		_, err := install(t, w, 8)
		if plan.Classify(err) != plan.NotOwned {
			t.Fatalf("install over look-alikes: %v", err)
		}
		for _, want := range []string{"IAM role opstrace-prod-eks-cluster exists but is not tagged opstrace.io/cluster=prod",
			"S3 bucket opstrace-prod-logs exists but is not tagged", "delete or rename"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error lacks %q:\n%v", want, err)
			}
		}
		_, _ = destroy(t, w)
		if _, err := Sweep(context.Background(), w.clients(), testCluster, false); err != nil {
			t.Fatal(err)
		}
		const role, bucket = "opstrace-prod-eks-cluster", "opstrace-prod-logs"
		for _, r := range w.requests {
			var target string
			switch in := r.Input.(type) {
			case *iam.DeleteRoleInput:
				target = aws.ToString(in.RoleName)
			case *iam.DetachRolePolicyInput:
				target = aws.ToString(in.RoleName)
			case *iam.AttachRolePolicyInput:
				target = aws.ToString(in.RoleName)
			case *iam.PutRolePolicyInput:
				target = aws.ToString(in.RoleName)
			case *iam.UpdateAssumeRolePolicyInput:
				target = aws.ToString(in.RoleName)
			case *s3.DeleteBucketInput:
				target = aws.ToString(in.Bucket)
			case *s3.DeleteObjectsInput:
				target = aws.ToString(in.Bucket)
			case *s3.PutBucketLifecycleConfigurationInput:
				target = aws.ToString(in.Bucket)
			case *s3.PutBucketTaggingInput:
				target = aws.ToString(in.Bucket)
			}
			if target == role || target == bucket {
				t.Errorf("%s on the look-alike %s", r.Op, target)
			}
		}
		if w.roles["opstrace-prod-eks-cluster"] == nil || w.buckets["opstrace-prod-logs"] == nil || w.buckets["opstrace-prod-logs"].objects != 3 {
			t.Error("a look-alike was deleted or emptied")
		}
	})
}

// destroy of a partial install (killed halfway) removes everything, and the sweep finds a stray resource
// tagged for the cluster that no step knows (a duplicate VPC).
func TestDestroyAPartialInstallThenSweep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		w.killAfter = 20
		if _, err := install(t, w, 8); !errors.Is(err, errKilled) {
			t.Fatalf("partial install: %v", err)
		}
		w.dead, w.killAfter = false, 0
		w.buckets["opstrace-prod-metrics"].objects = 5 // data written meanwhile
		stray, err := w.clients().EC2.CreateVpc(context.Background(), &ec2.CreateVpcInput{CidrBlock: aws.String("10.9.0.0/16"),
			TagSpecifications: ec2Tags("vpc", testCluster, "stray")})
		if err != nil {
			t.Fatal(err)
		}
		w.vpcs["vpc-other"] = &fvpc{tags: specTags(ec2Tags("vpc", "other-cluster", "x"))}
		before := len(w.inventory())

		rep, err := destroy(t, w)
		if err != nil {
			t.Fatal(err)
		}
		var deleted []string
		for _, s := range rep.Steps {
			if s.Action == plan.Delete {
				deleted = append(deleted, s.Name)
			}
		}
		sweep, err := Sweep(context.Background(), w.clients(), testCluster, false)
		if err != nil {
			t.Fatal(err)
		}
		if len(sweep.Left) != 0 || len(sweep.Removed) != 1 || sweep.Removed[0].ID != aws.ToString(stray.Vpc.VpcId) {
			t.Errorf("sweep: %s", sweep)
		}
		if got := w.inventory(); !slices.Equal(got, []string{"vpc x dns=false"}) {
			t.Errorf("after destroy and sweep: %q, want only the other cluster's VPC", got)
		}
		t.Logf("partial install of %d resources: steps deleted %v; %s", before, deleted, sweep)
	})
}

func TestListFindsClustersByTag(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		if _, err := install(t, w, 8); err != nil {
			t.Fatal(err)
		}
		w.vpcs["vpc-other"] = &fvpc{tags: specTags(ec2Tags("vpc", "staging", "x"))}
		found, err := Find(context.Background(), w.clients(), "")
		if err != nil {
			t.Fatal(err)
		}
		summary := cloud.Summarize(found)
		if len(summary) != 2 || summary[0].Name != "prod" || summary[1].Name != "staging" {
			t.Fatalf("clusters %+v", summary)
		}
		kinds := map[string]int{}
		for _, r := range summary[0].Resources {
			kinds[r.Kind]++
		}
		want := map[string]int{"eks:cluster": 1, "eks:nodegroup": 1, "ec2:vpc": 1, "ec2:subnet": 4, "ec2:natgateway": 1, "ec2:elastic-ip": 1,
			"ec2:route-table": 2, "ec2:internet-gateway": 1, "iam:role": 5, "iam:oidc-provider": 1, "s3:bucket": 2}
		if fmt.Sprint(kinds) != fmt.Sprint(want) {
			t.Errorf("prod's resources %v, want %v", kinds, want)
		}
	})
}

// The EBS CSI driver (volumes for ingesters, store-gateways, compactor and Loki) is the EKS add-on with an
// IRSA role trusted only by its controller's service account and allowed only the AWS-managed driver policy.
func TestEBSCSIAddonWithItsOwnRole(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		if _, err := install(t, w, 8); err != nil {
			t.Fatal(err)
		}
		addons := inputs[*eks.CreateAddonInput](w, "eks:CreateAddon")
		if len(addons) != 1 || aws.ToString(addons[0].AddonName) != "aws-ebs-csi-driver" ||
			aws.ToString(addons[0].ServiceAccountRoleArn) != "arn:aws:iam::123456789012:role/opstrace/opstrace-prod-ebs-csi" ||
			addons[0].Tags[cloud.OwnerTag] != testCluster {
			t.Fatalf("CreateAddon requests %+v", addons)
		}
		role := w.roles["opstrace-prod-ebs-csi"]
		if role == nil || !slices.Equal(role.attached, []string{"arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"}) || len(role.inline) != 0 ||
			!strings.Contains(role.trust, `"oidc.eks.eu-west-1.amazonaws.com/id/PROD:sub":"system:serviceaccount:kube-system:ebs-csi-controller-sa"`) {
			t.Errorf("EBS CSI role %+v", role)
		}
		// The add-on is created only once the nodes exist: its controller runs on them.
		ops := w.ops("eks:Create")
		if i, j := slices.Index(ops, "eks:CreateNodegroup"), slices.Index(ops, "eks:CreateAddon"); i < 0 || j < i {
			t.Errorf("create order %v", ops)
		}
	})
}

// destroy of a cluster whose Kubernetes API cannot be reached (so nothing deleted its LoadBalancer
// Services): the classic load balancer and security group Kubernetes made in the cluster's VPC are deleted
// after the EKS cluster and before the subnets, and the network goes. A load balancer in another VPC, even
// with the same Kubernetes tag, and one in the cluster's VPC without it, are never touched.
func TestDestroyDeletesTheLoadBalancersKubernetesLeft(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		if _, err := install(t, w, 8); err != nil {
			t.Fatal(err)
		}
		var vpc string
		for id, v := range w.vpcs {
			if tagValue(v.tags, cloud.OwnerTag) == testCluster {
				vpc = id
			}
		}
		w.addKubernetesLoadBalancer("a1b2c3", vpc, testCluster, true)
		ourGroup := w.lbs["a1b2c3"].groups[0]
		w.vpcs["vpc-other"] = &fvpc{tags: specTags(ec2Tags("vpc", "staging", "other"))}
		w.addKubernetesLoadBalancer("theirs", "vpc-other", testCluster, true)

		found, err := Find(context.Background(), w.clients(), "")
		if err != nil {
			t.Fatal(err)
		}
		var kinds []string
		for _, r := range found[testCluster] {
			if r.Kind == "elb:load-balancer" || r.Kind == "ec2:security-group" {
				kinds = append(kinds, r.String())
			}
		}
		if want := []string{"elb:load-balancer a1b2c3", "ec2:security-group " + ourGroup}; !slices.Equal(kinds, want) {
			t.Errorf("list: %q, want %q", kinds, want)
		}

		rev, p := previewDestroy(t, Steps(w.clients(), testCluster, testConfig(t)))
		for _, s := range p {
			if s.Name == "aws/load-balancers" && (s.Change.Action != plan.Delete || !slices.Equal(s.Change.Diff, []string{
				"delete classic load balancer a1b2c3 (made by Kubernetes for a LoadBalancer Service)",
				"delete security group " + ourGroup + " (made by Kubernetes for a load balancer)"})) {
				t.Errorf("destroy plan: %s %q", s.Change.Action, s.Change.Diff)
			}
		}
		if _, err := run(t, w, rev, 8); err != nil {
			t.Fatal(err)
		}
		if got := inputs[*elb.DeleteLoadBalancerInput](w, "elb:DeleteLoadBalancer"); len(got) != 1 || aws.ToString(got[0].LoadBalancerName) != "a1b2c3" {
			t.Errorf("DeleteLoadBalancer requests %v", got)
		}
		if got := inputs[*ec2.DeleteSecurityGroupInput](w, "ec2:DeleteSecurityGroup"); len(got) != 1 || aws.ToString(got[0].GroupId) != ourGroup {
			t.Errorf("DeleteSecurityGroup requests %v", got)
		}
		ops := w.ops("")
		deleteLB, deleteCluster, deleteSubnet := slices.Index(ops, "elb:DeleteLoadBalancer"), slices.Index(ops, "eks:DeleteCluster"), slices.Index(ops, "ec2:DeleteSubnet")
		if deleteCluster < 0 || deleteLB < deleteCluster || deleteSubnet < deleteLB {
			t.Errorf("order: DeleteCluster %d, DeleteLoadBalancer %d, DeleteSubnet %d", deleteCluster, deleteLB, deleteSubnet)
		}
		for _, r := range w.inventory() {
			if !strings.Contains(r, "theirs") && !strings.Contains(r, "k8s-elb-theirs") && !strings.HasPrefix(r, "vpc other") {
				t.Errorf("left after destroy: %s", r)
			}
		}
		if w.lbs["theirs"] == nil {
			t.Error("the load balancer of another VPC was deleted")
		}

		// A load balancer in the cluster's VPC without Kubernetes' tag for the cluster is someone else's.
		w2 := newWorld("eu-west-1")
		w2.vpcs["vpc-ours"] = &fvpc{tags: specTags(ec2Tags("vpc", testCluster, "opstrace-prod-vpc"))}
		w2.addKubernetesLoadBalancer("manual", "vpc-ours", testCluster, false)
		w2.addKubernetesLoadBalancer("other-cluster", "vpc-ours", "staging", true)
		if found, err := findKubernetesLeftovers(context.Background(), w2.clients(), testCluster); err != nil || len(found) != 0 {
			t.Errorf("untagged or otherwise tagged load balancers found as the cluster's: %+v %v", found[testCluster], err)
		}
	})
}
