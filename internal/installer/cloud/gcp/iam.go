package gcp

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"

	"cloud.google.com/go/iam"
	admin "cloud.google.com/go/iam/admin/apiv1"
	"cloud.google.com/go/iam/admin/apiv1/adminpb"
	"cloud.google.com/go/iam/apiv1/iampb"
	"google.golang.org/protobuf/proto"

	"github.com/opstrace/opstrace/internal/installer/plan"
)

// Roles granted to a workload's service account: its Kubernetes service account may act as it (workload
// identity), and it may read, write, list and delete the objects of its own bucket, nothing else: no
// bucket administration, no other bucket, no project role.
const (
	RoleWorkloadIdentityUser = "roles/iam.workloadIdentityUser"
	RoleObjectAdmin          = "roles/storage.objectAdmin"
)

// ServiceAccountID is the account ID of a workload's service account: "opstrace-CLUSTER-ROLE", shortened
// with a hash of the cluster name when that exceeds the 30 characters IAM allows.
func ServiceAccountID(cluster, role string) string {
	id := "opstrace-" + cluster + "-" + role
	if len(id) <= 30 {
		return id
	}
	sum := sha256.Sum256([]byte(cluster))
	hash := hex.EncodeToString(sum[:])[:6]
	keep := 30 - len("os-") - len("-"+hash+"-"+role)
	return "os-" + strings.TrimRight(cluster[:keep], "-") + "-" + hash + "-" + role
}

// ServiceAccountEmail is the email of a workload's service account in project.
func ServiceAccountEmail(project, cluster, role string) string {
	return ServiceAccountID(cluster, role) + "@" + project + ".iam.gserviceaccount.com"
}

func serviceAccountPath(project, email string) string {
	return "projects/" + project + "/serviceAccounts/" + email
}

// identityStep is the Google service account of one Kubernetes service account (workload identity): the
// KSA may act as it, and it holds one role on one resource (grant): its bucket, or for cert-manager the DNS
// zone. It needs the GKE cluster, whose creation makes the project's workload identity pool (IAM refuses a
// binding naming a pool that does not exist), and the step of that resource.
type identityStep struct {
	c         *Clients
	cluster   string
	step      string
	role      string // "cortex", "loki" or "cert-manager"
	namespace string
	ksa       string
	grant     grant
}

// grant is the one role a workload's service account holds on one resource.
type grant interface {
	// describe is the grant as the plan shows it.
	describe() string
	// dependsOn is the step of the resource.
	dependsOn() string
	// bound says whether member holds the role.
	bound(ctx context.Context, member string) (bool, error)
	// bind grants the role to member, keeping the other bindings.
	bind(ctx context.Context, member string) error
	// unbind removes member before its service account is deleted; a resource deleted with the cluster
	// (its bucket) needs nothing, one that stays (the DNS zone) would keep a binding of a deleted account.
	unbind(ctx context.Context, member string) error
}

type identityState struct {
	Bound   bool // the workload identity binding is exactly the KSA
	Granted bool // the service account holds its role on its resource
}

func (s *identityStep) Name() string        { return s.step }
func (s *identityStep) DependsOn() []string { return []string{"gcp/gke-cluster", s.grant.dependsOn()} }

func (s *identityStep) email() string  { return ServiceAccountEmail(s.c.Project, s.cluster, s.role) }
func (s *identityStep) member() string { return "serviceAccount:" + s.email() }
func (s *identityStep) ksaMember() string {
	return "serviceAccount:" + WorkloadPool(s.c.Project) + "[" + s.namespace + "/" + s.ksa + "]"
}

func (s *identityStep) Observe(ctx context.Context) (plan.Observation, error) {
	path := serviceAccountPath(s.c.Project, s.email())
	sa, err := s.c.IAM.GetServiceAccount(ctx, &adminpb.GetServiceAccountRequest{Name: path})
	if isNotFound(err) {
		return plan.Observation{Detail: identityState{}}, nil
	}
	if err != nil {
		return plan.Observation{}, classify("find service account "+s.email(), "iam.serviceAccounts.get", err)
	}
	if markedOwner(sa.GetDescription()) != s.cluster {
		return plan.Observation{}, notMarked("service account "+s.email(), "service account "+s.email(), s.cluster)
	}
	var st identityState
	pol, err := s.c.IAM.GetIamPolicy(ctx, &iampb.GetIamPolicyRequest{Resource: path})
	if err != nil {
		return plan.Observation{}, classify("read IAM policy of service account "+s.email(), "iam.serviceAccounts.getIamPolicy", err)
	}
	st.Bound = slices.Equal(members(pol.InternalProto, RoleWorkloadIdentityUser), []string{s.ksaMember()})
	if st.Granted, err = s.grant.bound(ctx, s.member()); err != nil {
		return plan.Observation{}, err
	}
	return plan.Observation{Exists: true, ID: sa.GetEmail(), Detail: st}, nil
}

func members(p *iampb.Policy, role string) []string {
	for _, b := range p.GetBindings() {
		if b.GetRole() == role && b.GetCondition() == nil {
			return b.GetMembers()
		}
	}
	return nil
}

func (s *identityStep) Plan(obs plan.Observation) plan.Change {
	st := obs.Detail.(identityState)
	bind := RoleWorkloadIdentityUser + " for " + s.ksaMember()
	if !obs.Exists {
		return plan.Change{Action: plan.Create, Desired: st, Diff: []string{"service account " + s.email(), bind, s.grant.describe()}}
	}
	var diff []string
	if !st.Bound {
		diff = append(diff, bind)
	}
	if !st.Granted {
		diff = append(diff, s.grant.describe())
	}
	if len(diff) == 0 {
		return plan.NoChange()
	}
	return plan.Change{Action: plan.Update, Desired: st, Diff: diff}
}

func (s *identityStep) PlanDestroy(obs plan.Observation) plan.Change {
	if !obs.Exists {
		return plan.NoChange()
	}
	return plan.Change{Action: plan.Delete, Diff: []string{"delete service account " + s.email()}}
}

func (s *identityStep) Apply(ctx context.Context, c plan.Change) error {
	path := serviceAccountPath(s.c.Project, s.email())
	if c.Action == plan.Delete {
		if err := s.grant.unbind(ctx, s.member()); err != nil {
			return err
		}
		return deleteServiceAccount(ctx, s.c, path)
	}
	st := c.Desired.(identityState)
	if c.Action == plan.Create {
		if _, err := s.c.IAM.CreateServiceAccount(ctx, &adminpb.CreateServiceAccountRequest{
			Name: "projects/" + s.c.Project, AccountId: ServiceAccountID(s.cluster, s.role),
			ServiceAccount: &adminpb.ServiceAccount{DisplayName: "Opstrace " + s.cluster + " " + s.role, Description: ownerMark(s.cluster)},
		}); err != nil {
			// AlreadyExists (a Conflict): made since Observe; the next attempt checks its description.
			return classify("create service account "+s.email(), "iam.serviceAccounts.create", err)
		}
	}
	if !st.Bound {
		// Read-modify-write with the policy's etag: a concurrent change makes the write fail (Conflict,
		// retried from Observe) instead of being overwritten. A service account just created may not be
		// visible yet: NotFound, retried too.
		pol, err := s.c.IAM.GetIamPolicy(ctx, &iampb.GetIamPolicyRequest{Resource: path})
		if err != nil {
			return classify("read IAM policy of service account "+s.email(), "iam.serviceAccounts.getIamPolicy", err)
		}
		p := proto.Clone(pol.InternalProto).(*iampb.Policy)
		setMembers(p, RoleWorkloadIdentityUser, []string{s.ksaMember()})
		if _, err := s.c.IAM.SetIamPolicy(ctx, &admin.SetIamPolicyRequest{Resource: path, Policy: &iam.Policy{InternalProto: p}}); err != nil {
			return classify("bind "+s.ksaMember()+" to service account "+s.email(), "iam.serviceAccounts.setIamPolicy", err)
		}
	}
	if !st.Granted {
		return s.grant.bind(ctx, s.member())
	}
	return nil
}

// bucketGrant is RoleObjectAdmin on a workload's own bucket. The bucket's binding goes with the bucket,
// deleted after the identity.
type bucketGrant struct {
	storage StorageAPI
	bucket  string
	step    string
}

func (g bucketGrant) describe() string  { return RoleObjectAdmin + " on bucket " + g.bucket + " only" }
func (g bucketGrant) dependsOn() string { return g.step }

func (g bucketGrant) bound(ctx context.Context, member string) (bool, error) {
	bp, err := g.storage.BucketPolicy(ctx, g.bucket)
	if err != nil && !isNotFound(err) {
		return false, classify("read IAM policy of bucket "+g.bucket, "storage.buckets.getIamPolicy", err)
	}
	return err == nil && slices.Contains(members(bp, RoleObjectAdmin), member), nil
}

func (g bucketGrant) bind(ctx context.Context, member string) error {
	bp, err := g.storage.BucketPolicy(ctx, g.bucket)
	if err != nil {
		return classify("read IAM policy of bucket "+g.bucket, "storage.buckets.getIamPolicy", err)
	}
	p := proto.Clone(bp).(*iampb.Policy)
	if !slices.Contains(members(p, RoleObjectAdmin), member) {
		setMembers(p, RoleObjectAdmin, append(members(p, RoleObjectAdmin), member))
	}
	if err := g.storage.SetBucketPolicy(ctx, g.bucket, p); err != nil {
		return classify("grant "+RoleObjectAdmin+" on bucket "+g.bucket, "storage.buckets.setIamPolicy", err)
	}
	return nil
}

func (g bucketGrant) unbind(context.Context, string) error { return nil }

// setMembers makes the unconditional binding of role hold exactly members.
func setMembers(p *iampb.Policy, role string, members []string) {
	for _, b := range p.Bindings {
		if b.GetRole() == role && b.GetCondition() == nil {
			b.Members = members
			return
		}
	}
	p.Bindings = append(p.Bindings, &iampb.Binding{Role: role, Members: members})
}

func deleteServiceAccount(ctx context.Context, c *Clients, path string) error {
	if err := c.IAM.DeleteServiceAccount(ctx, &adminpb.DeleteServiceAccountRequest{Name: path}); err != nil && !isNotFound(err) {
		return classify("delete service account "+path[strings.LastIndex(path, "/")+1:], "iam.serviceAccounts.delete", err)
	}
	return nil
}
