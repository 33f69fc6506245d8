package gcp

import (
	"context"
	"fmt"

	"cloud.google.com/go/compute/apiv1/computepb"
	"google.golang.org/protobuf/proto"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

// The network's address plan: the nodes' primary range, and the secondary ranges GKE's VPC-native
// networking gives pods (a /14: 1024 nodes × /24) and services.
const (
	nodesCIDR        = "10.0.0.0/20"
	podsRange        = "pods"
	podsCIDR         = "10.4.0.0/14"
	servicesRange    = "services"
	servicesCIDR     = "10.8.0.0/20"
	controlPlaneCIDR = "172.16.0.0/28" // the GKE control plane's peered range (private nodes)
)

// Names of the network resources.
func networkName(cluster string) string { return cloud.ResourceName(cluster, "network") }
func subnetName(cluster string) string  { return cloud.ResourceName(cluster, "nodes") }
func routerName(cluster string) string  { return cloud.ResourceName(cluster, "router") }
func natName(cluster string) string     { return cloud.ResourceName(cluster, "nat") }

func (c *Clients) networkURL(cluster string) string {
	return "projects/" + c.Project + "/global/networks/" + networkName(cluster)
}

func (c *Clients) subnetURL(cluster string) string {
	return "projects/" + c.Project + "/regions/" + c.Region + "/subnetworks/" + subnetName(cluster)
}

// notMarked is the NotOwned error of a compute resource or service account whose description lacks the
// cluster's mark.
func notMarked(op, resource, cluster string) error {
	e := plan.NotOwnedError(op, resource, cloud.OwnerLabel+"="+cluster)
	e.Err = fmt.Errorf("%s exists but its description is not %q (how opstrace marks resources that have no labels)", resource, ownerMark(cluster))
	return e
}

// networkStep is the cluster's VPC network, in custom subnet mode (no automatic subnets in every region).
// GKE adds the firewall rules the cluster needs (control plane to nodes, pods to pods) when it creates the
// cluster and removes them with it, so this installer makes none: the network's implied rules deny every
// other ingress.
type networkStep struct {
	c       *Clients
	cluster string
}

func (s *networkStep) Name() string        { return "gcp/network" }
func (s *networkStep) DependsOn() []string { return nil }

func (s *networkStep) Observe(ctx context.Context) (plan.Observation, error) {
	name := networkName(s.cluster)
	n, err := s.c.Compute.GetNetwork(ctx, &computepb.GetNetworkRequest{Project: s.c.Project, Network: name})
	if isNotFound(err) {
		return plan.Observation{}, nil
	}
	if err != nil {
		return plan.Observation{}, classify("find network "+name, "compute.networks.get", err)
	}
	if markedOwner(n.GetDescription()) != s.cluster {
		return plan.Observation{}, notMarked("network "+name, "VPC network "+name, s.cluster)
	}
	return plan.Observation{Exists: true, ID: n.GetSelfLink()}, nil
}

func (s *networkStep) Plan(obs plan.Observation) plan.Change {
	if obs.Exists {
		return plan.NoChange()
	}
	return plan.Change{Action: plan.Create, Diff: []string{"VPC network " + networkName(s.cluster) + ", custom subnets, regional routing"}}
}

func (s *networkStep) PlanDestroy(obs plan.Observation) plan.Change {
	if !obs.Exists {
		return plan.NoChange()
	}
	return plan.Change{Action: plan.Delete, Diff: []string{"delete VPC network " + networkName(s.cluster)}}
}

func (s *networkStep) Apply(ctx context.Context, c plan.Change) error {
	name := networkName(s.cluster)
	if c.Action == plan.Delete {
		return deleteNetwork(ctx, s.c, name)
	}
	err := s.c.Compute.InsertNetwork(ctx, &computepb.InsertNetworkRequest{Project: s.c.Project, NetworkResource: &computepb.Network{
		Name: proto.String(name), Description: proto.String(ownerMark(s.cluster)),
		AutoCreateSubnetworks: proto.Bool(false),
		RoutingConfig:         &computepb.NetworkRoutingConfig{RoutingMode: proto.String(computepb.NetworkRoutingConfig_REGIONAL.String())},
	}})
	return classify("create network "+name, "compute.networks.create", err)
}

func deleteNetwork(ctx context.Context, c *Clients, name string) error {
	// GKE's firewall rules go with the cluster, a little after it; until then the delete is refused
	// (resourceInUseByAnotherResource, a Conflict) and retried.
	if err := c.Compute.DeleteNetwork(ctx, &computepb.DeleteNetworkRequest{Project: c.Project, Network: name}); err != nil && !isNotFound(err) {
		return classify("delete network "+name, "compute.networks.delete", err)
	}
	return nil
}

// subnetStep is the nodes' subnet in the region, with the pods' and services' secondary ranges and
// Private Google Access (private nodes reach Google APIs, GCS included, without the NAT).
type subnetStep struct {
	c       *Clients
	cluster string
}

func (s *subnetStep) Name() string        { return "gcp/subnet" }
func (s *subnetStep) DependsOn() []string { return []string{"gcp/network"} }

func (s *subnetStep) Observe(ctx context.Context) (plan.Observation, error) {
	name := subnetName(s.cluster)
	sn, err := s.c.Compute.GetSubnetwork(ctx, &computepb.GetSubnetworkRequest{Project: s.c.Project, Region: s.c.Region, Subnetwork: name})
	if isNotFound(err) {
		return plan.Observation{}, nil
	}
	if err != nil {
		return plan.Observation{}, classify("find subnet "+name, "compute.subnetworks.get", err)
	}
	if markedOwner(sn.GetDescription()) != s.cluster {
		return plan.Observation{}, notMarked("subnet "+name, "subnet "+name, s.cluster)
	}
	return plan.Observation{Exists: true, ID: sn.GetSelfLink()}, nil
}

func (s *subnetStep) Plan(obs plan.Observation) plan.Change {
	if !obs.Exists {
		return plan.Change{Action: plan.Create, Diff: []string{
			fmt.Sprintf("subnet %s %s in %s, Private Google Access", subnetName(s.cluster), nodesCIDR, s.c.Region),
			fmt.Sprintf("secondary ranges: %s %s, %s %s", podsRange, podsCIDR, servicesRange, servicesCIDR),
		}}
	}
	// A subnet's ranges cannot change under a GKE cluster that uses them: one of ours is taken as it is.
	return plan.NoChange()
}

func (s *subnetStep) PlanDestroy(obs plan.Observation) plan.Change {
	if !obs.Exists {
		return plan.NoChange()
	}
	return plan.Change{Action: plan.Delete, Diff: []string{"delete subnet " + subnetName(s.cluster)}}
}

func (s *subnetStep) Apply(ctx context.Context, c plan.Change) error {
	name := subnetName(s.cluster)
	if c.Action == plan.Delete {
		return deleteSubnet(ctx, s.c, name)
	}
	err := s.c.Compute.InsertSubnetwork(ctx, &computepb.InsertSubnetworkRequest{Project: s.c.Project, Region: s.c.Region,
		SubnetworkResource: &computepb.Subnetwork{
			Name: proto.String(name), Description: proto.String(ownerMark(s.cluster)),
			Network: proto.String(s.c.networkURL(s.cluster)), IpCidrRange: proto.String(nodesCIDR),
			PrivateIpGoogleAccess: proto.Bool(true),
			SecondaryIpRanges: []*computepb.SubnetworkSecondaryRange{
				{RangeName: proto.String(podsRange), IpCidrRange: proto.String(podsCIDR)},
				{RangeName: proto.String(servicesRange), IpCidrRange: proto.String(servicesCIDR)},
			},
		}})
	if isNotFound(err) {
		return plan.Errorf(plan.NotFound, "create subnet "+name, fmt.Errorf("the network of cluster %s is not there: %w", s.cluster, err))
	}
	return classify("create subnet "+name, "compute.subnetworks.create", err)
}

func deleteSubnet(ctx context.Context, c *Clients, name string) error {
	if err := c.Compute.DeleteSubnetwork(ctx, &computepb.DeleteSubnetworkRequest{Project: c.Project, Region: c.Region, Subnetwork: name}); err != nil && !isNotFound(err) {
		return classify("delete subnet "+name, "compute.subnetworks.delete", err)
	}
	return nil
}

// routerStep is the Cloud Router with Cloud NAT for every subnet range of the region: the private nodes'
// way out (image pulls from public registries, Let's Encrypt). One NAT with automatic addresses.
type routerStep struct {
	c       *Clients
	cluster string
}

type routerState struct{ HasNAT bool }

func (s *routerStep) Name() string        { return "gcp/router" }
func (s *routerStep) DependsOn() []string { return []string{"gcp/network"} }

func (s *routerStep) Observe(ctx context.Context) (plan.Observation, error) {
	name := routerName(s.cluster)
	r, err := s.c.Compute.GetRouter(ctx, &computepb.GetRouterRequest{Project: s.c.Project, Region: s.c.Region, Router: name})
	if isNotFound(err) {
		return plan.Observation{}, nil
	}
	if err != nil {
		return plan.Observation{}, classify("find router "+name, "compute.routers.get", err)
	}
	if markedOwner(r.GetDescription()) != s.cluster {
		return plan.Observation{}, notMarked("router "+name, "Cloud Router "+name, s.cluster)
	}
	var st routerState
	for _, n := range r.GetNats() {
		st.HasNAT = st.HasNAT || n.GetName() == natName(s.cluster)
	}
	return plan.Observation{Exists: true, ID: r.GetSelfLink(), Detail: st}, nil
}

func (s *routerStep) Plan(obs plan.Observation) plan.Change {
	if !obs.Exists {
		return plan.Change{Action: plan.Create, Diff: []string{
			"Cloud Router " + routerName(s.cluster) + " in " + s.c.Region,
			"Cloud NAT " + natName(s.cluster) + ": every subnet range, automatic addresses",
		}}
	}
	if !obs.Detail.(routerState).HasNAT {
		return plan.Change{Action: plan.Update, Diff: []string{"Cloud NAT " + natName(s.cluster) + ": add to router " + routerName(s.cluster)}}
	}
	return plan.NoChange()
}

func (s *routerStep) PlanDestroy(obs plan.Observation) plan.Change {
	if !obs.Exists {
		return plan.NoChange()
	}
	return plan.Change{Action: plan.Delete, Diff: []string{"delete Cloud Router " + routerName(s.cluster) + " and its NAT"}}
}

func (s *routerStep) nat() *computepb.RouterNat {
	return &computepb.RouterNat{
		Name:                          proto.String(natName(s.cluster)),
		NatIpAllocateOption:           proto.String(computepb.RouterNat_AUTO_ONLY.String()),
		SourceSubnetworkIpRangesToNat: proto.String(computepb.RouterNat_ALL_SUBNETWORKS_ALL_IP_RANGES.String()),
	}
}

func (s *routerStep) Apply(ctx context.Context, c plan.Change) error {
	name := routerName(s.cluster)
	switch c.Action {
	case plan.Delete:
		return deleteRouter(ctx, s.c, name)
	case plan.Update:
		err := s.c.Compute.PatchRouter(ctx, &computepb.PatchRouterRequest{Project: s.c.Project, Region: s.c.Region, Router: name,
			RouterResource: &computepb.Router{Nats: []*computepb.RouterNat{s.nat()}}})
		return classify("add NAT to router "+name, "compute.routers.update", err)
	}
	err := s.c.Compute.InsertRouter(ctx, &computepb.InsertRouterRequest{Project: s.c.Project, Region: s.c.Region,
		RouterResource: &computepb.Router{
			Name: proto.String(name), Description: proto.String(ownerMark(s.cluster)),
			Network: proto.String(s.c.networkURL(s.cluster)), Nats: []*computepb.RouterNat{s.nat()},
		}})
	if isNotFound(err) {
		return plan.Errorf(plan.NotFound, "create router "+name, fmt.Errorf("the network of cluster %s is not there: %w", s.cluster, err))
	}
	return classify("create router "+name, "compute.routers.create", err)
}

func deleteRouter(ctx context.Context, c *Clients, name string) error {
	if err := c.Compute.DeleteRouter(ctx, &computepb.DeleteRouterRequest{Project: c.Project, Region: c.Region, Router: name}); err != nil && !isNotFound(err) {
		return classify("delete router "+name, "compute.routers.delete", err)
	}
	return nil
}
