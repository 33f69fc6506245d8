package aws

// An in-memory classic Elastic Load Balancing and EC2 security groups, as AWS's Kubernetes cloud provider
// leaves them for a LoadBalancer Service: a load balancer in the cluster's subnets with its own security
// group. A subnet is in use while a load balancer is in it, a security group while a load balancer uses it,
// a VPC while it has a security group. Every call is recorded like the other fakes'.

import (
	"context"
	"slices"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	elb "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancing"
	elbtypes "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancing/types"
)

type flb struct {
	vpc     string
	subnets []string
	groups  []string
	tags    []elbtypes.Tag
}

type fsg struct {
	vpc  string
	tags []ec2types.Tag
}

// addKubernetesLoadBalancer adds what the cloud provider makes for a LoadBalancer Service of cluster (its
// tag kubernetes.io/cluster/CLUSTER when tagged) in vpc's subnets: a load balancer and its security group.
func (w *world) addKubernetesLoadBalancer(name, vpc, cluster string, tagged bool) {
	var subnets []string
	for _, id := range sortedKeys(w.subnets) {
		if w.subnets[id].vpc == vpc {
			subnets = append(subnets, id)
		}
	}
	sg := w.id("sg")
	lb := &flb{vpc: vpc, subnets: subnets, groups: []string{sg}}
	w.sgs[sg] = &fsg{vpc: vpc, tags: []ec2types.Tag{{Key: aws.String("Name"), Value: aws.String("k8s-elb-" + name)}}}
	if tagged {
		lb.tags = []elbtypes.Tag{{Key: aws.String(kubernetesClusterTag(cluster)), Value: aws.String("owned")},
			{Key: aws.String("kubernetes.io/service-name"), Value: aws.String("opstrace/prod-gateway")}}
		w.sgs[sg].tags = append(w.sgs[sg].tags, ec2types.Tag{Key: aws.String(kubernetesClusterTag(cluster)), Value: aws.String("owned")})
	}
	w.lbs[name] = lb
}

type fakeELB world

func (f *fakeELB) w() *world { return (*world)(f) }

func (f *fakeELB) DescribeLoadBalancers(_ context.Context, in *elb.DescribeLoadBalancersInput, _ ...func(*elb.Options)) (*elb.DescribeLoadBalancersOutput, error) {
	w := f.w()
	if err := w.call("elb:DescribeLoadBalancers", in); err != nil {
		return nil, err
	}
	// One load balancer a page, to follow the marker.
	names := sortedKeys(w.lbs)
	start := 0
	if in.Marker != nil {
		start = slices.Index(names, aws.ToString(in.Marker))
	}
	out := &elb.DescribeLoadBalancersOutput{}
	if start >= 0 && start < len(names) {
		lb := w.lbs[names[start]]
		out.LoadBalancerDescriptions = []elbtypes.LoadBalancerDescription{{LoadBalancerName: aws.String(names[start]), VPCId: aws.String(lb.vpc),
			Subnets: lb.subnets, SecurityGroups: lb.groups}}
		if start+1 < len(names) {
			out.NextMarker = aws.String(names[start+1])
		}
	}
	return out, w.done(false)
}

func (f *fakeELB) DescribeTags(_ context.Context, in *elb.DescribeTagsInput, _ ...func(*elb.Options)) (*elb.DescribeTagsOutput, error) {
	w := f.w()
	if err := w.call("elb:DescribeTags", in); err != nil {
		return nil, err
	}
	if len(in.LoadBalancerNames) > 20 {
		w.done(false)
		return nil, apiErr("ValidationError")
	}
	out := &elb.DescribeTagsOutput{}
	for _, name := range in.LoadBalancerNames {
		lb := w.lbs[name]
		if lb == nil {
			w.done(false)
			return nil, apiErr("LoadBalancerNotFound")
		}
		out.TagDescriptions = append(out.TagDescriptions, elbtypes.TagDescription{LoadBalancerName: aws.String(name), Tags: lb.tags})
	}
	return out, w.done(false)
}

func (f *fakeELB) DeleteLoadBalancer(_ context.Context, in *elb.DeleteLoadBalancerInput, _ ...func(*elb.Options)) (*elb.DeleteLoadBalancerOutput, error) {
	w := f.w()
	if err := w.call("elb:DeleteLoadBalancer", in); err != nil {
		return nil, err
	}
	// Deleting a missing load balancer succeeds, as with the real API.
	delete(w.lbs, aws.ToString(in.LoadBalancerName))
	return &elb.DeleteLoadBalancerOutput{}, w.done(true)
}

func (f *fakeEC2) DescribeSecurityGroups(_ context.Context, in *ec2.DescribeSecurityGroupsInput, _ ...func(*ec2.Options)) (*ec2.DescribeSecurityGroupsOutput, error) {
	w := f.w()
	if err := w.call("ec2:DescribeSecurityGroups", in); err != nil {
		return nil, err
	}
	out := &ec2.DescribeSecurityGroupsOutput{}
	for _, id := range sortedKeys(w.sgs) {
		if g := w.sgs[id]; matches(in.Filters, g.tags, g.vpc) {
			out.SecurityGroups = append(out.SecurityGroups, ec2types.SecurityGroup{GroupId: aws.String(id), VpcId: aws.String(g.vpc), Tags: g.tags})
		}
	}
	return out, w.done(false)
}

func (f *fakeEC2) DeleteSecurityGroup(_ context.Context, in *ec2.DeleteSecurityGroupInput, _ ...func(*ec2.Options)) (*ec2.DeleteSecurityGroupOutput, error) {
	w := f.w()
	if err := w.call("ec2:DeleteSecurityGroup", in); err != nil {
		return nil, err
	}
	id := aws.ToString(in.GroupId)
	if w.sgs[id] == nil {
		w.done(false)
		return nil, apiErr("InvalidGroup.NotFound")
	}
	for _, lb := range w.lbs {
		if slices.Contains(lb.groups, id) {
			w.done(false)
			return nil, apiErr("DependencyViolation")
		}
	}
	delete(w.sgs, id)
	return &ec2.DeleteSecurityGroupOutput{}, w.done(true)
}
