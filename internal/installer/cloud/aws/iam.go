package aws

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"sort"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/eks"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	iamtypes "github.com/aws/aws-sdk-go-v2/service/iam/types"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

// rolePath groups the roles of every cluster, so that list and sweep find them with one ListRoles call.
const rolePath = "/opstrace/"

// policyDoc is an IAM policy document; marshalled, it is compared with what IAM returns (URL-encoded JSON).
type policyDoc struct {
	Version   string      `json:"Version"`
	Statement []statement `json:"Statement"`
}

type statement struct {
	Effect    string                       `json:"Effect"`
	Principal map[string]string            `json:"Principal,omitempty"`
	Action    []string                     `json:"Action"`
	Resource  []string                     `json:"Resource,omitempty"`
	Condition map[string]map[string]string `json:"Condition,omitempty"`
}

func (d policyDoc) String() string {
	b, _ := json.Marshal(d) // only strings, maps and slices
	return string(b)
}

// sameDoc compares two policy documents semantically: IAM returns them URL-encoded and reformatted.
func sameDoc(encoded, want string) bool {
	if encoded == "" {
		return false
	}
	raw, err := url.QueryUnescape(encoded)
	if err != nil {
		raw = encoded
	}
	var a, b any
	if json.Unmarshal([]byte(raw), &a) != nil || json.Unmarshal([]byte(want), &b) != nil {
		return false
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

func servicePrincipal(service string) policyDoc {
	return policyDoc{Version: "2012-10-17", Statement: []statement{{Effect: "Allow",
		Principal: map[string]string{"Service": service}, Action: []string{"sts:AssumeRole"}}}}
}

// roleStep is an IAM role with a trust policy, managed policies and optionally one inline policy.
type roleStep struct {
	c       *Clients
	cluster string
	step    string
	role    string
	deps    []string
	managed []string
	inline  string // the inline policy's name, "" for none
	// desired returns the trust and inline policy documents; it may need to look things up (the OIDC
	// provider of the EKS cluster). ok is false while what it needs does not exist yet.
	desired func(ctx context.Context) (trust, inline string, ok bool, err error)
}

type roleState struct {
	Trust, Inline         string // current, URL-encoded as IAM returns them
	WantTrust, WantInline string
	Ready                 bool // the desired documents are known
	Attached              map[string]bool
}

func (s *roleStep) Name() string        { return s.step }
func (s *roleStep) DependsOn() []string { return s.deps }

func (s *roleStep) Observe(ctx context.Context) (plan.Observation, error) {
	var st roleState
	var err error
	if st.WantTrust, st.WantInline, st.Ready, err = s.desired(ctx); err != nil {
		return plan.Observation{}, err
	}
	out, err := s.c.IAM.GetRole(ctx, &iam.GetRoleInput{RoleName: &s.role})
	if isNotFound(err) {
		return plan.Observation{Detail: st}, nil
	}
	if err != nil {
		return plan.Observation{}, classify("find IAM role "+s.role, "iam:GetRole", err)
	}
	if !ownedBy(out.Role.Tags, s.cluster, func(t iamtypes.Tag) (string, string) { return aws.ToString(t.Key), aws.ToString(t.Value) }) {
		return plan.Observation{}, plan.NotOwnedError("IAM role "+s.role, "IAM role "+s.role, cloud.OwnerTag+"="+s.cluster)
	}
	st.Trust = aws.ToString(out.Role.AssumeRolePolicyDocument)
	st.Attached = map[string]bool{}
	attached, err := s.c.IAM.ListAttachedRolePolicies(ctx, &iam.ListAttachedRolePoliciesInput{RoleName: &s.role})
	if err != nil {
		return plan.Observation{}, classify("list policies of IAM role "+s.role, "iam:ListAttachedRolePolicies", err)
	}
	for _, p := range attached.AttachedPolicies {
		st.Attached[aws.ToString(p.PolicyArn)] = true
	}
	if s.inline != "" {
		pol, err := s.c.IAM.GetRolePolicy(ctx, &iam.GetRolePolicyInput{RoleName: &s.role, PolicyName: &s.inline})
		if err != nil && !isNotFound(err) {
			return plan.Observation{}, classify("read policy of IAM role "+s.role, "iam:GetRolePolicy", err)
		}
		if err == nil {
			st.Inline = aws.ToString(pol.PolicyDocument)
		}
	}
	return plan.Observation{Exists: true, ID: aws.ToString(out.Role.Arn), Detail: st}, nil
}

func (s *roleStep) Plan(obs plan.Observation) plan.Change {
	st := obs.Detail.(roleState)
	if !obs.Exists {
		diff := []string{"IAM role " + rolePath + s.role}
		for _, p := range s.managed {
			diff = append(diff, "policy: "+p[strings.LastIndex(p, "/")+1:])
		}
		if s.inline != "" {
			diff = append(diff, "inline policy "+s.inline+": "+s.describeInline(st))
		}
		return plan.Change{Action: plan.Create, Diff: diff, Desired: st}
	}
	var diff []string
	if st.Ready && !sameDoc(st.Trust, st.WantTrust) {
		diff = append(diff, "trust policy: update to "+st.WantTrust)
	}
	for _, p := range s.managed {
		if !st.Attached[p] {
			diff = append(diff, "attach policy "+p)
		}
	}
	if s.inline != "" && st.Ready && !sameDoc(st.Inline, st.WantInline) {
		diff = append(diff, "inline policy "+s.inline+": "+s.describeInline(st))
	}
	if len(diff) == 0 {
		return plan.NoChange()
	}
	return plan.Change{Action: plan.Update, Diff: diff, Desired: st}
}

func (s *roleStep) describeInline(st roleState) string {
	if !st.Ready {
		return "(written once its resources exist)"
	}
	return st.WantInline
}

func (s *roleStep) Apply(ctx context.Context, c plan.Change) error {
	if c.Action == plan.Delete {
		return s.delete(ctx)
	}
	st := c.Desired.(roleState)
	if !st.Ready {
		return plan.Errorf(plan.NotFound, "write IAM role "+s.role, fmt.Errorf("what its policies name does not exist yet"))
	}
	if c.Action == plan.Create {
		if _, err := s.c.IAM.CreateRole(ctx, &iam.CreateRoleInput{RoleName: &s.role, Path: aws.String(rolePath),
			AssumeRolePolicyDocument: &st.WantTrust,
			Tags:                     []iamtypes.Tag{{Key: aws.String(cloud.OwnerTag), Value: aws.String(s.cluster)}},
		}); err != nil {
			return classify("create IAM role "+s.role, "iam:CreateRole", err)
		}
		st.Trust = st.WantTrust
	}
	if !sameDoc(st.Trust, st.WantTrust) {
		if _, err := s.c.IAM.UpdateAssumeRolePolicy(ctx, &iam.UpdateAssumeRolePolicyInput{RoleName: &s.role, PolicyDocument: &st.WantTrust}); err != nil {
			return classify("update trust of IAM role "+s.role, "iam:UpdateAssumeRolePolicy", err)
		}
	}
	for _, p := range s.managed {
		if !st.Attached[p] {
			if _, err := s.c.IAM.AttachRolePolicy(ctx, &iam.AttachRolePolicyInput{RoleName: &s.role, PolicyArn: aws.String(p)}); err != nil {
				return classify("attach "+p+" to IAM role "+s.role, "iam:AttachRolePolicy", err)
			}
		}
	}
	if s.inline != "" && !sameDoc(st.Inline, st.WantInline) {
		if _, err := s.c.IAM.PutRolePolicy(ctx, &iam.PutRolePolicyInput{RoleName: &s.role, PolicyName: &s.inline, PolicyDocument: &st.WantInline}); err != nil {
			return classify("write policy of IAM role "+s.role, "iam:PutRolePolicy", err)
		}
	}
	return nil
}

func (s *roleStep) delete(ctx context.Context) error {
	return deleteRole(ctx, s.c.IAM, s.role)
}

// deleteRole detaches and deletes the role's policies, then the role: IAM refuses to delete a role with
// policies.
func deleteRole(ctx context.Context, api IAMAPI, role string) error {
	attached, err := api.ListAttachedRolePolicies(ctx, &iam.ListAttachedRolePoliciesInput{RoleName: &role})
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return classify("list policies of IAM role "+role, "iam:ListAttachedRolePolicies", err)
	}
	for _, p := range attached.AttachedPolicies {
		if _, err := api.DetachRolePolicy(ctx, &iam.DetachRolePolicyInput{RoleName: &role, PolicyArn: p.PolicyArn}); err != nil && !isNotFound(err) {
			return classify("detach policy from IAM role "+role, "iam:DetachRolePolicy", err)
		}
	}
	inline, err := api.ListRolePolicies(ctx, &iam.ListRolePoliciesInput{RoleName: &role})
	if err != nil && !isNotFound(err) {
		return classify("list inline policies of IAM role "+role, "iam:ListRolePolicies", err)
	}
	if inline != nil {
		for _, name := range inline.PolicyNames {
			if _, err := api.DeleteRolePolicy(ctx, &iam.DeleteRolePolicyInput{RoleName: &role, PolicyName: aws.String(name)}); err != nil && !isNotFound(err) {
				return classify("delete inline policy of IAM role "+role, "iam:DeleteRolePolicy", err)
			}
		}
	}
	if _, err := api.DeleteRole(ctx, &iam.DeleteRoleInput{RoleName: &role}); err != nil && !isNotFound(err) {
		return classify("delete IAM role "+role, "iam:DeleteRole", err)
	}
	return nil
}

func (s *roleStep) PlanDestroy(obs plan.Observation) plan.Change {
	if !obs.Exists {
		return plan.NoChange()
	}
	return plan.Change{Action: plan.Delete, Diff: []string{"delete IAM role " + s.role + " and its policies"}}
}

const awsPolicy = "arn:aws:iam::aws:policy/"

func staticTrust(service string) func(context.Context) (string, string, bool, error) {
	return func(context.Context) (string, string, bool, error) {
		return servicePrincipal(service).String(), "", true, nil
	}
}

// oidcProvider finds the IAM OIDC provider of the EKS cluster's issuer: its ARN, "" when it does not exist
// (or the cluster does not), and the issuer host path, e.g. oidc.eks.us-west-2.amazonaws.com/id/ABC.
func oidcProvider(ctx context.Context, c *Clients, cluster string) (arn, issuer string, err error) {
	out, err := c.EKS.DescribeCluster(ctx, &eks.DescribeClusterInput{Name: aws.String(cluster)})
	if isNotFound(err) {
		return "", "", nil
	}
	if err != nil {
		return "", "", classify("find EKS cluster "+cluster, "eks:DescribeCluster", err)
	}
	if out.Cluster.Identity == nil || out.Cluster.Identity.Oidc == nil || aws.ToString(out.Cluster.Identity.Oidc.Issuer) == "" {
		return "", "", nil
	}
	issuer = strings.TrimPrefix(aws.ToString(out.Cluster.Identity.Oidc.Issuer), "https://")
	list, err := c.IAM.ListOpenIDConnectProviders(ctx, &iam.ListOpenIDConnectProvidersInput{})
	if err != nil {
		return "", "", classify("list IAM OIDC providers", "iam:ListOpenIDConnectProviders", err)
	}
	for _, p := range list.OpenIDConnectProviderList {
		if strings.HasSuffix(aws.ToString(p.Arn), ":oidc-provider/"+issuer) {
			return aws.ToString(p.Arn), issuer, nil
		}
	}
	return "", issuer, nil
}

// oidcStep is the IAM OIDC identity provider of the EKS cluster's service account issuer: what lets
// Kubernetes service accounts assume IAM roles (IRSA).
type oidcStep struct {
	c       *Clients
	cluster string
}

type oidcState struct{ ARN, Issuer string }

func (s *oidcStep) Name() string        { return "aws/oidc-provider" }
func (s *oidcStep) DependsOn() []string { return []string{"aws/eks-cluster"} }

func (s *oidcStep) Observe(ctx context.Context) (plan.Observation, error) {
	arn, issuer, err := oidcProvider(ctx, s.c, s.cluster)
	if err != nil || arn == "" {
		return plan.Observation{Detail: oidcState{Issuer: issuer}}, err
	}
	p, err := s.c.IAM.GetOpenIDConnectProvider(ctx, &iam.GetOpenIDConnectProviderInput{OpenIDConnectProviderArn: &arn})
	if err != nil {
		return plan.Observation{}, classify("read IAM OIDC provider "+arn, "iam:GetOpenIDConnectProvider", err)
	}
	if !ownedBy(p.Tags, s.cluster, func(t iamtypes.Tag) (string, string) { return aws.ToString(t.Key), aws.ToString(t.Value) }) {
		return plan.Observation{}, plan.NotOwnedError("IAM OIDC provider", "IAM OIDC provider "+arn, cloud.OwnerTag+"="+s.cluster)
	}
	return plan.Observation{Exists: true, ID: arn, Detail: oidcState{ARN: arn, Issuer: issuer}}, nil
}

func (s *oidcStep) Plan(obs plan.Observation) plan.Change {
	if obs.Exists {
		return plan.NoChange()
	}
	st := obs.Detail.(oidcState)
	return plan.Change{Action: plan.Create, Diff: []string{"IAM OIDC provider for the EKS cluster's service account issuer " + orLater(st.Issuer)}, Desired: st}
}

func (s *oidcStep) Apply(ctx context.Context, c plan.Change) error {
	st := c.Desired.(oidcState)
	if c.Action == plan.Delete {
		if _, err := s.c.IAM.DeleteOpenIDConnectProvider(ctx, &iam.DeleteOpenIDConnectProviderInput{OpenIDConnectProviderArn: &st.ARN}); err != nil && !isNotFound(err) {
			return classify("delete IAM OIDC provider "+st.ARN, "iam:DeleteOpenIDConnectProvider", err)
		}
		return nil
	}
	if st.Issuer == "" {
		return plan.Errorf(plan.NotFound, "create IAM OIDC provider", fmt.Errorf("EKS cluster %s has no issuer yet", s.cluster))
	}
	if _, err := s.c.IAM.CreateOpenIDConnectProvider(ctx, &iam.CreateOpenIDConnectProviderInput{
		Url: aws.String("https://" + st.Issuer), ClientIDList: []string{"sts.amazonaws.com"},
		Tags: []iamtypes.Tag{{Key: aws.String(cloud.OwnerTag), Value: aws.String(s.cluster)}},
	}); err != nil {
		return classify("create IAM OIDC provider", "iam:CreateOpenIDConnectProvider", err)
	}
	return nil
}

func (s *oidcStep) PlanDestroy(obs plan.Observation) plan.Change {
	if !obs.Exists {
		return plan.NoChange()
	}
	return plan.Change{Action: plan.Delete, Diff: []string{"delete IAM OIDC provider " + obs.ID}, Desired: oidcState{ARN: obs.ID}}
}

// workloadRole is the IRSA role of one Kubernetes service account: trusted only by that service account
// through the cluster's OIDC provider, allowed only to list the bucket and read, write and delete its
// objects.
func workloadRole(c *Clients, cluster, step, role, namespace, serviceAccount, bucket, bucketStep string) *roleStep {
	return &roleStep{c: c, cluster: cluster, step: step, role: role, inline: "bucket",
		deps:    []string{"aws/oidc-provider", bucketStep},
		desired: irsaTrust(c, cluster, namespace, serviceAccount, bucketPolicy(bucket).String())}
}

// irsaTrust returns the trust policy that lets only namespace/serviceAccount assume a role through the
// cluster's OIDC provider, and the given inline policy ("" for none). Not ready while the provider is
// missing.
func irsaTrust(c *Clients, cluster, namespace, serviceAccount, inline string) func(context.Context) (string, string, bool, error) {
	return func(ctx context.Context) (string, string, bool, error) {
		arn, issuer, err := oidcProvider(ctx, c, cluster)
		if err != nil || arn == "" {
			return "", "", false, err
		}
		trust := policyDoc{Version: "2012-10-17", Statement: []statement{{Effect: "Allow",
			Principal: map[string]string{"Federated": arn}, Action: []string{"sts:AssumeRoleWithWebIdentity"},
			Condition: map[string]map[string]string{"StringEquals": {
				issuer + ":sub": "system:serviceaccount:" + namespace + ":" + serviceAccount,
				issuer + ":aud": "sts.amazonaws.com",
			}}}}}
		return trust.String(), inline, true, nil
	}
}

// bucketPolicy is least privilege for a Cortex or Loki bucket: no bucket administration, no other bucket.
func bucketPolicy(bucket string) policyDoc {
	return policyDoc{Version: "2012-10-17", Statement: []statement{
		{Effect: "Allow", Action: []string{"s3:ListBucket"}, Resource: []string{"arn:aws:s3:::" + bucket}},
		{Effect: "Allow", Action: []string{"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}, Resource: []string{"arn:aws:s3:::" + bucket + "/*"}},
	}}
}

// sortedStrings is a sorted copy.
func sortedStrings(in []string) []string {
	out := append([]string(nil), in...)
	sort.Strings(out)
	return out
}
