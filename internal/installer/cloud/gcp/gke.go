package gcp

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"cloud.google.com/go/container/apiv1/containerpb"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

// A regional GKE cluster spreads each node pool over zonesPerRegion zones, and GKE sizes node pools per
// zone: node_count is rounded up to whole zones.
const zonesPerRegion = 3

// NodePoolName is the node pool of every cluster.
const NodePoolName = "opstrace-nodes"

func nodesPerZone(nodeCount int) int32 {
	return int32((nodeCount + zonesPerRegion - 1) / zonesPerRegion)
}

// WorkloadPool is the workload identity pool of a project's GKE clusters.
func WorkloadPool(project string) string { return project + ".svc.id.goog" }

func (c *Clients) location() string { return "projects/" + c.Project + "/locations/" + c.Region }

func (c *Clients) clusterPath(cluster string) string { return c.location() + "/clusters/" + cluster }

func (c *Clients) nodePoolPath(cluster string) string {
	return c.clusterPath(cluster) + "/nodePools/" + NodePoolName
}

// clusterStep is the GKE control plane: regional, VPC-native on the subnet's secondary ranges, private
// nodes (no public addresses; egress through the NAT), a public control plane endpoint (credentials
// still required) reachable from gcp.api_authorized_ip_ranges only (GKE's authorized networks; any address
// by default), workload identity. The GKE cluster has the Opstrace cluster's name. It is created
// with its node pool, in one operation: GKE cannot create a cluster without nodes, and a throwaway
// default pool would cost a second operation of several minutes on the critical path.
type clusterStep struct {
	c           *Clients
	cluster     string
	version     string
	machineType string
	nodeCount   int
	authorized  []string // gcp.api_authorized_ip_ranges
}

type clusterState struct {
	Status  containerpb.Cluster_Status
	Message string
	// Authorized are the CIDRs that may reach the control plane, as authorizedRanges reads them.
	Authorized []string
}

// clusterUpdate is what an Update of the cluster step does besides waiting until it runs.
type clusterUpdate struct {
	Authorized bool // set the authorized networks
}

func (s *clusterStep) Name() string { return "gcp/gke-cluster" }
func (s *clusterStep) DependsOn() []string {
	return []string{"gcp/subnet", "gcp/router", "gcp/node-identity"}
}

// anyAddress is gcp.api_authorized_ip_ranges when the control plane is open to every address.
var anyAddress = []string{config.DefaultAuthorizedIPRange}

// authorizedNetworks is the GKE setting of gcp.api_authorized_ip_ranges: [0.0.0.0/0] alone disables the
// restriction (what GKE does when the setting is absent) rather than listing every address.
func authorizedNetworks(ranges []string) *containerpb.MasterAuthorizedNetworksConfig {
	if slices.Equal(ranges, anyAddress) {
		return &containerpb.MasterAuthorizedNetworksConfig{Enabled: false}
	}
	cfg := &containerpb.MasterAuthorizedNetworksConfig{Enabled: true}
	for _, r := range ranges {
		cfg.CidrBlocks = append(cfg.CidrBlocks, &containerpb.MasterAuthorizedNetworksConfig_CidrBlock{CidrBlock: r})
	}
	return cfg
}

// authorizedRanges reads a cluster's authorized networks as a sorted list of CIDRs, [0.0.0.0/0] when the
// restriction is off: comparable with sortedRanges of the config.
func authorizedRanges(cfg *containerpb.MasterAuthorizedNetworksConfig) []string {
	if !cfg.GetEnabled() {
		return anyAddress
	}
	out := []string{}
	for _, b := range cfg.GetCidrBlocks() {
		out = append(out, b.GetCidrBlock())
	}
	slices.Sort(out)
	return out
}

func sortedRanges(ranges []string) []string {
	out := slices.Clone(ranges)
	slices.Sort(out)
	return out
}

func describeRanges(ranges []string) string {
	if slices.Equal(ranges, anyAddress) {
		return "any address (0.0.0.0/0)"
	}
	if len(ranges) == 0 {
		return "no address"
	}
	return strings.Join(ranges, ", ")
}

func (s *clusterStep) Observe(ctx context.Context) (plan.Observation, error) {
	gc, err := s.c.GKE.GetCluster(ctx, &containerpb.GetClusterRequest{Name: s.c.clusterPath(s.cluster)})
	if isNotFound(err) {
		return plan.Observation{}, nil
	}
	if err != nil {
		return plan.Observation{}, classify("find GKE cluster "+s.cluster, "container.clusters.get", err)
	}
	if gc.GetResourceLabels()[cloud.OwnerLabel] != s.cluster {
		return plan.Observation{}, plan.NotOwnedError("GKE cluster "+s.cluster, "GKE cluster "+s.cluster, cloud.OwnerLabel+"="+s.cluster)
	}
	return plan.Observation{Exists: true, ID: gc.GetSelfLink(), Detail: clusterState{Status: gc.GetStatus(), Message: gc.GetStatusMessage(),
		Authorized: authorizedRanges(gc.GetMasterAuthorizedNetworksConfig())}}, nil
}

func (s *clusterStep) Plan(obs plan.Observation) plan.Change {
	if !obs.Exists {
		return plan.Change{Action: plan.Create, Diff: []string{
			fmt.Sprintf("GKE cluster %s, Kubernetes %s, regional in %s (about 8 minutes)", s.cluster, s.version, s.c.Region),
			"private nodes, control plane " + controlPlaneCIDR + ", workload identity pool " + WorkloadPool(s.c.Project),
			"Kubernetes API reachable from " + describeRanges(sortedRanges(s.authorized)),
			nodePoolDiff(s.machineType, s.nodeCount) + ", as " + NodeServiceAccountEmail(s.c.Project, s.cluster),
		}}
	}
	st := obs.Detail.(clusterState)
	var up clusterUpdate
	var diff []string
	if st.Status == containerpb.Cluster_PROVISIONING || st.Status == containerpb.Cluster_RECONCILING {
		diff = append(diff, "GKE cluster "+s.cluster+": wait until RUNNING (now "+st.Status.String()+")")
	}
	if want := sortedRanges(s.authorized); !slices.Equal(st.Authorized, want) {
		up.Authorized = true
		diff = append(diff, "Kubernetes API reachable from: "+describeRanges(st.Authorized)+" → "+describeRanges(want)+" (gcp.api_authorized_ip_ranges)")
	}
	if len(diff) == 0 {
		return plan.NoChange()
	}
	return plan.Change{Action: plan.Update, Desired: up, Diff: diff}
}

func nodePoolDiff(machineType string, nodeCount int) string {
	per := nodesPerZone(nodeCount)
	return fmt.Sprintf("node pool %s: %d × %s per zone in %d zones (%d nodes for node_count %d)",
		NodePoolName, per, machineType, zonesPerRegion, per*zonesPerRegion, nodeCount)
}

func (s *clusterStep) PlanDestroy(obs plan.Observation) plan.Change {
	if !obs.Exists {
		return plan.NoChange()
	}
	return plan.Change{Action: plan.Delete, Diff: []string{"delete GKE cluster " + s.cluster + " and its nodes (about 5 minutes)"}}
}

// nodePool is the node pool as created: a fixed size per zone (the autoscaler pinned to it, so that the
// size is observable and GKE keeps it), nodes running as the cluster's node service account (serviceAccount,
// an email; its roles, not the cloud-platform scope, bound what it may do), pods using workload identity
// rather than the node's account.
func nodePool(cluster, serviceAccount, machineType string, nodeCount int) *containerpb.NodePool {
	per := nodesPerZone(nodeCount)
	return &containerpb.NodePool{
		Name:             NodePoolName,
		InitialNodeCount: per,
		Config: &containerpb.NodeConfig{
			MachineType:            machineType,
			DiskSizeGb:             100,
			ServiceAccount:         serviceAccount,
			OauthScopes:            []string{cloudPlatformScope},
			WorkloadMetadataConfig: &containerpb.WorkloadMetadataConfig{Mode: containerpb.WorkloadMetadataConfig_GKE_METADATA},
			ResourceLabels:         ownerLabels(cluster),
		},
		Autoscaling: &containerpb.NodePoolAutoscaling{Enabled: true, MinNodeCount: per, MaxNodeCount: per},
		Management:  &containerpb.NodeManagement{AutoRepair: true, AutoUpgrade: true},
	}
}

func (s *clusterStep) Apply(ctx context.Context, c plan.Change) error {
	if c.Action == plan.Delete {
		return deleteGKECluster(ctx, s.c, s.cluster)
	}
	if c.Action == plan.Create {
		_, err := s.c.GKE.CreateCluster(ctx, &containerpb.CreateClusterRequest{Parent: s.c.location(), Cluster: &containerpb.Cluster{
			Name:                  s.cluster,
			InitialClusterVersion: s.version,
			ResourceLabels:        ownerLabels(s.cluster),
			Network:               networkName(s.cluster),
			Subnetwork:            subnetName(s.cluster),
			IpAllocationPolicy: &containerpb.IPAllocationPolicy{UseIpAliases: true,
				ClusterSecondaryRangeName: podsRange, ServicesSecondaryRangeName: servicesRange},
			PrivateClusterConfig:           &containerpb.PrivateClusterConfig{EnablePrivateNodes: true, MasterIpv4CidrBlock: controlPlaneCIDR},
			WorkloadIdentityConfig:         &containerpb.WorkloadIdentityConfig{WorkloadPool: WorkloadPool(s.c.Project)},
			MasterAuthorizedNetworksConfig: authorizedNetworks(s.authorized),
			NodePools: []*containerpb.NodePool{nodePool(s.cluster, NodeServiceAccountEmail(s.c.Project, s.cluster),
				s.machineType, s.nodeCount)},
		}})
		if err != nil {
			return classify("create GKE cluster "+s.cluster, "container.clusters.create", err)
		}
	}
	if c.Action == plan.Update && c.Desired.(clusterUpdate).Authorized {
		// GKE refuses an update while another operation runs (Conflict, retried from Observe): wait first.
		if err := s.waitRunning(ctx); err != nil {
			return err
		}
		if _, err := s.c.GKE.UpdateCluster(ctx, &containerpb.UpdateClusterRequest{Name: s.c.clusterPath(s.cluster),
			Update: &containerpb.ClusterUpdate{DesiredMasterAuthorizedNetworksConfig: authorizedNetworks(s.authorized)}}); err != nil {
			return classify("set the authorized networks of GKE cluster "+s.cluster, "container.clusters.update", err)
		}
	}
	return s.waitRunning(ctx)
}

func (s *clusterStep) waitRunning(ctx context.Context) error {
	return wait(ctx, s.c.poll(), "GKE cluster "+s.cluster+" to be RUNNING", func() (bool, error) {
		gc, err := s.c.GKE.GetCluster(ctx, &containerpb.GetClusterRequest{Name: s.c.clusterPath(s.cluster)})
		if err != nil {
			return false, classify("read GKE cluster "+s.cluster, "container.clusters.get", err)
		}
		switch gc.GetStatus() {
		case containerpb.Cluster_RUNNING:
			return true, nil
		case containerpb.Cluster_ERROR, containerpb.Cluster_DEGRADED:
			return false, fmt.Errorf("GKE cluster %s is %s: %s; see the GKE console, destroy and create again", s.cluster, gc.GetStatus(), conditions(gc.GetStatusMessage(), gc.GetConditions()))
		}
		return false, nil
	})
}

func conditions(message string, conds []*containerpb.StatusCondition) string {
	parts := []string{}
	if message != "" {
		parts = append(parts, message)
	}
	for _, c := range conds {
		parts = append(parts, c.GetCanonicalCode().String()+": "+c.GetMessage())
	}
	return strings.Join(parts, "; ")
}

func deleteGKECluster(ctx context.Context, c *Clients, cluster string) error {
	_, err := c.GKE.DeleteCluster(ctx, &containerpb.DeleteClusterRequest{Name: c.clusterPath(cluster)})
	switch {
	case isNotFound(err):
		return nil
	case err != nil && kindOf(err) != plan.Conflict: // Conflict: already being deleted (or changed): wait
		return classify("delete GKE cluster "+cluster, "container.clusters.delete", err)
	}
	return wait(ctx, c.poll(), "GKE cluster "+cluster+" to be deleted", func() (bool, error) {
		gc, err := c.GKE.GetCluster(ctx, &containerpb.GetClusterRequest{Name: c.clusterPath(cluster)})
		if isNotFound(err) {
			return true, nil
		}
		if err != nil {
			return false, classify("read GKE cluster "+cluster, "container.clusters.get", err)
		}
		if gc.GetStatus() != containerpb.Cluster_STOPPING {
			// Another operation was running when we asked: ask again.
			return false, plan.Errorf(plan.Conflict, "delete GKE cluster "+cluster, fmt.Errorf("it is %s, not being deleted", gc.GetStatus()))
		}
		return false, nil
	})
}

// nodePoolStep is the node pool: made with the cluster, resized here when node_count changes, and made
// again if it is missing from a cluster of ours.
type nodePoolStep struct {
	c           *Clients
	cluster     string
	machineType string
	nodeCount   int
}

type nodePoolState struct {
	Status   containerpb.NodePool_Status
	Min, Max int32
}

func (s *nodePoolStep) Name() string        { return "gcp/node-pool" }
func (s *nodePoolStep) DependsOn() []string { return []string{"gcp/gke-cluster", "gcp/node-identity"} }

func (s *nodePoolStep) Observe(ctx context.Context) (plan.Observation, error) {
	np, err := s.c.GKE.GetNodePool(ctx, &containerpb.GetNodePoolRequest{Name: s.c.nodePoolPath(s.cluster)})
	if isNotFound(err) {
		return plan.Observation{}, nil
	}
	if err != nil {
		return plan.Observation{}, classify("find GKE node pool", "container.clusters.get", err)
	}
	if np.GetConfig().GetResourceLabels()[cloud.OwnerLabel] != s.cluster {
		return plan.Observation{}, plan.NotOwnedError("GKE node pool", "node pool "+NodePoolName+" of GKE cluster "+s.cluster, cloud.OwnerLabel+"="+s.cluster)
	}
	st := nodePoolState{Status: np.GetStatus(), Min: np.GetAutoscaling().GetMinNodeCount(), Max: np.GetAutoscaling().GetMaxNodeCount()}
	return plan.Observation{Exists: true, ID: np.GetSelfLink(), Detail: st}, nil
}

func (s *nodePoolStep) Plan(obs plan.Observation) plan.Change {
	if !obs.Exists {
		return plan.Change{Action: plan.Create, Diff: []string{nodePoolDiff(s.machineType, s.nodeCount)}}
	}
	st := obs.Detail.(nodePoolState)
	per := nodesPerZone(s.nodeCount)
	busy := st.Status == containerpb.NodePool_PROVISIONING || st.Status == containerpb.NodePool_RECONCILING
	switch {
	case (st.Min != per || st.Max != per) && !busy:
		return plan.Change{Action: plan.Update, Desired: st, Diff: []string{
			fmt.Sprintf("nodes per zone: %d → %d (%d nodes for node_count %d)", st.Max, per, per*zonesPerRegion, s.nodeCount)}}
	case busy:
		return plan.Change{Action: plan.Update, Desired: st, Diff: []string{"node pool: wait until RUNNING (now " + st.Status.String() + ")"}}
	}
	return plan.NoChange()
}

// PlanDestroy leaves the node pool to the cluster's deletion, which deletes its node pools: deleting the
// pool first would add minutes to destroy and change nothing.
func (s *nodePoolStep) PlanDestroy(plan.Observation) plan.Change { return plan.NoChange() }

func (s *nodePoolStep) Apply(ctx context.Context, c plan.Change) error {
	path := s.c.nodePoolPath(s.cluster)
	per := nodesPerZone(s.nodeCount)
	if c.Action == plan.Create {
		if _, err := s.c.GKE.CreateNodePool(ctx, &containerpb.CreateNodePoolRequest{Parent: s.c.clusterPath(s.cluster),
			NodePool: nodePool(s.cluster, NodeServiceAccountEmail(s.c.Project, s.cluster), s.machineType, s.nodeCount)}); err != nil {
			return classify("create GKE node pool", "container.nodes.create", err)
		}
		return s.waitRunning(ctx, path)
	}
	st := c.Desired.(nodePoolState)
	if st.Min == per && st.Max == per {
		return s.waitRunning(ctx, path)
	}
	// Size first, then the autoscaler's bounds, which are what Observe reads: an interruption between
	// the two leaves the bounds old, so the next run does both again (each is idempotent).
	if _, err := s.c.GKE.SetNodePoolSize(ctx, &containerpb.SetNodePoolSizeRequest{Name: path, NodeCount: per}); err != nil {
		return classify("resize GKE node pool", "container.clusters.update", err)
	}
	if err := s.waitRunning(ctx, path); err != nil {
		return err
	}
	if _, err := s.c.GKE.SetNodePoolAutoscaling(ctx, &containerpb.SetNodePoolAutoscalingRequest{Name: path,
		Autoscaling: &containerpb.NodePoolAutoscaling{Enabled: true, MinNodeCount: per, MaxNodeCount: per}}); err != nil {
		return classify("set GKE node pool size bounds", "container.clusters.update", err)
	}
	return s.waitRunning(ctx, path)
}

func (s *nodePoolStep) waitRunning(ctx context.Context, path string) error {
	return wait(ctx, s.c.poll(), "node pool to be RUNNING", func() (bool, error) {
		np, err := s.c.GKE.GetNodePool(ctx, &containerpb.GetNodePoolRequest{Name: path})
		if err != nil {
			return false, classify("read GKE node pool", "container.clusters.get", err)
		}
		switch np.GetStatus() {
		case containerpb.NodePool_RUNNING:
			return true, nil
		case containerpb.NodePool_ERROR, containerpb.NodePool_RUNNING_WITH_ERROR:
			return false, fmt.Errorf("GKE node pool %s is %s: %s", NodePoolName, np.GetStatus(), conditions(np.GetStatusMessage(), np.GetConditions()))
		}
		return false, nil
	})
}
