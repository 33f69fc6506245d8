package installer

// The status aws and destroy aws commands, with awsClientsFunc returning emptyAccount: an AWS account with
// nothing in it but what a test puts there, answering the reads (describe, get, list) and recording them.
// Its mutating methods are the nil embedded interfaces: a command that called one would panic the test, so
// these tests also prove that status and destroy --dry-run change nothing. The steps themselves are tested
// against the fuller fakes of cloud/aws.

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/eks"
	ekstypes "github.com/aws/aws-sdk-go-v2/service/eks/types"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	r53types "github.com/aws/aws-sdk-go-v2/service/route53/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	smithy "github.com/aws/smithy-go"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	awscloud "github.com/opstrace/opstrace/internal/installer/cloud/aws"
)

type emptyAccount struct {
	awscloud.S3API
	awscloud.EC2API
	awscloud.IAMAPI
	awscloud.EKSAPI
	awscloud.Route53API
	mu    sync.Mutex
	calls []string
	// buckets are the account's buckets and the cluster each is tagged for.
	buckets map[string]string
	// zone is one public hosted zone (example.com, Z0PUBLIC) with these record sets.
	records []r53types.ResourceRecordSet
}

func (a *emptyAccount) record(op string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, op)
}

func awsNotFound(code string) error { return &smithy.GenericAPIError{Code: code, Message: "not found"} }

func (a *emptyAccount) clients(region string) *awscloud.Clients {
	return &awscloud.Clients{Region: region, S3: s3Reads{a}, EC2: ec2Reads{a}, IAM: awsIAMReads{a}, EKS: eksReads{a}, Route53: route53Reads{a}}
}

func useAWS(t *testing.T, a *emptyAccount) {
	t.Helper()
	saved := awsClientsFunc
	t.Cleanup(func() { awsClientsFunc = saved })
	awsClientsFunc = func(_ context.Context, region string) (*awscloud.Clients, error) { return a.clients(region), nil }
}

type s3Reads struct{ *emptyAccount }

func (s s3Reads) HeadBucket(context.Context, *s3.HeadBucketInput, ...func(*s3.Options)) (*s3.HeadBucketOutput, error) {
	s.record("s3:HeadBucket")
	return nil, awsNotFound("NotFound")
}
func (s s3Reads) ListBuckets(context.Context, *s3.ListBucketsInput, ...func(*s3.Options)) (*s3.ListBucketsOutput, error) {
	s.record("s3:ListBuckets")
	out := &s3.ListBucketsOutput{}
	for name := range s.buckets {
		out.Buckets = append(out.Buckets, s3types.Bucket{Name: aws.String(name)})
	}
	return out, nil
}
func (s s3Reads) GetBucketTagging(_ context.Context, in *s3.GetBucketTaggingInput, _ ...func(*s3.Options)) (*s3.GetBucketTaggingOutput, error) {
	s.record("s3:GetBucketTagging")
	return &s3.GetBucketTaggingOutput{TagSet: []s3types.Tag{{Key: aws.String(cloud.OwnerTag), Value: aws.String(s.buckets[aws.ToString(in.Bucket)])}}}, nil
}

type ec2Reads struct{ *emptyAccount }

func (e ec2Reads) DescribeVpcs(context.Context, *ec2.DescribeVpcsInput, ...func(*ec2.Options)) (*ec2.DescribeVpcsOutput, error) {
	e.record("ec2:DescribeVpcs")
	return &ec2.DescribeVpcsOutput{}, nil
}
func (e ec2Reads) DescribeInternetGateways(context.Context, *ec2.DescribeInternetGatewaysInput, ...func(*ec2.Options)) (*ec2.DescribeInternetGatewaysOutput, error) {
	e.record("ec2:DescribeInternetGateways")
	return &ec2.DescribeInternetGatewaysOutput{}, nil
}
func (e ec2Reads) DescribeSubnets(context.Context, *ec2.DescribeSubnetsInput, ...func(*ec2.Options)) (*ec2.DescribeSubnetsOutput, error) {
	e.record("ec2:DescribeSubnets")
	return &ec2.DescribeSubnetsOutput{}, nil
}
func (e ec2Reads) DescribeAddresses(context.Context, *ec2.DescribeAddressesInput, ...func(*ec2.Options)) (*ec2.DescribeAddressesOutput, error) {
	e.record("ec2:DescribeAddresses")
	return &ec2.DescribeAddressesOutput{}, nil
}
func (e ec2Reads) DescribeNatGateways(context.Context, *ec2.DescribeNatGatewaysInput, ...func(*ec2.Options)) (*ec2.DescribeNatGatewaysOutput, error) {
	e.record("ec2:DescribeNatGateways")
	return &ec2.DescribeNatGatewaysOutput{}, nil
}
func (e ec2Reads) DescribeRouteTables(context.Context, *ec2.DescribeRouteTablesInput, ...func(*ec2.Options)) (*ec2.DescribeRouteTablesOutput, error) {
	e.record("ec2:DescribeRouteTables")
	return &ec2.DescribeRouteTablesOutput{}, nil
}

type awsIAMReads struct{ *emptyAccount }

func (i awsIAMReads) GetRole(context.Context, *iam.GetRoleInput, ...func(*iam.Options)) (*iam.GetRoleOutput, error) {
	i.record("iam:GetRole")
	return nil, awsNotFound("NoSuchEntity")
}
func (i awsIAMReads) ListRoles(context.Context, *iam.ListRolesInput, ...func(*iam.Options)) (*iam.ListRolesOutput, error) {
	i.record("iam:ListRoles")
	return &iam.ListRolesOutput{}, nil
}
func (i awsIAMReads) ListOpenIDConnectProviders(context.Context, *iam.ListOpenIDConnectProvidersInput, ...func(*iam.Options)) (*iam.ListOpenIDConnectProvidersOutput, error) {
	i.record("iam:ListOpenIDConnectProviders")
	return &iam.ListOpenIDConnectProvidersOutput{}, nil
}

type eksReads struct{ *emptyAccount }

func (e eksReads) DescribeCluster(context.Context, *eks.DescribeClusterInput, ...func(*eks.Options)) (*eks.DescribeClusterOutput, error) {
	e.record("eks:DescribeCluster")
	return nil, &ekstypes.ResourceNotFoundException{Message: aws.String("No cluster found")}
}
func (e eksReads) DescribeNodegroup(context.Context, *eks.DescribeNodegroupInput, ...func(*eks.Options)) (*eks.DescribeNodegroupOutput, error) {
	e.record("eks:DescribeNodegroup")
	return nil, &ekstypes.ResourceNotFoundException{Message: aws.String("No node group found")}
}
func (e eksReads) ListClusters(context.Context, *eks.ListClustersInput, ...func(*eks.Options)) (*eks.ListClustersOutput, error) {
	e.record("eks:ListClusters")
	return &eks.ListClustersOutput{}, nil
}
func (e eksReads) ListAccessEntries(context.Context, *eks.ListAccessEntriesInput, ...func(*eks.Options)) (*eks.ListAccessEntriesOutput, error) {
	e.record("eks:ListAccessEntries")
	return nil, &ekstypes.ResourceNotFoundException{Message: aws.String("No cluster found")}
}
func (e eksReads) DescribeAddon(context.Context, *eks.DescribeAddonInput, ...func(*eks.Options)) (*eks.DescribeAddonOutput, error) {
	e.record("eks:DescribeAddon")
	return nil, &ekstypes.ResourceNotFoundException{Message: aws.String("No cluster found")}
}

type route53Reads struct{ *emptyAccount }

var exampleZone = r53types.HostedZone{Id: aws.String("/hostedzone/Z0PUBLIC"), Name: aws.String("example.com."), Config: &r53types.HostedZoneConfig{}}

func (r route53Reads) ListHostedZones(context.Context, *route53.ListHostedZonesInput, ...func(*route53.Options)) (*route53.ListHostedZonesOutput, error) {
	r.record("route53:ListHostedZones")
	return &route53.ListHostedZonesOutput{HostedZones: []r53types.HostedZone{exampleZone}}, nil
}
func (r route53Reads) ListHostedZonesByName(_ context.Context, in *route53.ListHostedZonesByNameInput, _ ...func(*route53.Options)) (*route53.ListHostedZonesByNameOutput, error) {
	r.record("route53:ListHostedZonesByName " + aws.ToString(in.DNSName))
	return &route53.ListHostedZonesByNameOutput{HostedZones: []r53types.HostedZone{exampleZone}}, nil
}

// ListResourceRecordSets lists the zone's records from StartRecordName on, in the test's order.
func (r route53Reads) ListResourceRecordSets(_ context.Context, in *route53.ListResourceRecordSetsInput, _ ...func(*route53.Options)) (*route53.ListResourceRecordSetsOutput, error) {
	r.record("route53:ListResourceRecordSets")
	out := &route53.ListResourceRecordSetsOutput{}
	for _, rr := range r.records {
		if in.StartRecordName == nil || aws.ToString(rr.Name) == cloud.FQDN(aws.ToString(in.StartRecordName)) {
			out.ResourceRecordSets = append(out.ResourceRecordSets, rr)
		}
	}
	return out, nil
}

// status aws of a cluster that does not exist (anymore): every resource would be created, the cluster is
// not reachable, and the command fails saying so; with a config file with dns, the zone check and the DNS
// record are part of it.
func TestStatusAWSOfAMissingCluster(t *testing.T) {
	a := &emptyAccount{}
	useAWS(t, a)
	out, err := runCLI(t, "dns: {domain: acme.example.com}\naws: {region: eu-west-1}\n", "status", "aws", "prod", "-c", "-")
	if err == nil || !strings.Contains(err.Error(), "AWS cluster prod is not healthy (above); run create aws prod again to converge what it made") {
		t.Fatalf("status of a missing cluster: %v\n%s", err, out)
	}
	if !strings.Contains(out, "AWS cluster prod in eu-west-1; config: the config file") || !strings.Contains(out, "Kubernetes: not reachable") {
		t.Errorf("status output:\n%s", out)
	}
	for step, want := range map[string]string{
		"aws/vpc":               "needs create: VPC opstrace-prod-vpc",
		"aws/dns-zone":          "ok",
		"aws/cert-manager-role": "needs create: IAM role /opstrace/opstrace-prod-cert-manager",
		"aws/dns-record": "needs create: CNAME metrics.acme.example.com → the gateway's load balancer, once it has a name (TTL 60), " +
			`TXT cname-metrics.acme.example.com "opstrace.io/cluster=prod" in zone example.com (Z0PUBLIC)`,
	} {
		if got := statusOf(out, step); !strings.HasPrefix(got, want) {
			t.Errorf("status of %s: %q, want %q", step, got, want)
		}
	}
}

// statusOf is the state status printed for a step.
func statusOf(out, step string) string {
	for _, line := range strings.Split(out, "\n") {
		if name, state, ok := strings.Cut(line, " "); ok && name == step {
			return strings.TrimSpace(state)
		}
	}
	return ""
}

// destroy aws --dry-run: the config from the defaults (the cluster is gone), a plan that deletes nothing,
// and the sweep's list of what is still tagged for the cluster, the gateway's DNS record included; nothing
// is changed.
func TestDestroyAWSDryRunListsWhatTheSweepWouldRemove(t *testing.T) {
	a := &emptyAccount{
		buckets: map[string]string{"opstrace-prod-old": "prod", "opstrace-staging-metrics": "staging"},
		records: []r53types.ResourceRecordSet{
			{Name: aws.String("cname-metrics.acme.example.com."), Type: r53types.RRTypeTxt, TTL: aws.Int64(300),
				ResourceRecords: []r53types.ResourceRecord{{Value: aws.String(`"opstrace.io/cluster=prod"`)}}},
			{Name: aws.String("cname-metrics.other.example.com."), Type: r53types.RRTypeTxt, TTL: aws.Int64(300),
				ResourceRecords: []r53types.ResourceRecord{{Value: aws.String(`"opstrace.io/cluster=staging"`)}}},
		},
	}
	useAWS(t, a)
	out, err := runCLI(t, "", "destroy", "aws", "prod", "--region", "eu-west-1", "--dry-run")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{
		"Config: the defaults (the stored config could not be read: ",
		"Destroy AWS cluster prod in eu-west-1",
		"0 to create, 0 to update, 0 to delete",
		"sweep: would remove route53:record Z0PUBLIC/metrics.acme.example.com",
		"sweep: would remove s3:bucket opstrace-prod-old",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("destroy --dry-run output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "other.example.com") || strings.Contains(out, "opstrace-staging-metrics") {
		t.Errorf("the sweep lists another cluster's resources:\n%s", out)
	}
	if len(a.calls) == 0 {
		t.Error("no AWS call was made")
	}
}

// destroy aws without the confirmation deletes nothing.
func TestDestroyAWSAsksFirst(t *testing.T) {
	useAWS(t, &emptyAccount{})
	out, err := runCLI(t, "n\n", "destroy", "aws", "prod", "--region", "eu-west-1")
	if err == nil || !strings.Contains(err.Error(), "not confirmed; nothing was deleted") ||
		!strings.Contains(out, "Delete these resources and all stored metrics and logs? [y/N]") {
		t.Fatalf("destroy answered no: %v\n%s", err, out)
	}
}
