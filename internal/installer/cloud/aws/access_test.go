package aws

import (
	"context"
	"encoding/base64"
	"net/url"
	"slices"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/eks"
	ekstypes "github.com/aws/aws-sdk-go-v2/service/eks/types"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/opstrace/opstrace/internal/installer/cloud"
	"github.com/opstrace/opstrace/internal/installer/plan"
)

// eks_admin_roles become EKS access entries with the cluster-admin policy (EKS is faked: the requests are
// asserted). The creator's entry, which EKS makes untagged, is never changed; a role dropped from the config
// loses the entry the installer made; a rerun changes nothing.
func TestEKSAdminRolesGetAccessEntries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		if _, err := install(t, w, 8); err != nil {
			t.Fatal(err)
		}
		created := inputs[*eks.CreateAccessEntryInput](w, "eks:CreateAccessEntry")
		if len(created) != 1 || aws.ToString(created[0].PrincipalArn) != opsRole || aws.ToString(created[0].ClusterName) != testCluster ||
			created[0].Tags[cloud.OwnerTag] != testCluster {
			t.Fatalf("CreateAccessEntry requests %+v", created)
		}
		associated := inputs[*eks.AssociateAccessPolicyInput](w, "eks:AssociateAccessPolicy")
		if len(associated) != 1 || aws.ToString(associated[0].PrincipalArn) != opsRole ||
			aws.ToString(associated[0].PolicyArn) != "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy" ||
			associated[0].AccessScope == nil || associated[0].AccessScope.Type != ekstypes.AccessScopeTypeCluster {
			t.Fatalf("AssociateAccessPolicy requests %+v", associated)
		}

		before := len(w.requests)
		if _, err := install(t, w, 8); err != nil {
			t.Fatal(err)
		}
		if m := mutations(&world{requests: w.requests[before:]}); len(m) > 0 {
			t.Errorf("rerun made changes: %v", m)
		}

		// The config now names another role: the installer's entry for ops goes, the new role gets one, and
		// the creator's untagged entry stays as it is.
		const newRole = "arn:aws:iam::123456789012:role/sre"
		cfg := testConfig(t)
		cfg.AWS.EKSAdminRoles = []string{newRole}
		rep, err := run(t, w, Steps(w.clients(), testCluster, cfg), 8)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range rep.Steps {
			if want := map[bool]plan.Action{true: plan.Update, false: plan.NoOp}[s.Name == "aws/eks-access"]; s.Action != want {
				t.Errorf("change of eks_admin_roles: %s planned %s, want %s", s.Name, s.Action, want)
			}
		}
		entries := w.eks[testCluster].access
		if entries[opsRole] != nil || entries[newRole] == nil || !slices.Equal(entries[newRole].policies, []string{ClusterAdminPolicy + " cluster"}) {
			t.Errorf("entries after the change: %v", sortedKeys(entries))
		}
		if entries[creatorARN] == nil || len(entries[creatorARN].policies) != 1 {
			t.Error("the creator's entry was changed")
		}
		for _, in := range inputs[*eks.DeleteAccessEntryInput](w, "eks:DeleteAccessEntry") {
			if aws.ToString(in.PrincipalArn) != opsRole {
				t.Errorf("deleted the entry of %s", aws.ToString(in.PrincipalArn))
			}
		}
	})
}

// An entry the installer did not make, for a role of eks_admin_roles, without the admin policy: the
// installer refuses to change it and says how to fix it.
func TestForeignAccessEntryIsNotChanged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := slowWorld()
		if _, err := install(t, w, 8); err != nil {
			t.Fatal(err)
		}
		const viewer = "arn:aws:iam::123456789012:role/viewer"
		w.eks[testCluster].access[viewer] = &faccess{tags: map[string]string{"team": "x"}, policies: []string{"arn:aws:eks::aws:cluster-access-policy/AmazonEKSViewPolicy cluster"}}
		cfg := testConfig(t)
		cfg.AWS.EKSAdminRoles = append(cfg.AWS.EKSAdminRoles, viewer)
		_, err := run(t, w, Steps(w.clients(), testCluster, cfg), 8)
		if plan.Classify(err) != plan.NotOwned || !strings.Contains(err.Error(), "EKS access entry for "+viewer+" exists but is not tagged") {
			t.Fatalf("foreign entry: %v", err)
		}
		if got := w.eks[testCluster].access[viewer].policies; len(got) != 1 {
			t.Errorf("the foreign entry's policies changed: %v", got)
		}
	})
}

// The EKS token is a presigned STS GetCallerIdentity URL that signs the cluster's name, made in-process with
// the SDK's real presigner (no request is sent).
func TestEKSTokenSignsTheClusterName(t *testing.T) {
	client := sts.NewPresignClient(sts.New(sts.Options{Region: "eu-west-1",
		Credentials: credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", "")}))
	token := func(cluster string) *url.URL {
		tok, err := EKSToken(context.Background(), client, cluster)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(tok, "k8s-aws-v1.") || strings.ContainsAny(tok, "=+/") {
			t.Fatalf("token %q is not k8s-aws-v1. + unpadded URL-safe base64", tok)
		}
		raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(tok, "k8s-aws-v1."))
		if err != nil {
			t.Fatal(err)
		}
		u, err := url.Parse(string(raw))
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	u := token("prod")
	q := u.Query()
	if u.Scheme != "https" || u.Host != "sts.eu-west-1.amazonaws.com" || q.Get("Action") != "GetCallerIdentity" ||
		q.Get("X-Amz-Expires") != "60" || q.Get("X-Amz-Signature") == "" ||
		!slices.Contains(strings.Split(q.Get("X-Amz-SignedHeaders"), ";"), "x-k8s-aws-id") ||
		!strings.HasPrefix(q.Get("X-Amz-Credential"), "AKIDEXAMPLE/") {
		t.Fatalf("presigned URL %s", u)
	}
	if other := token("staging"); other.Query().Get("X-Amz-Signature") == q.Get("X-Amz-Signature") {
		t.Error("the signature does not depend on the cluster name")
	}
}
