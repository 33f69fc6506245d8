package aws

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/eks"
	ekstypes "github.com/aws/aws-sdk-go-v2/service/eks/types"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	iamtypes "github.com/aws/aws-sdk-go-v2/service/iam/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/config"
	"github.com/opstrace/opstrace/internal/installer/plan"
	"github.com/opstrace/opstrace/internal/manifests"
)

// WorkloadNamespace is the namespace of the MetricsCluster, whose service accounts the IRSA roles trust.
const WorkloadNamespace = cloud.Namespace

// CortexRoleName is the IRSA role of the Cortex pods, limited to the metrics bucket.
func CortexRoleName(cluster string) string { return cloud.ResourceName(cluster, "cortex") }

// LokiRoleName is the IRSA role of the Loki pods, limited to the logs bucket.
func LokiRoleName(cluster string) string { return cloud.ResourceName(cluster, "loki") }

// Steps are the AWS resources of cluster, for a parsed config (config.ProviderAWS). The EKS cluster is the
// critical path; buckets, roles and the network are made while it waits for its subnets.
func Steps(c *Clients, cluster string, cfg config.Config) []plan.Step {
	zones := make([]string, len(cfg.AWS.ZoneSuffixes))
	for i, z := range cfg.AWS.ZoneSuffixes {
		zones[i] = cfg.AWS.Region + z
	}
	steps := []plan.Step{
		&bucketStep{c: c, cluster: cluster, kind: cloud.BucketMetrics, days: cfg.MetricRetentionDays},
		&bucketStep{c: c, cluster: cluster, kind: cloud.BucketLogs, days: cfg.LogRetentionDays},
		&vpcStep{c: c, cluster: cluster},
		&subnetsStep{c: c, cluster: cluster, zones: zones},
		&natStep{c: c, cluster: cluster, zone: zones[0]},
		&loadBalancersStep{c: c, cluster: cluster},
		&routesStep{c: c, cluster: cluster, zones: zones},
		&roleStep{c: c, cluster: cluster, step: "aws/cluster-role", role: cloud.ResourceName(cluster, "eks-cluster"),
			managed: []string{awsPolicy + "AmazonEKSClusterPolicy"}, desired: staticTrust("eks.amazonaws.com")},
		&roleStep{c: c, cluster: cluster, step: "aws/node-role", role: cloud.ResourceName(cluster, "eks-node"),
			managed: []string{awsPolicy + "AmazonEKSWorkerNodePolicy", awsPolicy + "AmazonEKS_CNI_Policy",
				awsPolicy + "AmazonEC2ContainerRegistryReadOnly"}, desired: staticTrust("ec2.amazonaws.com")},
		&clusterStep{c: c, cluster: cluster, version: cfg.KubernetesVersion, zones: zones, authorized: apiRanges(cfg.AWS)},
		&nodeGroupStep{c: c, cluster: cluster, zones: zones, instanceType: cfg.AWS.InstanceType, nodes: int32(cfg.NodeCount)},
		&oidcStep{c: c, cluster: cluster},
		&accessStep{c: c, cluster: cluster, admins: cfg.AWS.EKSAdminRoles},
		ebsCSIRole(c, cluster),
		&addonStep{c: c, cluster: cluster, addon: EBSCSIAddon, role: EBSCSIRoleName(cluster), deps: []string{"aws/node-group", "aws/ebs-csi-role"}},
		workloadRole(c, cluster, "aws/cortex-role", CortexRoleName(cluster), WorkloadNamespace,
			manifests.CortexServiceAccountName(cluster), cloud.BucketName(cluster, cloud.BucketMetrics), "aws/bucket-metrics"),
		workloadRole(c, cluster, "aws/loki-role", LokiRoleName(cluster), WorkloadNamespace,
			manifests.LokiServiceAccountName(cluster), cloud.BucketName(cluster, cloud.BucketLogs), "aws/bucket-logs"),
	}
	return append(steps, dnsSteps(c, cluster, cfg)...)
}

// KubeAccess is what a client of the EKS cluster's API server needs.
type KubeAccess struct {
	Endpoint string
	CA       []byte
}

// Access reads the EKS cluster's endpoint and CA. An error of kind plan.NotFound means the cluster does not
// exist, or has no endpoint yet.
func Access(ctx context.Context, c *Clients, cluster string) (KubeAccess, error) {
	out, err := c.EKS.DescribeCluster(ctx, &eks.DescribeClusterInput{Name: &cluster})
	if err != nil {
		return KubeAccess{}, classify("read EKS cluster "+cluster, "eks:DescribeCluster", err)
	}
	if out.Cluster.Tags[cloud.OwnerTag] != cluster {
		return KubeAccess{}, plan.NotOwnedError("EKS cluster "+cluster, "EKS cluster "+cluster, cloud.OwnerTag+"="+cluster)
	}
	if out.Cluster.Status != ekstypes.ClusterStatusActive || aws.ToString(out.Cluster.Endpoint) == "" {
		return KubeAccess{}, plan.Errorf(plan.NotFound, "reach EKS cluster "+cluster, fmt.Errorf("it is %s, not ACTIVE", out.Cluster.Status))
	}
	a := KubeAccess{Endpoint: aws.ToString(out.Cluster.Endpoint)}
	if out.Cluster.CertificateAuthority != nil {
		if a.CA, err = base64.StdEncoding.DecodeString(aws.ToString(out.Cluster.CertificateAuthority.Data)); err != nil {
			return KubeAccess{}, fmt.Errorf("EKS cluster %s: certificate authority: %w", cluster, err)
		}
	}
	return a, nil
}

// WorkloadRoles returns the ARNs of the Cortex and Loki IRSA roles; an error of kind plan.NotFound while
// one does not exist yet.
func WorkloadRoles(ctx context.Context, c *Clients, cluster string) (cortex, loki string, err error) {
	if cortex, err = RoleARN(ctx, c, cluster, CortexRoleName(cluster)); err != nil {
		return "", "", err
	}
	loki, err = RoleARN(ctx, c, cluster, LokiRoleName(cluster))
	return cortex, loki, err
}

// RoleARN returns the ARN of the cluster's IAM role name (e.g. CertManagerRoleName); an error of kind
// plan.NotFound while it does not exist yet.
func RoleARN(ctx context.Context, c *Clients, cluster, name string) (string, error) {
	role, err := c.IAM.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(name)})
	if err != nil {
		return "", classify("read IAM role "+name, "iam:GetRole", err)
	}
	if !ownedBy(role.Role.Tags, cluster, func(t iamtypes.Tag) (string, string) { return aws.ToString(t.Key), aws.ToString(t.Value) }) {
		return "", plan.NotOwnedError("IAM role "+name, "IAM role "+name, cloud.OwnerTag+"="+cluster)
	}
	return aws.ToString(role.Role.Arn), nil
}

// Find lists every resource tagged for cluster (every cluster when cluster is ""), by cluster name: what
// `list aws` shows and what destroy's sweep removes.
func Find(ctx context.Context, c *Clients, cluster string) (map[string][]cloud.Resource, error) {
	found := map[string][]cloud.Resource{}
	add := func(owner, kind, id string) {
		if owner != "" && (cluster == "" || owner == cluster) {
			found[owner] = append(found[owner], cloud.Resource{Kind: kind, ID: id})
		}
	}
	filter := []ec2types.Filter{{Name: aws.String("tag-key"), Values: []string{cloud.OwnerTag}}}
	if cluster != "" {
		filter = []ec2types.Filter{ownerFilter(cluster)}
	}
	var errs []error
	// The gateway's DNS records first: they point at a load balancer that goes with the cluster. Credentials
	// that may not list DNS zones (or a project without the DNS API) made none: list and destroy go on.
	if err := findRecords(ctx, c.Route53, add); err != nil && plan.Classify(err) != plan.PermissionDenied {
		errs = append(errs, err)
	}
	// EKS next: an EKS cluster lives on its subnets, so the sweep deletes in this order.
	if list, err := c.EKS.ListClusters(ctx, &eks.ListClustersInput{}); err != nil {
		errs = append(errs, classify("list EKS clusters", "eks:ListClusters", err))
	} else {
		for _, name := range list.Clusters {
			out, err := c.EKS.DescribeCluster(ctx, &eks.DescribeClusterInput{Name: aws.String(name)})
			if err != nil {
				continue // deleted meanwhile, or not readable: not ours to report
			}
			owner := out.Cluster.Tags[cloud.OwnerTag]
			if ngs, err := c.EKS.ListNodegroups(ctx, &eks.ListNodegroupsInput{ClusterName: aws.String(name)}); err == nil && owner != "" {
				for _, ng := range ngs.Nodegroups {
					add(owner, "eks:nodegroup", name+"/"+ng)
				}
			}
			add(owner, "eks:cluster", name)
		}
	}
	// What Kubernetes left in the clusters' VPCs: after the EKS cluster, before the subnets.
	if leftovers, err := findKubernetesLeftovers(ctx, c, cluster); err != nil {
		errs = append(errs, err)
	} else {
		for _, owner := range sortedKeys(leftovers) {
			for _, name := range leftovers[owner].LoadBalancers {
				add(owner, kindLoadBalancer, name)
			}
			for _, id := range leftovers[owner].SecurityGroups {
				add(owner, kindSecurityGroup, id)
			}
		}
	}
	if out, err := c.EC2.DescribeNatGateways(ctx, &ec2.DescribeNatGatewaysInput{Filter: filter}); err != nil {
		errs = append(errs, classify("list NAT gateways", "ec2:DescribeNatGateways", err))
	} else {
		for _, n := range out.NatGateways {
			if n.State != ec2types.NatGatewayStateDeleted {
				add(tagValue(n.Tags, cloud.OwnerTag), "ec2:natgateway", aws.ToString(n.NatGatewayId))
			}
		}
	}
	if out, err := c.EC2.DescribeAddresses(ctx, &ec2.DescribeAddressesInput{Filters: filter}); err != nil {
		errs = append(errs, classify("list elastic IPs", "ec2:DescribeAddresses", err))
	} else {
		for _, a := range out.Addresses {
			add(tagValue(a.Tags, cloud.OwnerTag), "ec2:elastic-ip", aws.ToString(a.AllocationId))
		}
	}
	if out, err := c.EC2.DescribeRouteTables(ctx, &ec2.DescribeRouteTablesInput{Filters: filter}); err != nil {
		errs = append(errs, classify("list route tables", "ec2:DescribeRouteTables", err))
	} else {
		for _, rt := range out.RouteTables {
			add(tagValue(rt.Tags, cloud.OwnerTag), "ec2:route-table", aws.ToString(rt.RouteTableId))
		}
	}
	if out, err := c.EC2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{Filters: filter}); err != nil {
		errs = append(errs, classify("list subnets", "ec2:DescribeSubnets", err))
	} else {
		for _, sn := range out.Subnets {
			add(tagValue(sn.Tags, cloud.OwnerTag), "ec2:subnet", aws.ToString(sn.SubnetId))
		}
	}
	if out, err := c.EC2.DescribeInternetGateways(ctx, &ec2.DescribeInternetGatewaysInput{Filters: filter}); err != nil {
		errs = append(errs, classify("list internet gateways", "ec2:DescribeInternetGateways", err))
	} else {
		for _, g := range out.InternetGateways {
			add(tagValue(g.Tags, cloud.OwnerTag), "ec2:internet-gateway", aws.ToString(g.InternetGatewayId))
		}
	}
	if out, err := c.EC2.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{Filters: filter}); err != nil {
		errs = append(errs, classify("list VPCs", "ec2:DescribeVpcs", err))
	} else {
		for _, v := range out.Vpcs {
			add(tagValue(v.Tags, cloud.OwnerTag), "ec2:vpc", aws.ToString(v.VpcId))
		}
	}
	if out, err := c.IAM.ListRoles(ctx, &iam.ListRolesInput{PathPrefix: aws.String(rolePath)}); err != nil {
		errs = append(errs, classify("list IAM roles", "iam:ListRoles", err))
	} else {
		for _, r := range out.Roles {
			role, err := c.IAM.GetRole(ctx, &iam.GetRoleInput{RoleName: r.RoleName})
			if err == nil {
				add(iamOwner(role.Role.Tags), "iam:role", aws.ToString(r.RoleName))
			}
		}
	}
	if out, err := c.IAM.ListOpenIDConnectProviders(ctx, &iam.ListOpenIDConnectProvidersInput{}); err != nil {
		errs = append(errs, classify("list IAM OIDC providers", "iam:ListOpenIDConnectProviders", err))
	} else {
		for _, p := range out.OpenIDConnectProviderList {
			if got, err := c.IAM.GetOpenIDConnectProvider(ctx, &iam.GetOpenIDConnectProviderInput{OpenIDConnectProviderArn: p.Arn}); err == nil {
				add(iamOwner(got.Tags), "iam:oidc-provider", aws.ToString(p.Arn))
			}
		}
	}
	if out, err := c.S3.ListBuckets(ctx, &s3.ListBucketsInput{Prefix: aws.String("opstrace-")}); err != nil {
		errs = append(errs, classify("list S3 buckets", "s3:ListAllMyBuckets", err))
	} else {
		for _, b := range out.Buckets {
			if tags, err := c.S3.GetBucketTagging(ctx, &s3.GetBucketTaggingInput{Bucket: b.Name}); err == nil {
				for _, t := range tags.TagSet {
					if aws.ToString(t.Key) == cloud.OwnerTag {
						add(aws.ToString(t.Value), "s3:bucket", aws.ToString(b.Name))
					}
				}
			}
		}
	}
	return found, errors.Join(errs...)
}

func iamOwner(tags []iamtypes.Tag) string {
	for _, t := range tags {
		if aws.ToString(t.Key) == cloud.OwnerTag {
			return aws.ToString(t.Value)
		}
	}
	return ""
}

// Sweep deletes every resource still tagged for cluster after destroy's steps, in the order Find lists them
// (DNS records, node groups, clusters, Kubernetes' load balancers and their security groups, NAT gateways, addresses, route tables, subnets, gateways, VPCs, roles, providers,
// buckets). With dryRun it deletes nothing and reports what it would remove as Removed.
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
	id := r.ID
	var err error
	switch r.Kind {
	case kindRecord:
		return deleteRecord(ctx, c.Route53, cluster, id)
	case kindLoadBalancer:
		return deleteLoadBalancer(ctx, c, id)
	case kindSecurityGroup:
		return deleteSecurityGroup(ctx, c, id)
	case "eks:nodegroup":
		cluster, ng, _ := strings.Cut(id, "/")
		return deleteNodeGroup(ctx, c, cluster, ng)
	case "eks:cluster":
		return deleteEKSCluster(ctx, c, id)
	case "ec2:natgateway":
		return (&natStep{c: c}).delete(ctx, natState{NAT: id})
	case "ec2:elastic-ip":
		_, err = c.EC2.ReleaseAddress(ctx, &ec2.ReleaseAddressInput{AllocationId: &id})
	case "ec2:route-table":
		out, derr := c.EC2.DescribeRouteTables(ctx, &ec2.DescribeRouteTablesInput{RouteTableIds: []string{id}})
		if derr == nil {
			for _, rt := range out.RouteTables {
				for _, a := range rt.Associations {
					if a.SubnetId != nil {
						_, _ = c.EC2.DisassociateRouteTable(ctx, &ec2.DisassociateRouteTableInput{AssociationId: a.RouteTableAssociationId})
					}
				}
			}
		}
		_, err = c.EC2.DeleteRouteTable(ctx, &ec2.DeleteRouteTableInput{RouteTableId: &id})
	case "ec2:subnet":
		_, err = c.EC2.DeleteSubnet(ctx, &ec2.DeleteSubnetInput{SubnetId: &id})
	case "ec2:internet-gateway":
		out, derr := c.EC2.DescribeInternetGateways(ctx, &ec2.DescribeInternetGatewaysInput{InternetGatewayIds: []string{id}})
		if derr == nil {
			for _, g := range out.InternetGateways {
				for _, a := range g.Attachments {
					_, _ = c.EC2.DetachInternetGateway(ctx, &ec2.DetachInternetGatewayInput{InternetGatewayId: &id, VpcId: a.VpcId})
				}
			}
		}
		_, err = c.EC2.DeleteInternetGateway(ctx, &ec2.DeleteInternetGatewayInput{InternetGatewayId: &id})
	case "ec2:vpc":
		_, err = c.EC2.DeleteVpc(ctx, &ec2.DeleteVpcInput{VpcId: &id})
	case "iam:role":
		return deleteRole(ctx, c.IAM, id)
	case "iam:oidc-provider":
		_, err = c.IAM.DeleteOpenIDConnectProvider(ctx, &iam.DeleteOpenIDConnectProviderInput{OpenIDConnectProviderArn: &id})
	case "s3:bucket":
		return deleteBucket(ctx, c.S3, id)
	default:
		return fmt.Errorf("sweep does not know how to delete %s", r.Kind)
	}
	if err != nil && !isNotFound(err) {
		return classify("delete "+r.String(), "", err)
	}
	return nil
}

// apiRanges is aws.api_authorized_ip_ranges; a config not made by config.Parse (which fills the default)
// may lack it, and means the default then.
func apiRanges(a *config.AWS) []string {
	if len(a.APIAuthorizedIPRanges) == 0 {
		return []string{config.DefaultAuthorizedIPRange}
	}
	return a.APIAuthorizedIPRanges
}
