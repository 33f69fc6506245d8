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
// KSA may act as it, and it may use only its bucket. It needs the GKE cluster, whose creation makes the
// project's workload identity pool (IAM refuses a binding naming a pool that does not exist), and the
// bucket.
type identityStep struct {
	c          *Clients
	cluster    string
	step       string
	role       string // "cortex" or "loki"
	namespace  string
	ksa        string
	bucket     string
	bucketStep string
}

type identityState struct {
	Bound       bool // the workload identity binding is exactly the KSA
	BucketBound bool // the bucket grants RoleObjectAdmin to the account
}

func (s *identityStep) Name() string        { return s.step }
func (s *identityStep) DependsOn() []string { return []string{"gcp/gke-cluster", s.bucketStep} }

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
	bp, err := s.c.Storage.BucketPolicy(ctx, s.bucket)
	if err != nil && !isNotFound(err) {
		return plan.Observation{}, classify("read IAM policy of bucket "+s.bucket, "storage.buckets.getIamPolicy", err)
	}
	st.BucketBound = err == nil && slices.Contains(members(bp, RoleObjectAdmin), s.member())
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
	bucket := RoleObjectAdmin + " on bucket " + s.bucket + " only"
	if !obs.Exists {
		return plan.Change{Action: plan.Create, Desired: st, Diff: []string{"service account " + s.email(), bind, bucket}}
	}
	var diff []string
	if !st.Bound {
		diff = append(diff, bind)
	}
	if !st.BucketBound {
		diff = append(diff, bucket)
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
	// The bucket's binding goes with the bucket, deleted after this step.
	return plan.Change{Action: plan.Delete, Diff: []string{"delete service account " + s.email()}}
}

func (s *identityStep) Apply(ctx context.Context, c plan.Change) error {
	path := serviceAccountPath(s.c.Project, s.email())
	if c.Action == plan.Delete {
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
	if !st.BucketBound {
		bp, err := s.c.Storage.BucketPolicy(ctx, s.bucket)
		if err != nil {
			return classify("read IAM policy of bucket "+s.bucket, "storage.buckets.getIamPolicy", err)
		}
		p := proto.Clone(bp).(*iampb.Policy)
		if !slices.Contains(members(p, RoleObjectAdmin), s.member()) {
			setMembers(p, RoleObjectAdmin, append(members(p, RoleObjectAdmin), s.member()))
		}
		if err := s.c.Storage.SetBucketPolicy(ctx, s.bucket, p); err != nil {
			return classify("grant "+RoleObjectAdmin+" on bucket "+s.bucket, "storage.buckets.setIamPolicy", err)
		}
	}
	return nil
}

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
