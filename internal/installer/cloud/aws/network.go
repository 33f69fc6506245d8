package aws

import (
	"context"
	"fmt"
	"sort"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

// The VPC's address plan: a /19 private subnet per zone from 10.0.0.0 (six zones use up to 10.0.191.255),
// a /21 public subnet per zone from 10.0.192.0.
const vpcCIDR = "10.0.0.0/16"

func privateCIDR(i int) string { return fmt.Sprintf("10.0.%d.0/19", i*32) }
func publicCIDR(i int) string  { return fmt.Sprintf("10.0.%d.0/21", 192+i*8) }

// ownerFilter selects the EC2 resources tagged for the cluster: EC2 resources are only ever found by it.
func ownerFilter(cluster string) ec2types.Filter {
	return ec2types.Filter{Name: aws.String("tag:" + cloud.OwnerTag), Values: []string{cluster}}
}

func ec2Tags(resource ec2types.ResourceType, cluster, name string, extra ...ec2types.Tag) []ec2types.TagSpecification {
	tags := append([]ec2types.Tag{
		{Key: aws.String(cloud.OwnerTag), Value: aws.String(cluster)},
		{Key: aws.String("Name"), Value: aws.String(name)},
	}, extra...)
	return []ec2types.TagSpecification{{ResourceType: resource, Tags: tags}}
}

func tagValue(tags []ec2types.Tag, key string) string {
	for _, t := range tags {
		if aws.ToString(t.Key) == key {
			return aws.ToString(t.Value)
		}
	}
	return ""
}

// findVPC returns the cluster's VPC ID, "" when there is none.
func findVPC(ctx context.Context, c *Clients, cluster string) (string, error) {
	out, err := c.EC2.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{Filters: []ec2types.Filter{ownerFilter(cluster)}})
	if err != nil {
		return "", classify("find VPC", "ec2:DescribeVpcs", err)
	}
	if len(out.Vpcs) == 0 {
		return "", nil
	}
	// Two VPCs tagged for one cluster cannot come from these steps (they look before creating); use the
	// oldest-listed and leave the other to destroy's sweep.
	return aws.ToString(out.Vpcs[0].VpcId), nil
}

// vpcStep is the VPC with DNS hostnames (EKS needs them) and an attached internet gateway.
type vpcStep struct {
	c       *Clients
	cluster string
}

type vpcState struct {
	VPC, IGW      string
	DNSHostnames  bool
	IGWAttachedTo string
}

func (s *vpcStep) Name() string        { return "aws/vpc" }
func (s *vpcStep) DependsOn() []string { return nil }

func (s *vpcStep) Observe(ctx context.Context) (plan.Observation, error) {
	var st vpcState
	var err error
	if st.VPC, err = findVPC(ctx, s.c, s.cluster); err != nil {
		return plan.Observation{}, err
	}
	igws, err := s.c.EC2.DescribeInternetGateways(ctx, &ec2.DescribeInternetGatewaysInput{Filters: []ec2types.Filter{ownerFilter(s.cluster)}})
	if err != nil {
		return plan.Observation{}, classify("find internet gateway", "ec2:DescribeInternetGateways", err)
	}
	if len(igws.InternetGateways) > 0 {
		igw := igws.InternetGateways[0]
		st.IGW = aws.ToString(igw.InternetGatewayId)
		for _, a := range igw.Attachments {
			st.IGWAttachedTo = aws.ToString(a.VpcId)
		}
	}
	if st.VPC != "" {
		attr, err := s.c.EC2.DescribeVpcAttribute(ctx, &ec2.DescribeVpcAttributeInput{VpcId: &st.VPC, Attribute: ec2types.VpcAttributeNameEnableDnsHostnames})
		if err != nil {
			return plan.Observation{}, classify("read VPC "+st.VPC, "ec2:DescribeVpcAttribute", err)
		}
		st.DNSHostnames = attr.EnableDnsHostnames != nil && aws.ToBool(attr.EnableDnsHostnames.Value)
	}
	return plan.Observation{Exists: st.VPC != "" || st.IGW != "", ID: st.VPC, Detail: st}, nil
}

func (s *vpcStep) Plan(obs plan.Observation) plan.Change {
	st, _ := obs.Detail.(vpcState)
	var diff []string
	if st.VPC == "" {
		diff = append(diff, "VPC "+cloud.ResourceName(s.cluster, "vpc")+" "+vpcCIDR+" with DNS hostnames")
	} else if !st.DNSHostnames {
		diff = append(diff, "VPC "+st.VPC+": DNS hostnames off → on")
	}
	if st.IGW == "" {
		diff = append(diff, "internet gateway "+cloud.ResourceName(s.cluster, "igw")+", attached to the VPC")
	} else if st.VPC == "" || st.IGWAttachedTo != st.VPC {
		diff = append(diff, "internet gateway "+st.IGW+": attach to the VPC")
	}
	if len(diff) == 0 {
		return plan.NoChange()
	}
	action := plan.Update
	if st.VPC == "" {
		action = plan.Create
	}
	return plan.Change{Action: action, Diff: diff, Desired: st}
}

func (s *vpcStep) Apply(ctx context.Context, c plan.Change) error {
	if c.Action == plan.Delete {
		return s.delete(ctx)
	}
	st := c.Desired.(vpcState)
	if st.VPC == "" {
		out, err := s.c.EC2.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: aws.String(vpcCIDR),
			TagSpecifications: ec2Tags(ec2types.ResourceTypeVpc, s.cluster, cloud.ResourceName(s.cluster, "vpc"))})
		if err != nil {
			return classify("create VPC", "ec2:CreateVpc", err)
		}
		st.VPC = aws.ToString(out.Vpc.VpcId)
	}
	if !st.DNSHostnames {
		if _, err := s.c.EC2.ModifyVpcAttribute(ctx, &ec2.ModifyVpcAttributeInput{VpcId: &st.VPC,
			EnableDnsHostnames: &ec2types.AttributeBooleanValue{Value: aws.Bool(true)}}); err != nil {
			return classify("enable DNS hostnames of VPC "+st.VPC, "ec2:ModifyVpcAttribute", err)
		}
	}
	if st.IGW == "" {
		out, err := s.c.EC2.CreateInternetGateway(ctx, &ec2.CreateInternetGatewayInput{
			TagSpecifications: ec2Tags(ec2types.ResourceTypeInternetGateway, s.cluster, cloud.ResourceName(s.cluster, "igw"))})
		if err != nil {
			return classify("create internet gateway", "ec2:CreateInternetGateway", err)
		}
		st.IGW = aws.ToString(out.InternetGateway.InternetGatewayId)
	}
	if st.IGWAttachedTo != st.VPC {
		if _, err := s.c.EC2.AttachInternetGateway(ctx, &ec2.AttachInternetGatewayInput{InternetGatewayId: &st.IGW, VpcId: &st.VPC}); err != nil {
			return classify("attach internet gateway "+st.IGW, "ec2:AttachInternetGateway", err)
		}
	}
	return nil
}

func (s *vpcStep) PlanDestroy(obs plan.Observation) plan.Change {
	if !obs.Exists {
		return plan.NoChange()
	}
	st := obs.Detail.(vpcState)
	var diff []string
	if st.IGW != "" {
		diff = append(diff, "delete internet gateway "+st.IGW)
	}
	if st.VPC != "" {
		diff = append(diff, "delete VPC "+st.VPC)
	}
	return plan.Change{Action: plan.Delete, Diff: diff, Desired: st}
}

func (s *vpcStep) delete(ctx context.Context) error {
	obs, err := s.Observe(ctx)
	if err != nil {
		return err
	}
	st := obs.Detail.(vpcState)
	if st.IGW != "" {
		if st.IGWAttachedTo != "" {
			if _, err := s.c.EC2.DetachInternetGateway(ctx, &ec2.DetachInternetGatewayInput{InternetGatewayId: &st.IGW, VpcId: &st.IGWAttachedTo}); err != nil && !isNotFound(err) {
				return classify("detach internet gateway "+st.IGW, "ec2:DetachInternetGateway", err)
			}
		}
		if _, err := s.c.EC2.DeleteInternetGateway(ctx, &ec2.DeleteInternetGatewayInput{InternetGatewayId: &st.IGW}); err != nil && !isNotFound(err) {
			return classify("delete internet gateway "+st.IGW, "ec2:DeleteInternetGateway", err)
		}
	}
	if st.VPC != "" {
		// DependencyViolation (a load balancer's network interfaces still in the subnets) is a Conflict and
		// retried: they go away once the Kubernetes cluster is gone.
		if _, err := s.c.EC2.DeleteVpc(ctx, &ec2.DeleteVpcInput{VpcId: &st.VPC}); err != nil && !isNotFound(err) {
			return classify("delete VPC "+st.VPC, "ec2:DeleteVpc", err)
		}
	}
	return nil
}

// subnet is one desired subnet.
type subnet struct {
	Name, Zone, CIDR string
	Public           bool
}

// subnetsStep is a public and a private subnet in each zone. Load balancers for the gateway go in the public
// subnets (tag kubernetes.io/role/elb), nodes in the private ones.
type subnetsStep struct {
	c       *Clients
	cluster string
	zones   []string // full zone names, e.g. us-west-2a
}

type subnetsState struct {
	VPC     string
	Have    map[string]string // subnet name → ID
	Missing []subnet
}

func (s *subnetsStep) Name() string        { return "aws/subnets" }
func (s *subnetsStep) DependsOn() []string { return []string{"aws/vpc"} }

func (s *subnetsStep) desired() []subnet {
	var out []subnet
	for i, z := range s.zones {
		out = append(out,
			subnet{Name: cloud.ResourceName(s.cluster, "public-"+z), Zone: z, CIDR: publicCIDR(i), Public: true},
			subnet{Name: cloud.ResourceName(s.cluster, "private-"+z), Zone: z, CIDR: privateCIDR(i)})
	}
	return out
}

// findSubnets returns the cluster's subnets by Name tag.
func findSubnets(ctx context.Context, c *Clients, cluster string) (map[string]string, error) {
	out, err := c.EC2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{Filters: []ec2types.Filter{ownerFilter(cluster)}})
	if err != nil {
		return nil, classify("find subnets", "ec2:DescribeSubnets", err)
	}
	have := map[string]string{}
	for _, sn := range out.Subnets {
		have[tagValue(sn.Tags, "Name")] = aws.ToString(sn.SubnetId)
	}
	return have, nil
}

func (s *subnetsStep) Observe(ctx context.Context) (plan.Observation, error) {
	vpc, err := findVPC(ctx, s.c, s.cluster)
	if err != nil {
		return plan.Observation{}, err
	}
	have, err := findSubnets(ctx, s.c, s.cluster)
	if err != nil {
		return plan.Observation{}, err
	}
	st := subnetsState{VPC: vpc, Have: have}
	for _, want := range s.desired() {
		if _, ok := have[want.Name]; !ok {
			st.Missing = append(st.Missing, want)
		}
	}
	return plan.Observation{Exists: len(have) > 0, Detail: st}, nil
}

func (s *subnetsStep) Plan(obs plan.Observation) plan.Change {
	st := obs.Detail.(subnetsState)
	if len(st.Missing) == 0 {
		return plan.NoChange()
	}
	var diff []string
	for _, sn := range st.Missing {
		diff = append(diff, fmt.Sprintf("subnet %s %s in %s", sn.Name, sn.CIDR, sn.Zone))
	}
	action := plan.Update
	if len(st.Have) == 0 {
		action = plan.Create
	}
	return plan.Change{Action: action, Diff: diff, Desired: st}
}

func (s *subnetsStep) Apply(ctx context.Context, c plan.Change) error {
	if c.Action == plan.Delete {
		have, err := findSubnets(ctx, s.c, s.cluster)
		if err != nil {
			return err
		}
		for _, name := range sortedKeys(have) {
			id := have[name]
			if _, err := s.c.EC2.DeleteSubnet(ctx, &ec2.DeleteSubnetInput{SubnetId: &id}); err != nil && !isNotFound(err) {
				return classify("delete subnet "+id, "ec2:DeleteSubnet", err)
			}
		}
		return nil
	}
	st := c.Desired.(subnetsState)
	if st.VPC == "" {
		return plan.Errorf(plan.NotFound, "create subnets", fmt.Errorf("the VPC of cluster %s is not there", s.cluster))
	}
	for _, sn := range st.Missing {
		role := "kubernetes.io/role/internal-elb"
		if sn.Public {
			role = "kubernetes.io/role/elb"
		}
		if _, err := s.c.EC2.CreateSubnet(ctx, &ec2.CreateSubnetInput{VpcId: &st.VPC, CidrBlock: aws.String(sn.CIDR),
			AvailabilityZone:  aws.String(sn.Zone),
			TagSpecifications: ec2Tags(ec2types.ResourceTypeSubnet, s.cluster, sn.Name, ec2types.Tag{Key: aws.String(role), Value: aws.String("1")}),
		}); err != nil {
			return classify("create subnet "+sn.Name, "ec2:CreateSubnet", err)
		}
	}
	return nil
}

func (s *subnetsStep) PlanDestroy(obs plan.Observation) plan.Change {
	st := obs.Detail.(subnetsState)
	if len(st.Have) == 0 {
		return plan.NoChange()
	}
	var diff []string
	for _, name := range sortedKeys(st.Have) {
		diff = append(diff, "delete subnet "+name+" "+st.Have[name])
	}
	return plan.Change{Action: plan.Delete, Diff: diff}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// natStep is one NAT gateway, with its Elastic IP, in the first zone's public subnet: the nodes' way out.
// One NAT gateway keeps the bill down; a zone outage takes the nodes' egress with it.
type natStep struct {
	c       *Clients
	cluster string
	zone    string // the first zone
}

type natState struct {
	EIP, NAT, NATState, Subnet string
}

func (s *natStep) Name() string        { return "aws/nat" }
func (s *natStep) DependsOn() []string { return []string{"aws/subnets"} }

func (s *natStep) Observe(ctx context.Context) (plan.Observation, error) {
	var st natState
	addrs, err := s.c.EC2.DescribeAddresses(ctx, &ec2.DescribeAddressesInput{Filters: []ec2types.Filter{ownerFilter(s.cluster)}})
	if err != nil {
		return plan.Observation{}, classify("find elastic IP", "ec2:DescribeAddresses", err)
	}
	if len(addrs.Addresses) > 0 {
		st.EIP = aws.ToString(addrs.Addresses[0].AllocationId)
	}
	nats, err := s.c.EC2.DescribeNatGateways(ctx, &ec2.DescribeNatGatewaysInput{Filter: []ec2types.Filter{ownerFilter(s.cluster)}})
	if err != nil {
		return plan.Observation{}, classify("find NAT gateway", "ec2:DescribeNatGateways", err)
	}
	for _, n := range nats.NatGateways {
		if n.State == ec2types.NatGatewayStateDeleted || n.State == ec2types.NatGatewayStateFailed {
			continue
		}
		st.NAT, st.NATState = aws.ToString(n.NatGatewayId), string(n.State)
	}
	subnets, err := findSubnets(ctx, s.c, s.cluster)
	if err != nil {
		return plan.Observation{}, err
	}
	st.Subnet = subnets[cloud.ResourceName(s.cluster, "public-"+s.zone)]
	return plan.Observation{Exists: st.EIP != "" || st.NAT != "", ID: st.NAT, Detail: st}, nil
}

func (s *natStep) Plan(obs plan.Observation) plan.Change {
	st := obs.Detail.(natState)
	switch {
	case st.NAT == "":
		diff := []string{"NAT gateway " + cloud.ResourceName(s.cluster, "nat") + " in " + s.zone}
		if st.EIP == "" {
			diff = append([]string{"elastic IP " + cloud.ResourceName(s.cluster, "nat")}, diff...)
		}
		return plan.Change{Action: plan.Create, Diff: diff, Desired: st}
	case st.NATState != string(ec2types.NatGatewayStateAvailable):
		return plan.Change{Action: plan.Update, Diff: []string{"NAT gateway " + st.NAT + ": wait until available"}, Desired: st}
	}
	return plan.NoChange()
}

func (s *natStep) Apply(ctx context.Context, c plan.Change) error {
	st := c.Desired.(natState)
	if c.Action == plan.Delete {
		return s.delete(ctx, st)
	}
	if st.NAT == "" {
		if st.Subnet == "" {
			return plan.Errorf(plan.NotFound, "create NAT gateway", fmt.Errorf("the public subnet in %s is not there", s.zone))
		}
		if st.EIP == "" {
			out, err := s.c.EC2.AllocateAddress(ctx, &ec2.AllocateAddressInput{Domain: ec2types.DomainTypeVpc,
				TagSpecifications: ec2Tags(ec2types.ResourceTypeElasticIp, s.cluster, cloud.ResourceName(s.cluster, "nat"))})
			if err != nil {
				return classify("allocate elastic IP", "ec2:AllocateAddress", err)
			}
			st.EIP = aws.ToString(out.AllocationId)
		}
		out, err := s.c.EC2.CreateNatGateway(ctx, &ec2.CreateNatGatewayInput{AllocationId: &st.EIP, SubnetId: &st.Subnet,
			TagSpecifications: ec2Tags(ec2types.ResourceTypeNatgateway, s.cluster, cloud.ResourceName(s.cluster, "nat"))})
		if err != nil {
			return classify("create NAT gateway", "ec2:CreateNatGateway", err)
		}
		st.NAT = aws.ToString(out.NatGateway.NatGatewayId)
	}
	return wait(ctx, s.c.poll(), "NAT gateway "+st.NAT+" to be available", func() (bool, error) {
		out, err := s.c.EC2.DescribeNatGateways(ctx, &ec2.DescribeNatGatewaysInput{NatGatewayIds: []string{st.NAT}})
		if err != nil {
			return false, classify("read NAT gateway "+st.NAT, "ec2:DescribeNatGateways", err)
		}
		if len(out.NatGateways) == 0 {
			return false, plan.Errorf(plan.NotFound, "wait for NAT gateway "+st.NAT, fmt.Errorf("it is gone"))
		}
		switch out.NatGateways[0].State {
		case ec2types.NatGatewayStateAvailable:
			return true, nil
		case ec2types.NatGatewayStateFailed:
			return false, fmt.Errorf("NAT gateway %s failed: %s", st.NAT, aws.ToString(out.NatGateways[0].FailureMessage))
		}
		return false, nil
	})
}

func (s *natStep) PlanDestroy(obs plan.Observation) plan.Change {
	if !obs.Exists {
		return plan.NoChange()
	}
	st := obs.Detail.(natState)
	var diff []string
	if st.NAT != "" {
		diff = append(diff, "delete NAT gateway "+st.NAT)
	}
	if st.EIP != "" {
		diff = append(diff, "release elastic IP "+st.EIP)
	}
	return plan.Change{Action: plan.Delete, Diff: diff, Desired: st}
}

func (s *natStep) delete(ctx context.Context, st natState) error {
	if st.NAT != "" {
		if _, err := s.c.EC2.DeleteNatGateway(ctx, &ec2.DeleteNatGatewayInput{NatGatewayId: &st.NAT}); err != nil && !isNotFound(err) {
			return classify("delete NAT gateway "+st.NAT, "ec2:DeleteNatGateway", err)
		}
		// The elastic IP stays associated until the NAT gateway is deleted.
		if err := wait(ctx, s.c.poll(), "NAT gateway "+st.NAT+" to be deleted", func() (bool, error) {
			out, err := s.c.EC2.DescribeNatGateways(ctx, &ec2.DescribeNatGatewaysInput{NatGatewayIds: []string{st.NAT}})
			if isNotFound(err) {
				return true, nil
			}
			if err != nil {
				return false, classify("read NAT gateway "+st.NAT, "ec2:DescribeNatGateways", err)
			}
			return len(out.NatGateways) == 0 || out.NatGateways[0].State == ec2types.NatGatewayStateDeleted, nil
		}); err != nil {
			return err
		}
	}
	if st.EIP != "" {
		if _, err := s.c.EC2.ReleaseAddress(ctx, &ec2.ReleaseAddressInput{AllocationId: &st.EIP}); err != nil && !isNotFound(err) {
			return classify("release elastic IP "+st.EIP, "ec2:ReleaseAddress", err)
		}
	}
	return nil
}

// routesStep is the public route table (default route to the internet gateway) and the private one
// (default route to the NAT gateway), each associated with its subnets.
type routesStep struct {
	c       *Clients
	cluster string
	zones   []string
}

type routeTable struct {
	ID         string
	Name       string
	Target     string          // the 0.0.0.0/0 route's gateway, "" when absent
	Associated map[string]bool // subnet IDs
	Assocs     []string        // association IDs, for delete
}

type routesState struct {
	VPC, IGW, NAT string
	Subnets       map[string]string
	Tables        map[string]*routeTable // by Name
}

func (s *routesStep) Name() string        { return "aws/routes" }
func (s *routesStep) DependsOn() []string { return []string{"aws/vpc", "aws/nat"} }

func (s *routesStep) Observe(ctx context.Context) (plan.Observation, error) {
	st := routesState{Tables: map[string]*routeTable{}}
	var err error
	if st.VPC, err = findVPC(ctx, s.c, s.cluster); err != nil {
		return plan.Observation{}, err
	}
	if st.Subnets, err = findSubnets(ctx, s.c, s.cluster); err != nil {
		return plan.Observation{}, err
	}
	igws, err := s.c.EC2.DescribeInternetGateways(ctx, &ec2.DescribeInternetGatewaysInput{Filters: []ec2types.Filter{ownerFilter(s.cluster)}})
	if err != nil {
		return plan.Observation{}, classify("find internet gateway", "ec2:DescribeInternetGateways", err)
	}
	if len(igws.InternetGateways) > 0 {
		st.IGW = aws.ToString(igws.InternetGateways[0].InternetGatewayId)
	}
	nats, err := s.c.EC2.DescribeNatGateways(ctx, &ec2.DescribeNatGatewaysInput{Filter: []ec2types.Filter{ownerFilter(s.cluster)}})
	if err != nil {
		return plan.Observation{}, classify("find NAT gateway", "ec2:DescribeNatGateways", err)
	}
	for _, n := range nats.NatGateways {
		if n.State == ec2types.NatGatewayStateAvailable || n.State == ec2types.NatGatewayStatePending {
			st.NAT = aws.ToString(n.NatGatewayId)
		}
	}
	rts, err := s.c.EC2.DescribeRouteTables(ctx, &ec2.DescribeRouteTablesInput{Filters: []ec2types.Filter{ownerFilter(s.cluster)}})
	if err != nil {
		return plan.Observation{}, classify("find route tables", "ec2:DescribeRouteTables", err)
	}
	for _, rt := range rts.RouteTables {
		t := &routeTable{ID: aws.ToString(rt.RouteTableId), Name: tagValue(rt.Tags, "Name"), Associated: map[string]bool{}}
		for _, r := range rt.Routes {
			if aws.ToString(r.DestinationCidrBlock) == "0.0.0.0/0" {
				t.Target = aws.ToString(r.GatewayId) + aws.ToString(r.NatGatewayId)
			}
		}
		for _, a := range rt.Associations {
			if a.SubnetId != nil {
				t.Associated[aws.ToString(a.SubnetId)] = true
				t.Assocs = append(t.Assocs, aws.ToString(a.RouteTableAssociationId))
			}
		}
		st.Tables[t.Name] = t
	}
	return plan.Observation{Exists: len(st.Tables) > 0, Detail: st}, nil
}

// want is each route table's name, default route target, and subnets.
func (s *routesStep) want(st routesState) []routeTable {
	pub := routeTable{Name: cloud.ResourceName(s.cluster, "public"), Target: st.IGW, Associated: map[string]bool{}}
	priv := routeTable{Name: cloud.ResourceName(s.cluster, "private"), Target: st.NAT, Associated: map[string]bool{}}
	for _, z := range s.zones {
		if id := st.Subnets[cloud.ResourceName(s.cluster, "public-"+z)]; id != "" {
			pub.Associated[id] = true
		}
		if id := st.Subnets[cloud.ResourceName(s.cluster, "private-"+z)]; id != "" {
			priv.Associated[id] = true
		}
	}
	return []routeTable{pub, priv}
}

func (s *routesStep) Plan(obs plan.Observation) plan.Change {
	st := obs.Detail.(routesState)
	var diff []string
	for _, w := range s.want(st) {
		have := st.Tables[w.Name]
		if have == nil {
			diff = append(diff, fmt.Sprintf("route table %s: 0.0.0.0/0 → %s, %d subnets", w.Name, orLater(w.Target), len(w.Associated)))
			continue
		}
		if have.Target != w.Target {
			diff = append(diff, fmt.Sprintf("route table %s: 0.0.0.0/0 → %s", w.Name, orLater(w.Target)))
		}
		for _, id := range sortedKeys(w.Associated) {
			if !have.Associated[id] {
				diff = append(diff, fmt.Sprintf("route table %s: associate subnet %s", w.Name, id))
			}
		}
	}
	if len(diff) == 0 {
		return plan.NoChange()
	}
	action := plan.Update
	if len(st.Tables) == 0 {
		action = plan.Create
	}
	return plan.Change{Action: action, Diff: diff, Desired: st}
}

func orLater(id string) string {
	if id == "" {
		return "(gateway created earlier in the run)"
	}
	return id
}

func (s *routesStep) Apply(ctx context.Context, c plan.Change) error {
	st := c.Desired.(routesState)
	if c.Action == plan.Delete {
		for _, name := range sortedKeys(st.Tables) {
			t := st.Tables[name]
			for _, a := range t.Assocs {
				if _, err := s.c.EC2.DisassociateRouteTable(ctx, &ec2.DisassociateRouteTableInput{AssociationId: aws.String(a)}); err != nil && !isNotFound(err) {
					return classify("disassociate route table "+t.ID, "ec2:DisassociateRouteTable", err)
				}
			}
			if _, err := s.c.EC2.DeleteRouteTable(ctx, &ec2.DeleteRouteTableInput{RouteTableId: &t.ID}); err != nil && !isNotFound(err) {
				return classify("delete route table "+t.ID, "ec2:DeleteRouteTable", err)
			}
		}
		return nil
	}
	if st.VPC == "" || st.IGW == "" || st.NAT == "" {
		return plan.Errorf(plan.NotFound, "create routes", fmt.Errorf("the VPC, internet gateway or NAT gateway of cluster %s is not there", s.cluster))
	}
	for _, w := range s.want(st) {
		have := st.Tables[w.Name]
		if have == nil {
			out, err := s.c.EC2.CreateRouteTable(ctx, &ec2.CreateRouteTableInput{VpcId: &st.VPC,
				TagSpecifications: ec2Tags(ec2types.ResourceTypeRouteTable, s.cluster, w.Name)})
			if err != nil {
				return classify("create route table "+w.Name, "ec2:CreateRouteTable", err)
			}
			have = &routeTable{ID: aws.ToString(out.RouteTable.RouteTableId), Associated: map[string]bool{}}
		}
		if have.Target != w.Target {
			in := &ec2.CreateRouteInput{RouteTableId: &have.ID, DestinationCidrBlock: aws.String("0.0.0.0/0")}
			if w.Target == st.NAT {
				in.NatGatewayId = &st.NAT
			} else {
				in.GatewayId = &st.IGW
			}
			if _, err := s.c.EC2.CreateRoute(ctx, in); err != nil {
				return classify("create default route in "+have.ID, "ec2:CreateRoute", err)
			}
		}
		for _, id := range sortedKeys(w.Associated) {
			if !have.Associated[id] {
				if _, err := s.c.EC2.AssociateRouteTable(ctx, &ec2.AssociateRouteTableInput{RouteTableId: &have.ID, SubnetId: aws.String(id)}); err != nil {
					return classify("associate route table "+have.ID+" with subnet "+id, "ec2:AssociateRouteTable", err)
				}
			}
		}
	}
	return nil
}

func (s *routesStep) PlanDestroy(obs plan.Observation) plan.Change {
	st := obs.Detail.(routesState)
	if len(st.Tables) == 0 {
		return plan.NoChange()
	}
	var diff []string
	for _, name := range sortedKeys(st.Tables) {
		diff = append(diff, "delete route table "+name+" "+st.Tables[name].ID)
	}
	return plan.Change{Action: plan.Delete, Diff: diff, Desired: st}
}
