package aws

import (
	"context"
	"slices"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/eks"
	ekstypes "github.com/aws/aws-sdk-go-v2/service/eks/types"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

// ClusterAdminPolicy is the EKS access policy that eks_admin_roles get, for the whole cluster.
const ClusterAdminPolicy = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"

// accessStep grants cluster-admin on the EKS cluster to the IAM roles of eks_admin_roles, with EKS access
// entries (no aws-auth ConfigMap). Entries it made carry the owned tag; a role removed from eks_admin_roles
// loses its entry. An entry the installer did not make (such as the one EKS makes for the cluster's creator)
// is never changed: when it lacks the policy, the error says how to fix it.
type accessStep struct {
	c       *Clients
	cluster string
	admins  []string
}

type accessEntry struct {
	Owned, Admin bool
}

type accessState struct {
	Entries map[string]accessEntry // by principal ARN
}

func (s *accessStep) Name() string        { return "aws/eks-access" }
func (s *accessStep) DependsOn() []string { return []string{"aws/eks-cluster"} }

func (s *accessStep) Observe(ctx context.Context) (plan.Observation, error) {
	st := accessState{Entries: map[string]accessEntry{}}
	var principals []string
	input := &eks.ListAccessEntriesInput{ClusterName: &s.cluster}
	for {
		out, err := s.c.EKS.ListAccessEntries(ctx, input)
		if isNotFound(err) {
			return plan.Observation{Detail: st}, nil // no cluster yet
		}
		if err != nil {
			return plan.Observation{}, classify("list access entries of EKS cluster "+s.cluster, "eks:ListAccessEntries", err)
		}
		principals = append(principals, out.AccessEntries...)
		if out.NextToken == nil {
			break
		}
		input.NextToken = out.NextToken
	}
	for _, principal := range principals {
		out, err := s.c.EKS.DescribeAccessEntry(ctx, &eks.DescribeAccessEntryInput{ClusterName: &s.cluster, PrincipalArn: aws.String(principal)})
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return plan.Observation{}, classify("read access entry "+principal, "eks:DescribeAccessEntry", err)
		}
		e := accessEntry{Owned: out.AccessEntry.Tags[cloud.OwnerTag] == s.cluster}
		if e.Owned || slices.Contains(s.admins, principal) {
			if e.Admin, err = s.hasAdminPolicy(ctx, principal); err != nil {
				return plan.Observation{}, err
			}
		}
		if !e.Owned && !e.Admin && slices.Contains(s.admins, principal) {
			return plan.Observation{}, plan.NotOwnedError("grant cluster-admin to "+principal,
				"EKS access entry for "+principal, cloud.OwnerTag+"="+s.cluster+" (nor the cluster-admin policy)")
		}
		st.Entries[principal] = e
	}
	return plan.Observation{Exists: true, Detail: st}, nil
}

func (s *accessStep) hasAdminPolicy(ctx context.Context, principal string) (bool, error) {
	input := &eks.ListAssociatedAccessPoliciesInput{ClusterName: &s.cluster, PrincipalArn: aws.String(principal)}
	for {
		out, err := s.c.EKS.ListAssociatedAccessPolicies(ctx, input)
		if err != nil {
			return false, classify("list access policies of "+principal, "eks:ListAssociatedAccessPolicies", err)
		}
		for _, p := range out.AssociatedAccessPolicies {
			if aws.ToString(p.PolicyArn) == ClusterAdminPolicy && p.AccessScope != nil && p.AccessScope.Type == ekstypes.AccessScopeTypeCluster {
				return true, nil
			}
		}
		if out.NextToken == nil {
			return false, nil
		}
		input.NextToken = out.NextToken
	}
}

// accessChange is what Apply does: entries to create, policies to associate, entries to delete.
type accessChange struct {
	Create, Associate, Delete []string
}

func (s *accessStep) Plan(obs plan.Observation) plan.Change {
	st := obs.Detail.(accessState)
	var ch accessChange
	var diff []string
	for _, role := range s.admins {
		e, ok := st.Entries[role]
		switch {
		case !ok:
			ch.Create = append(ch.Create, role)
			diff = append(diff, "grant cluster-admin to "+role+" (access entry, AmazonEKSClusterAdminPolicy)")
		case !e.Admin:
			ch.Associate = append(ch.Associate, role)
			diff = append(diff, "associate AmazonEKSClusterAdminPolicy with "+role)
		}
	}
	for _, principal := range sortedKeys(st.Entries) {
		if st.Entries[principal].Owned && !slices.Contains(s.admins, principal) {
			ch.Delete = append(ch.Delete, principal)
			diff = append(diff, "revoke the access of "+principal+" (no longer in eks_admin_roles)")
		}
	}
	if len(diff) == 0 {
		return plan.NoChange()
	}
	action := plan.Update
	if len(ch.Associate) == 0 && len(ch.Delete) == 0 {
		action = plan.Create
	}
	return plan.Change{Action: action, Diff: diff, Desired: ch}
}

func (s *accessStep) Apply(ctx context.Context, c plan.Change) error {
	ch := c.Desired.(accessChange)
	for _, role := range ch.Create {
		_, err := s.c.EKS.CreateAccessEntry(ctx, &eks.CreateAccessEntryInput{ClusterName: &s.cluster, PrincipalArn: aws.String(role),
			Tags: map[string]string{cloud.OwnerTag: s.cluster}})
		// In use: made by an earlier, interrupted run; the association below completes it.
		if err != nil && kindOf(err) != plan.Conflict {
			return classify("create access entry for "+role, "eks:CreateAccessEntry", err)
		}
	}
	for _, role := range append(ch.Create, ch.Associate...) {
		if _, err := s.c.EKS.AssociateAccessPolicy(ctx, &eks.AssociateAccessPolicyInput{ClusterName: &s.cluster, PrincipalArn: aws.String(role),
			PolicyArn: aws.String(ClusterAdminPolicy), AccessScope: &ekstypes.AccessScope{Type: ekstypes.AccessScopeTypeCluster}}); err != nil {
			return classify("associate the cluster-admin policy with "+role, "eks:AssociateAccessPolicy", err)
		}
	}
	for _, principal := range ch.Delete {
		if _, err := s.c.EKS.DeleteAccessEntry(ctx, &eks.DeleteAccessEntryInput{ClusterName: &s.cluster, PrincipalArn: aws.String(principal)}); err != nil && !isNotFound(err) {
			return classify("delete access entry of "+principal, "eks:DeleteAccessEntry", err)
		}
	}
	return nil
}

// PlanDestroy leaves the access entries to the deletion of the EKS cluster, which removes them.
func (s *accessStep) PlanDestroy(plan.Observation) plan.Change { return plan.NoChange() }
