package aws

// The classic load balancers that Kubernetes made for LoadBalancer Services (the gateway's among them) and
// their security groups. AWS's cloud provider makes them without the installer's tag, so destroy deletes
// them through the Kubernetes API first (the Kubernetes step's drain). When that API cannot be reached,
// they would keep the network from being deleted: this step deletes them after the EKS cluster and before
// the subnets. A load balancer is the cluster's when it is in the cluster's VPC (found by the owned tag)
// and carries Kubernetes' own tag kubernetes.io/cluster/NAME; anything else is never touched.

import (
	"context"
	"fmt"
	"slices"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	elb "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancing"
	elbtypes "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancing/types"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

// ELBAPI is the part of the classic Elastic Load Balancing client the load balancer step uses.
type ELBAPI interface {
	DescribeLoadBalancers(context.Context, *elb.DescribeLoadBalancersInput, ...func(*elb.Options)) (*elb.DescribeLoadBalancersOutput, error)
	DescribeTags(context.Context, *elb.DescribeTagsInput, ...func(*elb.Options)) (*elb.DescribeTagsOutput, error)
	DeleteLoadBalancer(context.Context, *elb.DeleteLoadBalancerInput, ...func(*elb.Options)) (*elb.DeleteLoadBalancerOutput, error)
}

// Kinds of what Kubernetes left, as list and the sweep name them.
const (
	kindLoadBalancer  = "elb:load-balancer"
	kindSecurityGroup = "ec2:security-group"
)

// kubernetesClusterTag is the tag AWS's Kubernetes cloud provider puts on what it makes for cluster.
func kubernetesClusterTag(cluster string) string { return "kubernetes.io/cluster/" + cluster }

// kubernetesLeftovers are the classic load balancers and security groups Kubernetes made for cluster in
// its VPCs, by VPC owner.
type kubernetesLeftovers struct {
	LoadBalancers, SecurityGroups []string
}

// findKubernetesLeftovers lists, for each VPC tagged for a cluster (cluster "" for every cluster), the
// classic load balancers and security groups in it that carry kubernetes.io/cluster/OWNER.
func findKubernetesLeftovers(ctx context.Context, c *Clients, cluster string) (map[string]*kubernetesLeftovers, error) {
	filter := []ec2types.Filter{{Name: aws.String("tag-key"), Values: []string{cloud.OwnerTag}}}
	if cluster != "" {
		filter = []ec2types.Filter{ownerFilter(cluster)}
	}
	vpcs, err := c.EC2.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{Filters: filter})
	if err != nil {
		return nil, classify("list VPCs", "ec2:DescribeVpcs", err)
	}
	owners := map[string]string{} // VPC → cluster
	for _, v := range vpcs.Vpcs {
		if owner := tagValue(v.Tags, cloud.OwnerTag); owner != "" && (cluster == "" || owner == cluster) {
			owners[aws.ToString(v.VpcId)] = owner
		}
	}
	found := map[string]*kubernetesLeftovers{}
	if len(owners) == 0 {
		return found, nil
	}
	of := func(owner string) *kubernetesLeftovers {
		if found[owner] == nil {
			found[owner] = &kubernetesLeftovers{}
		}
		return found[owner]
	}
	// Load balancers in those VPCs, then their tags, 20 names a call (the API's limit).
	lbOwner := map[string]string{}
	in := &elb.DescribeLoadBalancersInput{}
	for {
		out, err := c.ELB.DescribeLoadBalancers(ctx, in)
		if err != nil {
			return nil, classify("list classic load balancers", "elasticloadbalancing:DescribeLoadBalancers", err)
		}
		for _, lb := range out.LoadBalancerDescriptions {
			if owner, ok := owners[aws.ToString(lb.VPCId)]; ok {
				lbOwner[aws.ToString(lb.LoadBalancerName)] = owner
			}
		}
		if out.NextMarker == nil {
			break
		}
		in.Marker = out.NextMarker
	}
	names := sortedKeys(lbOwner)
	for start := 0; start < len(names); start += 20 {
		batch := names[start:min(start+20, len(names))]
		out, err := c.ELB.DescribeTags(ctx, &elb.DescribeTagsInput{LoadBalancerNames: batch})
		if err != nil && !isNotFound(err) {
			return nil, classify("read tags of classic load balancers", "elasticloadbalancing:DescribeTags", err)
		}
		if out == nil {
			continue
		}
		for _, d := range out.TagDescriptions {
			name := aws.ToString(d.LoadBalancerName)
			owner := lbOwner[name]
			if slices.ContainsFunc(d.Tags, func(t elbtypes.Tag) bool { return aws.ToString(t.Key) == kubernetesClusterTag(owner) }) {
				of(owner).LoadBalancers = append(of(owner).LoadBalancers, name)
			}
		}
	}
	groups, err := c.EC2.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{Filters: []ec2types.Filter{
		{Name: aws.String("vpc-id"), Values: sortedKeys(owners)}}})
	if err != nil {
		return nil, classify("list security groups", "ec2:DescribeSecurityGroups", err)
	}
	for _, g := range groups.SecurityGroups {
		owner := owners[aws.ToString(g.VpcId)]
		if owner != "" && tagValue(g.Tags, kubernetesClusterTag(owner)) != "" {
			of(owner).SecurityGroups = append(of(owner).SecurityGroups, aws.ToString(g.GroupId))
		}
	}
	for _, l := range found {
		slices.Sort(l.LoadBalancers)
		slices.Sort(l.SecurityGroups)
	}
	return found, nil
}

// loadBalancersStep makes nothing on create. On destroy it deletes what Kubernetes left in the cluster's
// VPC: after the EKS cluster is gone (nothing makes them again), before the subnets (the load balancers'
// network interfaces are in them).
type loadBalancersStep struct {
	c       *Clients
	cluster string
}

func (s *loadBalancersStep) Name() string        { return "aws/load-balancers" }
func (s *loadBalancersStep) DependsOn() []string { return []string{"aws/subnets"} }

func (s *loadBalancersStep) Observe(ctx context.Context) (plan.Observation, error) {
	found, err := findKubernetesLeftovers(ctx, s.c, s.cluster)
	if err != nil {
		return plan.Observation{}, err
	}
	l := found[s.cluster]
	if l == nil {
		return plan.Observation{Detail: kubernetesLeftovers{}}, nil
	}
	return plan.Observation{Exists: true, Detail: *l}, nil
}

// Plan: the load balancers are the cluster's business while it runs.
func (s *loadBalancersStep) Plan(plan.Observation) plan.Change { return plan.NoChange() }

func (s *loadBalancersStep) PlanDestroy(obs plan.Observation) plan.Change {
	l := obs.Detail.(kubernetesLeftovers)
	if len(l.LoadBalancers)+len(l.SecurityGroups) == 0 {
		return plan.NoChange()
	}
	var diff []string
	for _, name := range l.LoadBalancers {
		diff = append(diff, "delete classic load balancer "+name+" (made by Kubernetes for a LoadBalancer Service)")
	}
	for _, id := range l.SecurityGroups {
		diff = append(diff, "delete security group "+id+" (made by Kubernetes for a load balancer)")
	}
	return plan.Change{Action: plan.Delete, Diff: diff, Desired: l}
}

// Apply deletes the load balancers, then their security groups. A group still in use (the network
// interfaces of a deleted load balancer go within minutes) is a Conflict: retried from Observe.
func (s *loadBalancersStep) Apply(ctx context.Context, c plan.Change) error {
	l := c.Desired.(kubernetesLeftovers)
	for _, name := range l.LoadBalancers {
		if err := deleteLoadBalancer(ctx, s.c, name); err != nil {
			return err
		}
	}
	for _, id := range l.SecurityGroups {
		if err := deleteSecurityGroup(ctx, s.c, id); err != nil {
			return err
		}
	}
	return nil
}

func deleteLoadBalancer(ctx context.Context, c *Clients, name string) error {
	if _, err := c.ELB.DeleteLoadBalancer(ctx, &elb.DeleteLoadBalancerInput{LoadBalancerName: aws.String(name)}); err != nil && !isNotFound(err) {
		return classify("delete classic load balancer "+name, "elasticloadbalancing:DeleteLoadBalancer", err)
	}
	return nil
}

func deleteSecurityGroup(ctx context.Context, c *Clients, id string) error {
	if _, err := c.EC2.DeleteSecurityGroup(ctx, &ec2.DeleteSecurityGroupInput{GroupId: aws.String(id)}); err != nil && !isNotFound(err) {
		return classify(fmt.Sprintf("delete security group %s", id), "ec2:DeleteSecurityGroup", err)
	}
	return nil
}
