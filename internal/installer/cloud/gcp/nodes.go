package gcp

import (
	"context"
	"net/http"
	"slices"
	"strings"

	"cloud.google.com/go/iam/admin/apiv1/adminpb"
	crm "google.golang.org/api/cloudresourcemanager/v3"

	"github.com/opstrace/opstrace/internal/installer/plan"
)

// RoleNodes is the role part of the nodes' service account ID: "opstrace-CLUSTER-nodes" (ServiceAccountID).
const RoleNodes = "nodes"

// NodeRoles are the project roles of the nodes' service account. Google's guidance for a least-privilege
// node service account ("Configure GKE node service accounts") is the one role Kubernetes Engine Default
// Node Service Account, which holds what the node's system components need (writing logs and metrics,
// reading monitoring, resource metadata) and replaces the older list of logging.logWriter,
// monitoring.metricWriter, monitoring.viewer and stackdriver.resourceMetadata.writer. Pulling private
// images from Artifact Registry is not in it and not granted: the distribution's images are public. The
// role exists only on projects (and folders and organizations), not on a narrower resource.
var NodeRoles = []string{"roles/container.defaultNodeServiceAccount"}

// nodeIdentityStep is the Google service account the GKE nodes run as, instead of the Compute Engine
// default service account (Editor on the project in many projects): it holds NodeRoles on the project and
// nothing else. Workloads do not use it (they have workload identity: GKE_METADATA hides it from pods).
// The cluster is created with its node pool, so the cluster step depends on this one. Destroy runs after
// the cluster's (reverse order): the project bindings first, then the account, so that the project keeps
// no binding of a deleted account.
type nodeIdentityStep struct {
	c       *Clients
	cluster string
}

// nodeIdentityState is what Observe read: the roles of NodeRoles the account lacks on the project.
type nodeIdentityState struct {
	Missing []string
}

// NodeServiceAccountEmail is the email of the nodes' service account of cluster in project.
func NodeServiceAccountEmail(project, cluster string) string {
	return ServiceAccountEmail(project, cluster, RoleNodes)
}

func (s *nodeIdentityStep) Name() string        { return "gcp/node-identity" }
func (s *nodeIdentityStep) DependsOn() []string { return nil }

func (s *nodeIdentityStep) email() string  { return NodeServiceAccountEmail(s.c.Project, s.cluster) }
func (s *nodeIdentityStep) member() string { return "serviceAccount:" + s.email() }

func (s *nodeIdentityStep) Observe(ctx context.Context) (plan.Observation, error) {
	sa, err := s.c.IAM.GetServiceAccount(ctx, &adminpb.GetServiceAccountRequest{Name: serviceAccountPath(s.c.Project, s.email())})
	if isNotFound(err) {
		return plan.Observation{Detail: nodeIdentityState{Missing: NodeRoles}}, nil
	}
	if err != nil {
		return plan.Observation{}, classify("find service account "+s.email(), "iam.serviceAccounts.get", err)
	}
	if markedOwner(sa.GetDescription()) != s.cluster {
		return plan.Observation{}, notMarked("service account "+s.email(), "service account "+s.email(), s.cluster)
	}
	p, err := s.c.Projects.ProjectPolicy(ctx, s.c.Project)
	if err != nil {
		return plan.Observation{}, classify("read IAM policy of project "+s.c.Project, "resourcemanager.projects.getIamPolicy", err)
	}
	return plan.Observation{Exists: true, ID: sa.GetEmail(), Detail: nodeIdentityState{Missing: missingRoles(p, s.member())}}, nil
}

// missingRoles are the roles of NodeRoles that member does not hold unconditionally in p.
func missingRoles(p *crm.Policy, member string) []string {
	var out []string
	for _, role := range NodeRoles {
		if !slices.Contains(projectMembers(p, role), member) {
			out = append(out, role)
		}
	}
	return out
}

func (s *nodeIdentityStep) rolesDiff(roles []string) string {
	return strings.Join(roles, ", ") + " on project " + s.c.Project + " (project level: where GKE's node roles apply)"
}

func (s *nodeIdentityStep) Plan(obs plan.Observation) plan.Change {
	st := obs.Detail.(nodeIdentityState)
	if !obs.Exists {
		return plan.Change{Action: plan.Create, Desired: st, Diff: []string{
			"service account " + s.email() + " for the GKE nodes (instead of the Compute Engine default service account)",
			s.rolesDiff(NodeRoles)}}
	}
	if len(st.Missing) == 0 {
		return plan.NoChange()
	}
	return plan.Change{Action: plan.Update, Desired: st, Diff: []string{s.rolesDiff(st.Missing)}}
}

func (s *nodeIdentityStep) PlanDestroy(obs plan.Observation) plan.Change {
	if !obs.Exists {
		return plan.NoChange()
	}
	return plan.Change{Action: plan.Delete, Diff: []string{
		"remove " + s.email() + " from the IAM policy of project " + s.c.Project + ", delete the service account"}}
}

func (s *nodeIdentityStep) Apply(ctx context.Context, c plan.Change) error {
	if c.Action == plan.Delete {
		if err := removeFromProject(ctx, s.c, s.member()); err != nil {
			return err
		}
		return deleteServiceAccount(ctx, s.c, serviceAccountPath(s.c.Project, s.email()))
	}
	if c.Action == plan.Create {
		if _, err := s.c.IAM.CreateServiceAccount(ctx, &adminpb.CreateServiceAccountRequest{
			Name: "projects/" + s.c.Project, AccountId: ServiceAccountID(s.cluster, RoleNodes),
			ServiceAccount: &adminpb.ServiceAccount{DisplayName: "Opstrace " + s.cluster + " " + RoleNodes, Description: ownerMark(s.cluster)},
		}); err != nil {
			// AlreadyExists (a Conflict): made since Observe; the next attempt checks its description.
			return classify("create service account "+s.email(), "iam.serviceAccounts.create", err)
		}
	}
	return s.grant(ctx)
}

// grant adds the account to the bindings of NodeRoles it lacks, in one write of the project's policy that
// carries the read policy's etag: a concurrent change makes it fail (Conflict, retried from Observe)
// instead of being overwritten.
func (s *nodeIdentityStep) grant(ctx context.Context) error {
	p, err := s.c.Projects.ProjectPolicy(ctx, s.c.Project)
	if err != nil {
		return classify("read IAM policy of project "+s.c.Project, "resourcemanager.projects.getIamPolicy", err)
	}
	missing := missingRoles(p, s.member())
	if len(missing) == 0 {
		return nil
	}
	for _, role := range missing {
		setProjectMembers(p, role, append(slices.Clone(projectMembers(p, role)), s.member()))
	}
	err = s.c.Projects.SetProjectPolicy(ctx, s.c.Project, p)
	if httpCode(err) == http.StatusBadRequest && strings.Contains(err.Error(), "does not exist") {
		// IAM makes a new service account visible to policies a few seconds after creating it: retried.
		return plan.Errorf(plan.NotFound, "grant "+strings.Join(missing, ", ")+" to "+s.email(), err)
	}
	return classify("grant "+strings.Join(missing, ", ")+" on project "+s.c.Project+" to "+s.email(), "resourcemanager.projects.setIamPolicy", err)
}

// removeFromProject removes member from every binding of the project's policy (dropping bindings left
// empty): before its service account, which is ours, is deleted. Nothing is written when it holds no role.
func removeFromProject(ctx context.Context, c *Clients, member string) error {
	p, err := c.Projects.ProjectPolicy(ctx, c.Project)
	if err != nil {
		return classify("read IAM policy of project "+c.Project, "resourcemanager.projects.getIamPolicy", err)
	}
	changed := false
	p.Bindings = slices.DeleteFunc(p.Bindings, func(b *crm.Binding) bool {
		if i := slices.Index(b.Members, member); i >= 0 {
			b.Members = slices.Delete(slices.Clone(b.Members), i, i+1)
			changed = true
		}
		return len(b.Members) == 0
	})
	if !changed {
		return nil
	}
	return classify("remove "+member+" from the IAM policy of project "+c.Project, "resourcemanager.projects.setIamPolicy",
		c.Projects.SetProjectPolicy(ctx, c.Project, p))
}

func projectMembers(p *crm.Policy, role string) []string {
	for _, b := range p.Bindings {
		if b.Role == role && b.Condition == nil {
			return b.Members
		}
	}
	return nil
}

func setProjectMembers(p *crm.Policy, role string, members []string) {
	for _, b := range p.Bindings {
		if b.Role == role && b.Condition == nil {
			b.Members = members
			return
		}
	}
	p.Bindings = append(p.Bindings, &crm.Binding{Role: role, Members: members})
}
