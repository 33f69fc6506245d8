// Package gcp creates, finds and deletes the Google Cloud resources of an Opstrace cluster: GCS buckets,
// the VPC network and its subnet, a Cloud Router with Cloud NAT, the GKE cluster and its node pool, and
// the IAM service accounts of the nodes and of the workloads (workload identity), and the gateway's DNS name
// in Cloud DNS.
// Each resource is a plan.Step; see Steps.
//
// The steps call Google Cloud through the narrow interfaces below, which list only the calls they use.
// Where the SDK method is plain request → response (GKE, IAM) the interface has the SDK's own signature,
// so the real client satisfies it. Where the SDK returns an iterator or a long-running operation handle
// that tests cannot construct (compute, storage), the interface returns a slice or waits for the
// operation, and a thin adapter (realCompute, realStorage, realIAM) makes the SDK calls. Tests substitute
// fake-gcs-server for GCS and in-memory fakes for the APIs that cannot run offline (compute, GKE, IAM,
// Cloud DNS).
//
// # Ownership
//
// Buckets and GKE clusters and node pools carry the label cloud.OwnerLabel=CLUSTER. Compute networks,
// subnetworks and routers, and IAM service accounts, have no labels: they carry the same mark in their
// description (see ownerMark). A resource with the expected name but without the mark is someone else's
// and is never changed or deleted.
package gcp

import (
	"context"
	"errors"
	"fmt"
	"time"

	compute "cloud.google.com/go/compute/apiv1"
	"cloud.google.com/go/compute/apiv1/computepb"
	container "cloud.google.com/go/container/apiv1"
	"cloud.google.com/go/container/apiv1/containerpb"
	"cloud.google.com/go/iam"
	admin "cloud.google.com/go/iam/admin/apiv1"
	"cloud.google.com/go/iam/admin/apiv1/adminpb"
	"cloud.google.com/go/iam/apiv1/iampb"
	"cloud.google.com/go/storage"
	gax "github.com/googleapis/gax-go/v2"
	"golang.org/x/oauth2/google"
	crm "google.golang.org/api/cloudresourcemanager/v3"
	dns "google.golang.org/api/dns/v1"
	"google.golang.org/api/iterator"

	"github.com/opstrace/opstrace/internal/installer/cloud"
)

// StorageAPI is what the bucket steps do with GCS (adapter: realStorage over *storage.Client).
type StorageAPI interface {
	// Bucket returns the bucket's attributes; storage.ErrBucketNotExist when there is none.
	Bucket(ctx context.Context, name string) (*storage.BucketAttrs, error)
	CreateBucket(ctx context.Context, project string, attrs *storage.BucketAttrs) error
	UpdateBucket(ctx context.Context, name string, update storage.BucketAttrsToUpdate) error
	DeleteBucket(ctx context.Context, name string) error
	// ListBuckets lists the project's buckets whose names start with prefix.
	ListBuckets(ctx context.Context, project, prefix string) ([]*storage.BucketAttrs, error)
	// ListObjects lists up to max object names of the bucket.
	ListObjects(ctx context.Context, bucket string, max int) ([]string, error)
	DeleteObject(ctx context.Context, bucket, object string) error
	BucketPolicy(ctx context.Context, bucket string) (*iampb.Policy, error)
	SetBucketPolicy(ctx context.Context, bucket string, policy *iampb.Policy) error
}

// ComputeAPI is what the network steps do with Compute Engine (adapter: realCompute). Insert, Patch and
// Delete return when the operation is done.
type ComputeAPI interface {
	GetNetwork(ctx context.Context, req *computepb.GetNetworkRequest) (*computepb.Network, error)
	InsertNetwork(ctx context.Context, req *computepb.InsertNetworkRequest) error
	DeleteNetwork(ctx context.Context, req *computepb.DeleteNetworkRequest) error
	ListNetworks(ctx context.Context, req *computepb.ListNetworksRequest) ([]*computepb.Network, error)

	GetSubnetwork(ctx context.Context, req *computepb.GetSubnetworkRequest) (*computepb.Subnetwork, error)
	InsertSubnetwork(ctx context.Context, req *computepb.InsertSubnetworkRequest) error
	DeleteSubnetwork(ctx context.Context, req *computepb.DeleteSubnetworkRequest) error
	ListSubnetworks(ctx context.Context, req *computepb.ListSubnetworksRequest) ([]*computepb.Subnetwork, error)

	GetRouter(ctx context.Context, req *computepb.GetRouterRequest) (*computepb.Router, error)
	InsertRouter(ctx context.Context, req *computepb.InsertRouterRequest) error
	PatchRouter(ctx context.Context, req *computepb.PatchRouterRequest) error
	DeleteRouter(ctx context.Context, req *computepb.DeleteRouterRequest) error
	ListRouters(ctx context.Context, req *computepb.ListRoutersRequest) ([]*computepb.Router, error)
}

// GKEAPI is the part of *container.ClusterManagerClient the cluster steps use.
type GKEAPI interface {
	GetCluster(context.Context, *containerpb.GetClusterRequest, ...gax.CallOption) (*containerpb.Cluster, error)
	CreateCluster(context.Context, *containerpb.CreateClusterRequest, ...gax.CallOption) (*containerpb.Operation, error)
	DeleteCluster(context.Context, *containerpb.DeleteClusterRequest, ...gax.CallOption) (*containerpb.Operation, error)
	ListClusters(context.Context, *containerpb.ListClustersRequest, ...gax.CallOption) (*containerpb.ListClustersResponse, error)
	UpdateCluster(context.Context, *containerpb.UpdateClusterRequest, ...gax.CallOption) (*containerpb.Operation, error)
	GetNodePool(context.Context, *containerpb.GetNodePoolRequest, ...gax.CallOption) (*containerpb.NodePool, error)
	CreateNodePool(context.Context, *containerpb.CreateNodePoolRequest, ...gax.CallOption) (*containerpb.Operation, error)
	SetNodePoolSize(context.Context, *containerpb.SetNodePoolSizeRequest, ...gax.CallOption) (*containerpb.Operation, error)
	SetNodePoolAutoscaling(context.Context, *containerpb.SetNodePoolAutoscalingRequest, ...gax.CallOption) (*containerpb.Operation, error)
}

// IAMAPI is the part of *admin.IamClient the service account steps use; ListServiceAccounts returns a
// slice (adapter: realIAM).
type IAMAPI interface {
	GetServiceAccount(context.Context, *adminpb.GetServiceAccountRequest, ...gax.CallOption) (*adminpb.ServiceAccount, error)
	CreateServiceAccount(context.Context, *adminpb.CreateServiceAccountRequest, ...gax.CallOption) (*adminpb.ServiceAccount, error)
	DeleteServiceAccount(context.Context, *adminpb.DeleteServiceAccountRequest, ...gax.CallOption) error
	GetIamPolicy(context.Context, *iampb.GetIamPolicyRequest) (*iam.Policy, error)
	SetIamPolicy(context.Context, *admin.SetIamPolicyRequest) (*iam.Policy, error)
	ListServiceAccounts(ctx context.Context, req *adminpb.ListServiceAccountsRequest) ([]*adminpb.ServiceAccount, error)
}

// ProjectIAMAPI reads and writes the project's IAM policy (adapter: realProjects over the Resource Manager
// v3 service): the node service account's roles exist only at project level. ProjectPolicy asks for policy
// version 3, so that conditional bindings are read whole and written back; SetProjectPolicy writes the
// bindings and the etag only (the API's default update mask), never the audit configs.
type ProjectIAMAPI interface {
	ProjectPolicy(ctx context.Context, project string) (*crm.Policy, error)
	SetProjectPolicy(ctx context.Context, project string, policy *crm.Policy) error
}

// DNSAPI is what the DNS steps do with Cloud DNS (adapter: realDNS over the google.golang.org/api/dns/v1
// service, whose calls are builders): lists are collected over their pages, CreateChange returns once Cloud
// DNS accepted the change.
type DNSAPI interface {
	GetManagedZone(ctx context.Context, project, zone string) (*dns.ManagedZone, error)
	// ListManagedZones lists the project's zones for dnsName (with the trailing dot), every zone for "".
	ListManagedZones(ctx context.Context, project, dnsName string) ([]*dns.ManagedZone, error)
	// ListRecordSets lists a zone's record sets named name (with the trailing dot) of type rrType; "" for
	// any name or type (a type needs a name).
	ListRecordSets(ctx context.Context, project, zone, name, rrType string) ([]*dns.ResourceRecordSet, error)
	CreateChange(ctx context.Context, project, zone string, change *dns.Change) error
	ZonePolicy(ctx context.Context, project, zone string) (*dns.GoogleIamV1Policy, error)
	SetZonePolicy(ctx context.Context, project, zone string, policy *dns.GoogleIamV1Policy) error
}

// Clients are the Google Cloud APIs for one project and region.
type Clients struct {
	Project string
	Region  string
	Storage StorageAPI
	Compute ComputeAPI
	GKE     GKEAPI
	IAM     IAMAPI
	// Projects holds the project-level roles of the node service account.
	Projects ProjectIAMAPI
	// DNS holds the gateway's DNS name (config key dns).
	DNS DNSAPI
	// PollInterval is how often a step polls a GKE cluster or node pool that is becoming ready or going
	// away; 15 seconds when zero.
	PollInterval time.Duration
	// Token returns an OAuth2 access token of the credentials (cloud-platform scope): what the installer
	// authenticates to the GKE API server with, as a bearer token, so it needs no gcloud or auth plugin.
	Token func(ctx context.Context) (string, error)
	// Close releases the real clients' connections; nil for fakes.
	Close func() error
}

func (c *Clients) poll() time.Duration {
	if c.PollInterval > 0 {
		return c.PollInterval
	}
	return 15 * time.Second
}

// NewClients builds the real clients from Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS,
// `gcloud auth application-default login`, or the metadata server of a GCE VM or Cloud Shell.
func NewClients(ctx context.Context, project, region string) (*Clients, error) {
	const hint = "load Google Cloud credentials (GOOGLE_APPLICATION_CREDENTIALS, or run `gcloud auth application-default login`)"
	var closers []func() error
	fail := func(err error) (*Clients, error) {
		for _, c := range closers {
			_ = c()
		}
		return nil, fmt.Errorf("%s: %w", hint, err)
	}
	st, err := storage.NewClient(ctx)
	if err != nil {
		return fail(err)
	}
	closers = append(closers, st.Close)
	networks, err := compute.NewNetworksRESTClient(ctx)
	if err != nil {
		return fail(err)
	}
	closers = append(closers, networks.Close)
	subnets, err := compute.NewSubnetworksRESTClient(ctx)
	if err != nil {
		return fail(err)
	}
	closers = append(closers, subnets.Close)
	routers, err := compute.NewRoutersRESTClient(ctx)
	if err != nil {
		return fail(err)
	}
	closers = append(closers, routers.Close)
	gke, err := container.NewClusterManagerClient(ctx)
	if err != nil {
		return fail(err)
	}
	closers = append(closers, gke.Close)
	iamc, err := admin.NewIamClient(ctx)
	if err != nil {
		return fail(err)
	}
	closers = append(closers, iamc.Close)
	dnsService, err := dns.NewService(ctx)
	if err != nil {
		return fail(err)
	}
	projects, err := crm.NewService(ctx)
	if err != nil {
		return fail(err)
	}
	tokens, err := google.DefaultTokenSource(ctx, cloudPlatformScope)
	if err != nil {
		return fail(err)
	}
	return &Clients{
		Project: project, Region: region,
		Token: func(context.Context) (string, error) {
			t, err := tokens.Token() // cached until shortly before it expires
			if err != nil {
				return "", fmt.Errorf("%s: %w", hint, err)
			}
			return t.AccessToken, nil
		},
		Storage:  realStorage{st},
		Compute:  realCompute{networks: networks, subnets: subnets, routers: routers},
		GKE:      gke,
		IAM:      realIAM{iamc},
		DNS:      realDNS{dnsService},
		Projects: realProjects{projects},
		Close: func() error {
			var errs []error
			for _, c := range closers {
				errs = append(errs, c())
			}
			return errors.Join(errs...)
		},
	}, nil
}

const cloudPlatformScope = "https://www.googleapis.com/auth/cloud-platform"

// realStorage is StorageAPI over the GCS client.
type realStorage struct{ c *storage.Client }

// NewStorage wraps a GCS client, e.g. one pointed at an emulator.
func NewStorage(c *storage.Client) StorageAPI { return realStorage{c} }

func (r realStorage) Bucket(ctx context.Context, name string) (*storage.BucketAttrs, error) {
	return r.c.Bucket(name).Attrs(ctx)
}

func (r realStorage) CreateBucket(ctx context.Context, project string, attrs *storage.BucketAttrs) error {
	return r.c.Bucket(attrs.Name).Create(ctx, project, attrs)
}

func (r realStorage) UpdateBucket(ctx context.Context, name string, u storage.BucketAttrsToUpdate) error {
	_, err := r.c.Bucket(name).Update(ctx, u)
	return err
}

func (r realStorage) DeleteBucket(ctx context.Context, name string) error {
	return r.c.Bucket(name).Delete(ctx)
}

func (r realStorage) ListBuckets(ctx context.Context, project, prefix string) ([]*storage.BucketAttrs, error) {
	it := r.c.Buckets(ctx, project)
	it.Prefix = prefix
	var out []*storage.BucketAttrs
	for {
		b, err := it.Next()
		if errors.Is(err, iterator.Done) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
}

func (r realStorage) ListObjects(ctx context.Context, bucket string, max int) ([]string, error) {
	it := r.c.Bucket(bucket).Objects(ctx, nil)
	var out []string
	for len(out) < max {
		o, err := it.Next()
		if errors.Is(err, iterator.Done) {
			break
		}
		if err != nil {
			return nil, err
		}
		out = append(out, o.Name)
	}
	return out, nil
}

func (r realStorage) DeleteObject(ctx context.Context, bucket, object string) error {
	return r.c.Bucket(bucket).Object(object).Delete(ctx)
}

func (r realStorage) BucketPolicy(ctx context.Context, bucket string) (*iampb.Policy, error) {
	p, err := r.c.Bucket(bucket).IAM().Policy(ctx)
	if err != nil {
		return nil, err
	}
	return p.InternalProto, nil
}

func (r realStorage) SetBucketPolicy(ctx context.Context, bucket string, p *iampb.Policy) error {
	return r.c.Bucket(bucket).IAM().SetPolicy(ctx, &iam.Policy{InternalProto: p})
}

// realCompute is ComputeAPI over the compute REST clients; mutations wait for their operation.
type realCompute struct {
	networks *compute.NetworksClient
	subnets  *compute.SubnetworksClient
	routers  *compute.RoutersClient
}

func waitOp(ctx context.Context, op *compute.Operation, err error) error {
	if err != nil {
		return err
	}
	return op.Wait(ctx)
}

func collect[T any](next func() (T, error)) ([]T, error) {
	var out []T
	for {
		v, err := next()
		if errors.Is(err, iterator.Done) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
}

func (r realCompute) GetNetwork(ctx context.Context, req *computepb.GetNetworkRequest) (*computepb.Network, error) {
	return r.networks.Get(ctx, req)
}
func (r realCompute) InsertNetwork(ctx context.Context, req *computepb.InsertNetworkRequest) error {
	op, err := r.networks.Insert(ctx, req)
	return waitOp(ctx, op, err)
}
func (r realCompute) DeleteNetwork(ctx context.Context, req *computepb.DeleteNetworkRequest) error {
	op, err := r.networks.Delete(ctx, req)
	return waitOp(ctx, op, err)
}
func (r realCompute) ListNetworks(ctx context.Context, req *computepb.ListNetworksRequest) ([]*computepb.Network, error) {
	return collect(r.networks.List(ctx, req).Next)
}
func (r realCompute) GetSubnetwork(ctx context.Context, req *computepb.GetSubnetworkRequest) (*computepb.Subnetwork, error) {
	return r.subnets.Get(ctx, req)
}
func (r realCompute) InsertSubnetwork(ctx context.Context, req *computepb.InsertSubnetworkRequest) error {
	op, err := r.subnets.Insert(ctx, req)
	return waitOp(ctx, op, err)
}
func (r realCompute) DeleteSubnetwork(ctx context.Context, req *computepb.DeleteSubnetworkRequest) error {
	op, err := r.subnets.Delete(ctx, req)
	return waitOp(ctx, op, err)
}
func (r realCompute) ListSubnetworks(ctx context.Context, req *computepb.ListSubnetworksRequest) ([]*computepb.Subnetwork, error) {
	return collect(r.subnets.List(ctx, req).Next)
}
func (r realCompute) GetRouter(ctx context.Context, req *computepb.GetRouterRequest) (*computepb.Router, error) {
	return r.routers.Get(ctx, req)
}
func (r realCompute) InsertRouter(ctx context.Context, req *computepb.InsertRouterRequest) error {
	op, err := r.routers.Insert(ctx, req)
	return waitOp(ctx, op, err)
}
func (r realCompute) PatchRouter(ctx context.Context, req *computepb.PatchRouterRequest) error {
	op, err := r.routers.Patch(ctx, req)
	return waitOp(ctx, op, err)
}
func (r realCompute) DeleteRouter(ctx context.Context, req *computepb.DeleteRouterRequest) error {
	op, err := r.routers.Delete(ctx, req)
	return waitOp(ctx, op, err)
}
func (r realCompute) ListRouters(ctx context.Context, req *computepb.ListRoutersRequest) ([]*computepb.Router, error) {
	return collect(r.routers.List(ctx, req).Next)
}

// realIAM is IAMAPI over the IAM admin client.
type realIAM struct{ *admin.IamClient }

func (r realIAM) ListServiceAccounts(ctx context.Context, req *adminpb.ListServiceAccountsRequest) ([]*adminpb.ServiceAccount, error) {
	return collect(r.IamClient.ListServiceAccounts(ctx, req).Next)
}

// realDNS is DNSAPI over the Cloud DNS service.
type realDNS struct{ s *dns.Service }

func (r realDNS) GetManagedZone(ctx context.Context, project, zone string) (*dns.ManagedZone, error) {
	return r.s.ManagedZones.Get(project, zone).Context(ctx).Do()
}

func (r realDNS) ListManagedZones(ctx context.Context, project, dnsName string) ([]*dns.ManagedZone, error) {
	call := r.s.ManagedZones.List(project)
	if dnsName != "" {
		call = call.DnsName(dnsName)
	}
	var out []*dns.ManagedZone
	err := call.Pages(ctx, func(page *dns.ManagedZonesListResponse) error {
		out = append(out, page.ManagedZones...)
		return nil
	})
	return out, err
}

func (r realDNS) ListRecordSets(ctx context.Context, project, zone, name, rrType string) ([]*dns.ResourceRecordSet, error) {
	call := r.s.ResourceRecordSets.List(project, zone)
	if name != "" {
		call = call.Name(name)
	}
	if rrType != "" {
		call = call.Type(rrType)
	}
	var out []*dns.ResourceRecordSet
	err := call.Pages(ctx, func(page *dns.ResourceRecordSetsListResponse) error {
		out = append(out, page.Rrsets...)
		return nil
	})
	return out, err
}

func (r realDNS) CreateChange(ctx context.Context, project, zone string, change *dns.Change) error {
	_, err := r.s.Changes.Create(project, zone, change).Context(ctx).Do()
	return err
}

// ZonePolicy asks for policy version 3, so that conditional bindings are read whole and written back.
func (r realDNS) ZonePolicy(ctx context.Context, project, zone string) (*dns.GoogleIamV1Policy, error) {
	return r.s.ManagedZones.GetIamPolicy(zoneResource(project, zone), &dns.GoogleIamV1GetIamPolicyRequest{
		Options: &dns.GoogleIamV1GetPolicyOptions{RequestedPolicyVersion: 3}}).Context(ctx).Do()
}

func (r realDNS) SetZonePolicy(ctx context.Context, project, zone string, policy *dns.GoogleIamV1Policy) error {
	_, err := r.s.ManagedZones.SetIamPolicy(zoneResource(project, zone), &dns.GoogleIamV1SetIamPolicyRequest{Policy: policy}).Context(ctx).Do()
	return err
}

// realProjects is ProjectIAMAPI over the Resource Manager service.
type realProjects struct{ s *crm.Service }

func (r realProjects) ProjectPolicy(ctx context.Context, project string) (*crm.Policy, error) {
	return r.s.Projects.GetIamPolicy("projects/"+project, &crm.GetIamPolicyRequest{
		Options: &crm.GetPolicyOptions{RequestedPolicyVersion: 3}}).Context(ctx).Do()
}

func (r realProjects) SetProjectPolicy(ctx context.Context, project string, policy *crm.Policy) error {
	_, err := r.s.Projects.SetIamPolicy("projects/"+project, &crm.SetIamPolicyRequest{Policy: policy}).Context(ctx).Do()
	return err
}

// ownerMark is the description of the resources that have no labels (networks, subnetworks, routers,
// service accounts): it marks them as the cluster's.
func ownerMark(cluster string) string { return cloud.OwnerLabel + "=" + cluster }

// ownerLabels are the labels of the resources that have labels.
func ownerLabels(cluster string) map[string]string {
	return map[string]string{cloud.OwnerLabel: cluster}
}

// markedOwner returns the cluster a description marks, "" for none.
func markedOwner(description string) string {
	const prefix = cloud.OwnerLabel + "="
	if len(description) > len(prefix) && description[:len(prefix)] == prefix {
		return description[len(prefix):]
	}
	return ""
}

// wait polls done every interval until it reports true, fails, or ctx ends.
func wait(ctx context.Context, interval time.Duration, what string, done func() (bool, error)) error {
	for {
		ok, err := done()
		if err != nil || ok {
			return err
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
}
