package aws

import (
	"context"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/eks"
	ekstypes "github.com/aws/aws-sdk-go-v2/service/eks/types"
	"github.com/aws/aws-sdk-go-v2/service/iam"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

// The Amazon EBS CSI driver provisions the volumes of the ingesters, store-gateways, compactor and Loki:
// since Kubernetes 1.23 EKS provisions no EBS volume without it. It runs as the EKS add-on, whose
// controller assumes its own IRSA role.
const (
	EBSCSIAddon          = "aws-ebs-csi-driver"
	ebsCSIServiceAccount = "ebs-csi-controller-sa"
	ebsCSIPolicy         = "arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"
)

// EBSCSIRoleName is the IRSA role of the EBS CSI driver's controller.
func EBSCSIRoleName(cluster string) string { return cloud.ResourceName(cluster, "ebs-csi") }

func ebsCSIRole(c *Clients, cluster string) *roleStep {
	return &roleStep{c: c, cluster: cluster, step: "aws/ebs-csi-role", role: EBSCSIRoleName(cluster),
		managed: []string{ebsCSIPolicy}, deps: []string{"aws/oidc-provider"},
		desired: irsaTrust(c, cluster, "kube-system", ebsCSIServiceAccount, "")}
}

// addonStep is an EKS add-on with its own IRSA role, tagged; it is deleted with the EKS cluster.
type addonStep struct {
	c       *Clients
	cluster string
	addon   string
	role    string // the IRSA role name
	deps    []string
}

type addonState struct {
	Status  string
	RoleARN string // for the create: the role's ARN, once it exists
}

func (s *addonStep) Name() string        { return "aws/addon-" + s.addon }
func (s *addonStep) DependsOn() []string { return s.deps }

func (s *addonStep) Observe(ctx context.Context) (plan.Observation, error) {
	out, err := s.c.EKS.DescribeAddon(ctx, &eks.DescribeAddonInput{ClusterName: &s.cluster, AddonName: &s.addon})
	switch {
	case isNotFound(err):
	case err != nil:
		return plan.Observation{}, classify("find EKS add-on "+s.addon, "eks:DescribeAddon", err)
	default:
		if out.Addon.Tags[cloud.OwnerTag] != s.cluster {
			return plan.Observation{}, plan.NotOwnedError("EKS add-on "+s.addon, "EKS add-on "+s.addon+" of cluster "+s.cluster, cloud.OwnerTag+"="+s.cluster)
		}
		return plan.Observation{Exists: true, ID: aws.ToString(out.Addon.AddonArn), Detail: addonState{Status: string(out.Addon.Status)}}, nil
	}
	var st addonState
	role, err := s.c.IAM.GetRole(ctx, &iam.GetRoleInput{RoleName: &s.role})
	if err != nil && !isNotFound(err) {
		return plan.Observation{}, classify("find IAM role "+s.role, "iam:GetRole", err)
	}
	if err == nil {
		st.RoleARN = aws.ToString(role.Role.Arn)
	}
	return plan.Observation{Detail: st}, nil
}

func (s *addonStep) Plan(obs plan.Observation) plan.Change {
	st := obs.Detail.(addonState)
	switch {
	case !obs.Exists:
		return plan.Change{Action: plan.Create, Desired: st, Diff: []string{"EKS add-on " + s.addon + " with IAM role " + s.role}}
	case st.Status != string(ekstypes.AddonStatusActive):
		return plan.Change{Action: plan.Update, Desired: st, Diff: []string{"EKS add-on " + s.addon + ": wait until ACTIVE (now " + st.Status + ")"}}
	}
	return plan.NoChange()
}

func (s *addonStep) Apply(ctx context.Context, c plan.Change) error {
	st := c.Desired.(addonState)
	if c.Action == plan.Create {
		if st.RoleARN == "" {
			return plan.Errorf(plan.NotFound, "create EKS add-on "+s.addon, fmt.Errorf("IAM role %s is not there yet", s.role))
		}
		_, err := s.c.EKS.CreateAddon(ctx, &eks.CreateAddonInput{ClusterName: &s.cluster, AddonName: &s.addon,
			ServiceAccountRoleArn: &st.RoleARN, ResolveConflicts: ekstypes.ResolveConflictsOverwrite,
			Tags: map[string]string{cloud.OwnerTag: s.cluster}})
		if err != nil {
			return classify("create EKS add-on "+s.addon, "eks:CreateAddon", err)
		}
	}
	return wait(ctx, s.c.poll(), "EKS add-on "+s.addon+" to be ACTIVE", func() (bool, error) {
		out, err := s.c.EKS.DescribeAddon(ctx, &eks.DescribeAddonInput{ClusterName: &s.cluster, AddonName: &s.addon})
		if err != nil {
			return false, classify("read EKS add-on "+s.addon, "eks:DescribeAddon", err)
		}
		switch out.Addon.Status {
		case ekstypes.AddonStatusActive:
			return true, nil
		case ekstypes.AddonStatusCreateFailed, ekstypes.AddonStatusDegraded:
			var issues []string
			if out.Addon.Health != nil {
				for _, i := range out.Addon.Health.Issues {
					issues = append(issues, string(i.Code)+": "+aws.ToString(i.Message))
				}
			}
			return false, fmt.Errorf("EKS add-on %s is %s: %v", s.addon, out.Addon.Status, issues)
		}
		return false, nil
	})
}

// PlanDestroy leaves the add-on to the deletion of the EKS cluster, which removes it.
func (s *addonStep) PlanDestroy(plan.Observation) plan.Change { return plan.NoChange() }
