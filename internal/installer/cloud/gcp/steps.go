package gcp

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"cloud.google.com/go/compute/apiv1/computepb"
	"cloud.google.com/go/container/apiv1/containerpb"
	"cloud.google.com/go/iam/admin/apiv1/adminpb"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/installer/plan"
	"github.com/opstrace/opstrace/internal/manifests"
)

// WorkloadNamespace is the namespace of the MetricsCluster and of its workloads' service accounts.
const WorkloadNamespace = "opstrace"

// Workload roles: the service accounts of Cortex and Loki.
const (
	RoleCortex = "cortex"
	RoleLoki   = "loki"
)

// Steps are the Google Cloud resources of cluster, for a parsed config (config.ProviderGCP). The GKE
// cluster is the critical path; the buckets are made while the network is.
func Steps(c *Clients, cluster string, cfg config.Config) []plan.Step {
	steps := []plan.Step{
		&bucketStep{c: c, cluster: cluster, kind: cloud.BucketMetrics, days: cfg.MetricRetentionDays},
		&bucketStep{c: c, cluster: cluster, kind: cloud.BucketLogs, days: cfg.LogRetentionDays},
		&networkStep{c: c, cluster: cluster},
		&subnetStep{c: c, cluster: cluster},
		&routerStep{c: c, cluster: cluster},
		&nodeIdentityStep{c: c, cluster: cluster},
		&clusterStep{c: c, cluster: cluster, version: cfg.KubernetesVersion, machineType: cfg.GCP.MachineType, nodeCount: cfg.NodeCount,
			authorized: apiRanges(cfg.GCP)},
		&nodePoolStep{c: c, cluster: cluster, machineType: cfg.GCP.MachineType, nodeCount: cfg.NodeCount},
		&identityStep{c: c, cluster: cluster, step: "gcp/cortex-identity", role: RoleCortex, namespace: WorkloadNamespace,
			ksa:   manifests.CortexServiceAccountName(cluster),
			grant: bucketGrant{storage: c.Storage, bucket: cloud.BucketName(cluster, cloud.BucketMetrics), step: "gcp/bucket-metrics"}},
		&identityStep{c: c, cluster: cluster, step: "gcp/loki-identity", role: RoleLoki, namespace: WorkloadNamespace,
			ksa:   manifests.LokiServiceAccountName(cluster),
			grant: bucketGrant{storage: c.Storage, bucket: cloud.BucketName(cluster, cloud.BucketLogs), step: "gcp/bucket-logs"}},
	}
	return append(steps, dnsSteps(c, cluster, cfg)...)
}

// apiRanges is gcp.api_authorized_ip_ranges; a config not made by config.Parse (which fills the default)
// may lack it, and means the default then.
func apiRanges(g *config.GCP) []string {
	if len(g.APIAuthorizedIPRanges) == 0 {
		return anyAddress
	}
	return g.APIAuthorizedIPRanges
}

// KubeAccess is what a kubeconfig for the GKE cluster needs.
type KubeAccess struct {
	Endpoint string // https://IP of the control plane
	CA       []byte
	// ServiceAccounts are the emails of the workloads' Google service accounts, by role.
	ServiceAccounts map[string]string
}

// Access reads the GKE cluster's endpoint and CA, and the workloads' service accounts.
func Access(ctx context.Context, c *Clients, cluster string) (KubeAccess, error) {
	gc, err := c.GKE.GetCluster(ctx, &containerpb.GetClusterRequest{Name: c.clusterPath(cluster)})
	if err != nil {
		return KubeAccess{}, classify("read GKE cluster "+cluster, "container.clusters.get", err)
	}
	if gc.GetResourceLabels()[cloud.OwnerLabel] != cluster {
		return KubeAccess{}, plan.NotOwnedError("GKE cluster "+cluster, "GKE cluster "+cluster, cloud.OwnerLabel+"="+cluster)
	}
	if gc.GetEndpoint() == "" {
		return KubeAccess{}, plan.Errorf(plan.NotFound, "read GKE cluster "+cluster, errors.New("it has no endpoint yet"))
	}
	a := KubeAccess{Endpoint: "https://" + gc.GetEndpoint(), ServiceAccounts: map[string]string{}}
	if a.CA, err = base64.StdEncoding.DecodeString(gc.GetMasterAuth().GetClusterCaCertificate()); err != nil {
		return KubeAccess{}, fmt.Errorf("GKE cluster %s: cluster CA certificate: %w", cluster, err)
	}
	for _, role := range []string{RoleCortex, RoleLoki} {
		a.ServiceAccounts[role] = ServiceAccountEmail(c.Project, cluster, role)
	}
	return a, nil
}

// Resource kinds, in the order the sweep deletes them.
const (
	kindCluster        = "gke:cluster"
	kindRouter         = "compute:router"
	kindSubnet         = "compute:subnetwork"
	kindNetwork        = "compute:network"
	kindServiceAccount = "iam:service-account"
	kindBucket         = "gcs:bucket"
)

// Find lists every resource labelled or marked for cluster (every cluster when cluster is ""), by cluster
// name: what `list gcp` shows and what destroy's sweep removes. DNS records are found by their ownership TXT
// in every public zone of the project. GKE clusters are found in every location
// of the project; routers and subnets in c.Region. Node pools are part of their cluster.
func Find(ctx context.Context, c *Clients, cluster string) (map[string][]cloud.Resource, error) {
	found := map[string][]cloud.Resource{}
	add := func(owner, kind, id string) {
		if owner != "" && (cluster == "" || owner == cluster) {
			found[owner] = append(found[owner], cloud.Resource{Kind: kind, ID: id})
		}
	}
	var errs []error
	// The gateway's DNS records first: they point at a load balancer that goes with the cluster. Credentials
	// that may not list DNS zones (or a project without the DNS API) made none: list and destroy go on.
	if err := findRecords(ctx, c, add); err != nil && plan.Classify(err) != plan.PermissionDenied {
		errs = append(errs, err)
	}
	// GKE next: the cluster uses the subnet, and its firewall rules keep the network in use.
	if out, err := c.GKE.ListClusters(ctx, &containerpb.ListClustersRequest{Parent: "projects/" + c.Project + "/locations/-"}); err != nil {
		errs = append(errs, classify("list GKE clusters", "container.clusters.list", err))
	} else {
		for _, gc := range out.GetClusters() {
			add(gc.GetResourceLabels()[cloud.OwnerLabel], kindCluster, gc.GetLocation()+"/"+gc.GetName())
		}
	}
	if rs, err := c.Compute.ListRouters(ctx, &computepb.ListRoutersRequest{Project: c.Project, Region: c.Region}); err != nil {
		errs = append(errs, classify("list routers", "compute.routers.list", err))
	} else {
		for _, r := range rs {
			add(markedOwner(r.GetDescription()), kindRouter, r.GetName())
		}
	}
	if sns, err := c.Compute.ListSubnetworks(ctx, &computepb.ListSubnetworksRequest{Project: c.Project, Region: c.Region}); err != nil {
		errs = append(errs, classify("list subnets", "compute.subnetworks.list", err))
	} else {
		for _, sn := range sns {
			add(markedOwner(sn.GetDescription()), kindSubnet, sn.GetName())
		}
	}
	if ns, err := c.Compute.ListNetworks(ctx, &computepb.ListNetworksRequest{Project: c.Project}); err != nil {
		errs = append(errs, classify("list networks", "compute.networks.list", err))
	} else {
		for _, n := range ns {
			add(markedOwner(n.GetDescription()), kindNetwork, n.GetName())
		}
	}
	if sas, err := c.IAM.ListServiceAccounts(ctx, &adminpb.ListServiceAccountsRequest{Name: "projects/" + c.Project}); err != nil {
		errs = append(errs, classify("list service accounts", "iam.serviceAccounts.list", err))
	} else {
		for _, sa := range sas {
			add(markedOwner(sa.GetDescription()), kindServiceAccount, sa.GetEmail())
		}
	}
	if bs, err := c.Storage.ListBuckets(ctx, c.Project, "opstrace-"); err != nil {
		errs = append(errs, classify("list buckets", "storage.buckets.list", err))
	} else {
		for _, b := range bs {
			add(b.Labels[cloud.OwnerLabel], kindBucket, b.Name)
		}
	}
	return found, errors.Join(errs...)
}

// Sweep deletes every resource still labelled or marked for cluster after destroy's steps, in the order
// Find lists them. With dryRun it deletes nothing and reports what it would remove as Removed.
func Sweep(ctx context.Context, c *Clients, cluster string, dryRun bool) (cloud.SweepReport, error) {
	found, err := Find(ctx, c, cluster)
	var rep cloud.SweepReport
	for _, r := range found[cluster] {
		if dryRun {
			rep.Removed = append(rep.Removed, r)
			continue
		}
		if derr := deleteResource(ctx, c, cluster, r); derr != nil {
			rep.Left = append(rep.Left, cloud.Left{Resource: r, Err: derr})
		} else {
			rep.Removed = append(rep.Removed, r)
		}
	}
	return rep, err
}

func deleteResource(ctx context.Context, c *Clients, cluster string, r cloud.Resource) error {
	switch r.Kind {
	case kindRecord:
		return deleteRecord(ctx, c, cluster, r.ID)
	case kindCluster:
		location, name, _ := strings.Cut(r.ID, "/")
		if location != c.Region {
			// A cluster of the same name elsewhere: its own region's clients delete it.
			cc := *c
			cc.Region = location
			return deleteGKECluster(ctx, &cc, name)
		}
		return deleteGKECluster(ctx, c, name)
	case kindRouter:
		return deleteRouter(ctx, c, r.ID)
	case kindSubnet:
		return deleteSubnet(ctx, c, r.ID)
	case kindNetwork:
		return deleteNetwork(ctx, c, r.ID)
	case kindServiceAccount:
		// The nodes' account holds project roles: removed first, so that the project keeps no binding of a
		// deleted account (the workloads' accounts hold none, and nothing is written for them).
		if err := removeFromProject(ctx, c, "serviceAccount:"+r.ID); err != nil {
			return err
		}
		return deleteServiceAccount(ctx, c, serviceAccountPath(c.Project, r.ID))
	case kindBucket:
		return deleteBucket(ctx, c.Storage, r.ID)
	}
	return fmt.Errorf("sweep does not know how to delete %s", r.Kind)
}
