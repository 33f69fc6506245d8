package aws

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/eks"
	ekstypes "github.com/aws/aws-sdk-go-v2/service/eks/types"
	"github.com/aws/aws-sdk-go-v2/service/iam"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

// clusterStep is the EKS control plane, in the private and public subnets, with a private endpoint (what
// the nodes use) and a public one reachable from aws.api_authorized_ip_ranges only (publicAccessCidrs;
// credentials still required). The EKS cluster has the Opstrace cluster's name.
type clusterStep struct {
	c          *Clients
	cluster    string
	version    string
	zones      []string
	authorized []string // aws.api_authorized_ip_ranges
}

type eksState struct {
	Status  string
	RoleARN string
	Subnets []string
	// PublicCIDRs are the CIDRs that may reach the public endpoint, sorted.
	PublicCIDRs []string
	// SetPublicCIDRs: the Update sets them to aws.api_authorized_ip_ranges.
	SetPublicCIDRs bool
}

func sortedCIDRs(cidrs []string) []string {
	out := slices.Clone(cidrs)
	slices.Sort(out)
	return out
}

func (s *clusterStep) Name() string { return "aws/eks-cluster" }

// DependsOn: aws/load-balancers makes nothing on create; the edge makes destroy delete the load balancers
// Kubernetes left after the EKS cluster, which would make them again.
func (s *clusterStep) DependsOn() []string {
	return []string{"aws/subnets", "aws/cluster-role", "aws/load-balancers"}
}

func (s *clusterStep) Observe(ctx context.Context) (plan.Observation, error) {
	var st eksState
	out, err := s.c.EKS.DescribeCluster(ctx, &eks.DescribeClusterInput{Name: &s.cluster})
	switch {
	case isNotFound(err):
	case err != nil:
		return plan.Observation{}, classify("find EKS cluster "+s.cluster, "eks:DescribeCluster", err)
	default:
		if out.Cluster.Tags[cloud.OwnerTag] != s.cluster {
			return plan.Observation{}, plan.NotOwnedError("EKS cluster "+s.cluster, "EKS cluster "+s.cluster, cloud.OwnerTag+"="+s.cluster)
		}
		st.Status = string(out.Cluster.Status)
		if vpc := out.Cluster.ResourcesVpcConfig; vpc != nil {
			st.PublicCIDRs = sortedCIDRs(vpc.PublicAccessCidrs)
		}
		return plan.Observation{Exists: true, ID: aws.ToString(out.Cluster.Arn), Detail: st}, nil
	}
	// What the create needs, looked up now so that Plan stays pure.
	role, err := s.c.IAM.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(cloud.ResourceName(s.cluster, "eks-cluster"))})
	if err != nil && !isNotFound(err) {
		return plan.Observation{}, classify("find the EKS cluster role", "iam:GetRole", err)
	}
	if err == nil {
		st.RoleARN = aws.ToString(role.Role.Arn)
	}
	subnets, err := findSubnets(ctx, s.c, s.cluster)
	if err != nil {
		return plan.Observation{}, err
	}
	for _, z := range s.zones {
		for _, kind := range []string{"private-", "public-"} {
			if id := subnets[cloud.ResourceName(s.cluster, kind+z)]; id != "" {
				st.Subnets = append(st.Subnets, id)
			}
		}
	}
	return plan.Observation{Detail: st}, nil
}

func (s *clusterStep) Plan(obs plan.Observation) plan.Change {
	st := obs.Detail.(eksState)
	switch {
	case !obs.Exists:
		return plan.Change{Action: plan.Create, Desired: st, Diff: []string{
			fmt.Sprintf("EKS cluster %s, Kubernetes %s, in %d zones (about 10 minutes)", s.cluster, s.version, len(s.zones)),
			"Kubernetes API public endpoint reachable from " + strings.Join(sortedCIDRs(s.authorized), ", "),
		}}
	}
	var diff []string
	if st.Status == string(ekstypes.ClusterStatusCreating) || st.Status == string(ekstypes.ClusterStatusUpdating) {
		diff = append(diff, "EKS cluster "+s.cluster+": wait until ACTIVE (now "+st.Status+")")
	}
	if want := sortedCIDRs(s.authorized); !slices.Equal(st.PublicCIDRs, want) {
		st.SetPublicCIDRs = true
		diff = append(diff, "Kubernetes API public endpoint reachable from: "+strings.Join(st.PublicCIDRs, ", ")+" → "+
			strings.Join(want, ", ")+" (aws.api_authorized_ip_ranges)")
	}
	if len(diff) == 0 {
		return plan.NoChange()
	}
	return plan.Change{Action: plan.Update, Desired: st, Diff: diff}
}

func (s *clusterStep) Apply(ctx context.Context, c plan.Change) error {
	if c.Action == plan.Delete {
		return deleteEKSCluster(ctx, s.c, s.cluster)
	}
	st := c.Desired.(eksState)
	if c.Action == plan.Create {
		if st.RoleARN == "" || len(st.Subnets) < 2*len(s.zones) {
			return plan.Errorf(plan.NotFound, "create EKS cluster "+s.cluster, fmt.Errorf("its role or subnets are not there yet"))
		}
		if _, err := s.c.EKS.CreateCluster(ctx, &eks.CreateClusterInput{
			Name: &s.cluster, Version: &s.version, RoleArn: &st.RoleARN,
			ResourcesVpcConfig: &ekstypes.VpcConfigRequest{SubnetIds: st.Subnets,
				EndpointPublicAccess: aws.Bool(true), EndpointPrivateAccess: aws.Bool(true), PublicAccessCidrs: s.authorized},
			// The credentials that create the cluster administer it; eks_admin_roles are not yet granted.
			AccessConfig: &ekstypes.CreateAccessConfigRequest{AuthenticationMode: ekstypes.AuthenticationModeApiAndConfigMap,
				BootstrapClusterCreatorAdminPermissions: aws.Bool(true)},
			Tags: map[string]string{cloud.OwnerTag: s.cluster},
		}); err != nil {
			return classify("create EKS cluster "+s.cluster, "eks:CreateCluster", err)
		}
	}
	if c.Action == plan.Update && st.SetPublicCIDRs {
		// EKS refuses an update while another runs (ResourceInUseException, a Conflict retried from
		// Observe): wait first.
		if err := s.waitActive(ctx); err != nil {
			return err
		}
		if _, err := s.c.EKS.UpdateClusterConfig(ctx, &eks.UpdateClusterConfigInput{Name: &s.cluster,
			ResourcesVpcConfig: &ekstypes.VpcConfigRequest{EndpointPublicAccess: aws.Bool(true), EndpointPrivateAccess: aws.Bool(true),
				PublicAccessCidrs: s.authorized}}); err != nil {
			return classify("set the public endpoint's CIDRs of EKS cluster "+s.cluster, "eks:UpdateClusterConfig", err)
		}
	}
	return s.waitActive(ctx)
}

func (s *clusterStep) waitActive(ctx context.Context) error {
	return wait(ctx, s.c.poll(), "EKS cluster "+s.cluster+" to be ACTIVE", func() (bool, error) {
		out, err := s.c.EKS.DescribeCluster(ctx, &eks.DescribeClusterInput{Name: &s.cluster})
		if err != nil {
			return false, classify("read EKS cluster "+s.cluster, "eks:DescribeCluster", err)
		}
		switch out.Cluster.Status {
		case ekstypes.ClusterStatusActive:
			return true, nil
		case ekstypes.ClusterStatusFailed:
			return false, fmt.Errorf("EKS cluster %s failed to create; see the EKS console, destroy and create again", s.cluster)
		}
		return false, nil
	})
}

func (s *clusterStep) PlanDestroy(obs plan.Observation) plan.Change {
	if !obs.Exists {
		return plan.NoChange()
	}
	return plan.Change{Action: plan.Delete, Diff: []string{"delete EKS cluster " + s.cluster + " (about 10 minutes)"}}
}

func deleteEKSCluster(ctx context.Context, c *Clients, name string) error {
	if _, err := c.EKS.DeleteCluster(ctx, &eks.DeleteClusterInput{Name: &name}); err != nil && !isNotFound(err) {
		return classify("delete EKS cluster "+name, "eks:DeleteCluster", err)
	}
	return wait(ctx, c.poll(), "EKS cluster "+name+" to be deleted", func() (bool, error) {
		_, err := c.EKS.DescribeCluster(ctx, &eks.DescribeClusterInput{Name: &name})
		if isNotFound(err) {
			return true, nil
		}
		return false, classify("read EKS cluster "+name, "eks:DescribeCluster", err)
	})
}

// nodeGroupStep is the managed node group in the private subnets.
type nodeGroupStep struct {
	c            *Clients
	cluster      string
	zones        []string
	instanceType string
	nodes        int32
}

const nodeGroupName = "opstrace-nodes"

type nodeGroupState struct {
	Status  string
	Desired int32
	RoleARN string
	Subnets []string
}

func (s *nodeGroupStep) Name() string { return "aws/node-group" }
func (s *nodeGroupStep) DependsOn() []string {
	return []string{"aws/eks-cluster", "aws/node-role", "aws/routes"}
}

func (s *nodeGroupStep) Observe(ctx context.Context) (plan.Observation, error) {
	var st nodeGroupState
	out, err := s.c.EKS.DescribeNodegroup(ctx, &eks.DescribeNodegroupInput{ClusterName: &s.cluster, NodegroupName: aws.String(nodeGroupName)})
	switch {
	case isNotFound(err):
	case err != nil:
		return plan.Observation{}, classify("find EKS node group", "eks:DescribeNodegroup", err)
	default:
		ng := out.Nodegroup
		if ng.Tags[cloud.OwnerTag] != s.cluster {
			return plan.Observation{}, plan.NotOwnedError("EKS node group", "node group "+nodeGroupName+" of EKS cluster "+s.cluster, cloud.OwnerTag+"="+s.cluster)
		}
		st.Status = string(ng.Status)
		if ng.ScalingConfig != nil {
			st.Desired = aws.ToInt32(ng.ScalingConfig.DesiredSize)
		}
		return plan.Observation{Exists: true, ID: aws.ToString(ng.NodegroupArn), Detail: st}, nil
	}
	role, err := s.c.IAM.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(cloud.ResourceName(s.cluster, "eks-node"))})
	if err != nil && !isNotFound(err) {
		return plan.Observation{}, classify("find the EKS node role", "iam:GetRole", err)
	}
	if err == nil {
		st.RoleARN = aws.ToString(role.Role.Arn)
	}
	subnets, err := findSubnets(ctx, s.c, s.cluster)
	if err != nil {
		return plan.Observation{}, err
	}
	for _, z := range s.zones {
		if id := subnets[cloud.ResourceName(s.cluster, "private-"+z)]; id != "" {
			st.Subnets = append(st.Subnets, id)
		}
	}
	return plan.Observation{Detail: st}, nil
}

func (s *nodeGroupStep) Plan(obs plan.Observation) plan.Change {
	st := obs.Detail.(nodeGroupState)
	switch {
	case !obs.Exists:
		return plan.Change{Action: plan.Create, Desired: st, Diff: []string{
			fmt.Sprintf("EKS node group %s: %d × %s in the private subnets", nodeGroupName, s.nodes, s.instanceType)}}
	case st.Desired != s.nodes && st.Status == string(ekstypes.NodegroupStatusActive):
		return plan.Change{Action: plan.Update, Desired: st, Diff: []string{fmt.Sprintf("nodes: %d → %d", st.Desired, s.nodes)}}
	case st.Status == string(ekstypes.NodegroupStatusCreating) || st.Status == string(ekstypes.NodegroupStatusUpdating):
		return plan.Change{Action: plan.Update, Desired: st, Diff: []string{"node group: wait until ACTIVE (now " + st.Status + ")"}}
	}
	return plan.NoChange()
}

func (s *nodeGroupStep) scaling() *ekstypes.NodegroupScalingConfig {
	return &ekstypes.NodegroupScalingConfig{MinSize: aws.Int32(s.nodes), MaxSize: aws.Int32(s.nodes), DesiredSize: aws.Int32(s.nodes)}
}

func (s *nodeGroupStep) Apply(ctx context.Context, c plan.Change) error {
	if c.Action == plan.Delete {
		return deleteNodeGroup(ctx, s.c, s.cluster, nodeGroupName)
	}
	st := c.Desired.(nodeGroupState)
	switch {
	case c.Action == plan.Create:
		if st.RoleARN == "" || len(st.Subnets) < len(s.zones) {
			return plan.Errorf(plan.NotFound, "create EKS node group", fmt.Errorf("its role or subnets are not there yet"))
		}
		if _, err := s.c.EKS.CreateNodegroup(ctx, &eks.CreateNodegroupInput{
			ClusterName: &s.cluster, NodegroupName: aws.String(nodeGroupName), NodeRole: &st.RoleARN,
			Subnets: st.Subnets, InstanceTypes: []string{s.instanceType}, ScalingConfig: s.scaling(),
			Tags: map[string]string{cloud.OwnerTag: s.cluster},
		}); err != nil {
			return classify("create EKS node group", "eks:CreateNodegroup", err)
		}
	case st.Desired != s.nodes && st.Status == string(ekstypes.NodegroupStatusActive):
		if _, err := s.c.EKS.UpdateNodegroupConfig(ctx, &eks.UpdateNodegroupConfigInput{
			ClusterName: &s.cluster, NodegroupName: aws.String(nodeGroupName), ScalingConfig: s.scaling()}); err != nil {
			return classify("scale EKS node group", "eks:UpdateNodegroupConfig", err)
		}
	}
	return wait(ctx, s.c.poll(), "node group to be ACTIVE", func() (bool, error) {
		out, err := s.c.EKS.DescribeNodegroup(ctx, &eks.DescribeNodegroupInput{ClusterName: &s.cluster, NodegroupName: aws.String(nodeGroupName)})
		if err != nil {
			return false, classify("read EKS node group", "eks:DescribeNodegroup", err)
		}
		switch out.Nodegroup.Status {
		case ekstypes.NodegroupStatusActive:
			return true, nil
		case ekstypes.NodegroupStatusCreateFailed, ekstypes.NodegroupStatusDegraded:
			var issues []string
			if out.Nodegroup.Health != nil {
				for _, i := range out.Nodegroup.Health.Issues {
					issues = append(issues, string(i.Code)+": "+aws.ToString(i.Message))
				}
			}
			return false, fmt.Errorf("EKS node group is %s: %s", out.Nodegroup.Status, strings.Join(issues, "; "))
		}
		return false, nil
	})
}

func (s *nodeGroupStep) PlanDestroy(obs plan.Observation) plan.Change {
	if !obs.Exists {
		return plan.NoChange()
	}
	return plan.Change{Action: plan.Delete, Diff: []string{"delete EKS node group " + nodeGroupName}}
}

func deleteNodeGroup(ctx context.Context, c *Clients, cluster, name string) error {
	if _, err := c.EKS.DeleteNodegroup(ctx, &eks.DeleteNodegroupInput{ClusterName: &cluster, NodegroupName: &name}); err != nil && !isNotFound(err) {
		return classify("delete EKS node group "+name, "eks:DeleteNodegroup", err)
	}
	return wait(ctx, c.poll(), "node group "+name+" to be deleted", func() (bool, error) {
		_, err := c.EKS.DescribeNodegroup(ctx, &eks.DescribeNodegroupInput{ClusterName: &cluster, NodegroupName: &name})
		if isNotFound(err) {
			return true, nil
		}
		return false, classify("read EKS node group "+name, "eks:DescribeNodegroup", err)
	})
}
