package aws

// An in-memory AWS for the APIs that cannot run offline (EC2, IAM, EKS), at the narrow interfaces of
// api.go: every call is recorded with its input so tests assert the exact requests, resources become
// ready after a simulated latency (in synctest's fake time), and faults are injected per call. S3 is
// tested against a real MinIO (s3_test.go); fakeS3 exists only for the whole-install tests that need
// fake time, which a real server's I/O would not follow.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/eks"
	ekstypes "github.com/aws/aws-sdk-go-v2/service/eks/types"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	iamtypes "github.com/aws/aws-sdk-go-v2/service/iam/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	smithy "github.com/aws/smithy-go"

	"github.com/opstrace/opstrace/internal/installer/cloud"
)

var errKilled = errors.New("simulated kill -9 of the installer")

func apiErr(code string) error {
	return &smithy.GenericAPIError{Code: code, Message: code + " (simulated)"}
}

type request struct {
	Op    string
	Input any
}

// world is the fake account.
type world struct {
	mu       sync.Mutex
	region   string
	next     int
	requests []request
	// Faults: inject[op] errors are returned (before the call has any effect) by the next calls of op.
	inject map[string][]error
	// killAfter > 0: the killAfter-th mutating call takes effect, then it and every later call fail with
	// errKilled, as when the process dies after AWS accepted a request.
	killAfter, mutations int
	dead                 bool
	// latency until a created resource is ready, by kind: "eks", "nodegroup", "nat", and every call.
	latency map[string]time.Duration

	vpcs    map[string]*fvpc
	igws    map[string]*figw
	subnets map[string]*fsubnet
	eips    map[string][]ec2types.Tag
	nats    map[string]*fnat
	rts     map[string]*frt
	roles   map[string]*frole
	oidc    map[string][]iamtypes.Tag
	eks     map[string]*feks
	buckets map[string]*fbucket
	zones   map[string]*fzone // Route 53 hosted zones by ID (fake_route53_test.go)
	lbs     map[string]*flb   // classic load balancers by name (fake_elb_test.go)
	sgs     map[string]*fsg   // security groups by ID (fake_elb_test.go)
	// recordPage is how many record sets ListResourceRecordSets returns per page without MaxItems.
	recordPage int
}

type fvpc struct {
	tags []ec2types.Tag
	dns  bool
}
type figw struct {
	tags     []ec2types.Tag
	attached string
}
type fsubnet struct {
	vpc, cidr, zone string
	tags            []ec2types.Tag
}
type fnat struct {
	subnet, eip string
	tags        []ec2types.Tag
	readyAt     time.Time
	deleted     bool
}
type frt struct {
	vpc    string
	tags   []ec2types.Tag
	routes map[string]string // destination → target
	assocs map[string]string // association ID → subnet
}
type frole struct {
	path, trust string
	tags        []iamtypes.Tag
	attached    []string
	inline      map[string]string
}
type feks struct {
	in         *eks.CreateClusterInput
	public     []string // publicAccessCidrs
	updating   bool     // an UpdateClusterConfig runs until readyAt
	readyAt    time.Time
	deleteAt   time.Time
	deleting   bool
	nodegroups map[string]*fng
	access     map[string]*faccess // by principal ARN
	addons     map[string]*faddon
}
type faddon struct {
	in      *eks.CreateAddonInput
	readyAt time.Time
}
type faccess struct {
	tags     map[string]string
	policies []string // "policy ARN scope"
}
type fng struct {
	in       *eks.CreateNodegroupInput
	readyAt  time.Time
	deleteAt time.Time
	deleting bool
	desired  int32
}
type fbucket struct {
	tags      []s3types.Tag
	lifecycle []s3types.LifecycleRule
	enc       *s3types.ServerSideEncryptionConfiguration
	pab       *s3types.PublicAccessBlockConfiguration
	objects   int
}

func newWorld(region string) *world {
	return &world{region: region, inject: map[string][]error{}, latency: map[string]time.Duration{},
		vpcs: map[string]*fvpc{}, igws: map[string]*figw{}, subnets: map[string]*fsubnet{}, eips: map[string][]ec2types.Tag{},
		nats: map[string]*fnat{}, rts: map[string]*frt{}, roles: map[string]*frole{}, oidc: map[string][]iamtypes.Tag{},
		eks: map[string]*feks{}, buckets: map[string]*fbucket{}, zones: map[string]*fzone{}, recordPage: 300,
		lbs: map[string]*flb{}, sgs: map[string]*fsg{}}
}

// clients are the fake APIs of the world; S3 is fakeS3 unless the test sets a real one.
func (w *world) clients() *Clients {
	return &Clients{Region: w.region, S3: (*fakeS3)(w), EC2: (*fakeEC2)(w), IAM: (*fakeIAM)(w), EKS: (*fakeEKS)(w),
		Route53: (*fakeRoute53)(w), ELB: (*fakeELB)(w), PollInterval: 10 * time.Second}
}

// call records a request and applies the faults; it returns with w.mu held (release with w.done).
func (w *world) call(op string, in any) error {
	w.mu.Lock()
	w.requests = append(w.requests, request{op, in})
	if w.dead {
		w.mu.Unlock()
		return errKilled
	}
	if errs := w.inject[op]; len(errs) > 0 {
		w.inject[op] = errs[1:]
		w.mu.Unlock()
		return errs[0]
	}
	w.mu.Unlock()
	if d := w.latency["call"]; d > 0 {
		time.Sleep(d)
	}
	w.mu.Lock()
	return nil
}

// done ends a call; a mutating call may be the one after which the installer is killed.
func (w *world) done(mutating bool) error {
	defer w.mu.Unlock()
	if mutating {
		w.mutations++
		if w.killAfter > 0 && w.mutations == w.killAfter {
			w.dead = true
			return errKilled
		}
	}
	return nil
}

func (w *world) id(prefix string) string { w.next++; return fmt.Sprintf("%s-%04d", prefix, w.next) }

// ops lists the operations called, in order, optionally only those starting with prefix.
func (w *world) ops(prefix string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, r := range w.requests {
		if strings.HasPrefix(r.Op, prefix) {
			out = append(out, r.Op)
		}
	}
	return out
}

// inputs returns the inputs of every call of op.
func inputs[T any](w *world, op string) []T {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []T
	for _, r := range w.requests {
		if r.Op == op {
			out = append(out, r.Input.(T))
		}
	}
	return out
}

// inventory is every resource in the world, for comparing runs.
func (w *world) inventory() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, v := range w.vpcs {
		out = append(out, fmt.Sprintf("vpc %s dns=%v", tagValue(v.tags, "Name"), v.dns))
	}
	for _, g := range w.igws {
		out = append(out, fmt.Sprintf("igw attached=%v", g.attached != ""))
	}
	for _, s := range w.subnets {
		out = append(out, "subnet "+tagValue(s.tags, "Name")+" "+s.cidr)
	}
	for range w.eips {
		out = append(out, "eip")
	}
	for _, n := range w.nats {
		if !n.deleted {
			out = append(out, "nat")
		}
	}
	for _, rt := range w.rts {
		out = append(out, fmt.Sprintf("route-table %s routes=%d assocs=%d", tagValue(rt.tags, "Name"), len(rt.routes), len(rt.assocs)))
	}
	for name, r := range w.roles {
		out = append(out, fmt.Sprintf("role %s policies=%d inline=%d", name, len(r.attached), len(r.inline)))
	}
	for range w.oidc {
		out = append(out, "oidc-provider")
	}
	for name, c := range w.eks {
		out = append(out, "eks "+name+" public="+strings.Join(c.public, ","))
		for ng, g := range c.nodegroups {
			out = append(out, fmt.Sprintf("nodegroup %s desired=%d", ng, g.desired))
		}
		for name, a := range c.addons {
			out = append(out, fmt.Sprintf("addon %s role=%s", name, aws.ToString(a.in.ServiceAccountRoleArn)))
		}
		for principal, a := range c.access {
			out = append(out, fmt.Sprintf("access-entry %s owner=%s policies=%v", principal, a.tags[cloud.OwnerTag], a.policies))
		}
	}
	for name, b := range w.buckets {
		out = append(out, fmt.Sprintf("bucket %s rules=%d enc=%v pab=%v", name, len(b.lifecycle), b.enc != nil, b.pab != nil))
	}
	for name, lb := range w.lbs {
		out = append(out, fmt.Sprintf("load-balancer %s subnets=%d groups=%v", name, len(lb.subnets), lb.groups))
	}
	for id, g := range w.sgs {
		out = append(out, fmt.Sprintf("security-group %s %s", id, tagValue(g.tags, "Name")))
	}
	for id, z := range w.zones {
		for _, r := range z.records {
			out = append(out, fmt.Sprintf("record %s %s %s %s", id, aws.ToString(r.Name), r.Type, strings.Join(recordValues(r), " ")))
		}
	}
	slices.Sort(out)
	return out
}

// matches applies EC2 filters: tag:KEY, tag-key, vpc-id.
func matches(filters []ec2types.Filter, tags []ec2types.Tag, vpc string) bool {
	for _, f := range filters {
		name := aws.ToString(f.Name)
		switch {
		case strings.HasPrefix(name, "tag:"):
			if !slices.Contains(f.Values, tagValue(tags, strings.TrimPrefix(name, "tag:"))) {
				return false
			}
		case name == "tag-key":
			ok := false
			for _, t := range tags {
				ok = ok || slices.Contains(f.Values, aws.ToString(t.Key))
			}
			if !ok {
				return false
			}
		case name == "vpc-id":
			if !slices.Contains(f.Values, vpc) {
				return false
			}
		default:
			panic("fake EC2: unsupported filter " + name)
		}
	}
	return true
}

func specTags(specs []ec2types.TagSpecification) []ec2types.Tag {
	if len(specs) == 0 {
		return nil
	}
	return specs[0].Tags
}

func wanted(ids []string, id string) bool { return len(ids) == 0 || slices.Contains(ids, id) }

type fakeEC2 world

func (f *fakeEC2) w() *world { return (*world)(f) }

func (f *fakeEC2) DescribeVpcs(_ context.Context, in *ec2.DescribeVpcsInput, _ ...func(*ec2.Options)) (*ec2.DescribeVpcsOutput, error) {
	w := f.w()
	if err := w.call("ec2:DescribeVpcs", in); err != nil {
		return nil, err
	}
	out := &ec2.DescribeVpcsOutput{}
	for _, id := range sortedKeys(w.vpcs) {
		if v := w.vpcs[id]; wanted(in.VpcIds, id) && matches(in.Filters, v.tags, id) {
			out.Vpcs = append(out.Vpcs, ec2types.Vpc{VpcId: aws.String(id), Tags: v.tags})
		}
	}
	return out, w.done(false)
}

func (f *fakeEC2) CreateVpc(_ context.Context, in *ec2.CreateVpcInput, _ ...func(*ec2.Options)) (*ec2.CreateVpcOutput, error) {
	w := f.w()
	if err := w.call("ec2:CreateVpc", in); err != nil {
		return nil, err
	}
	id := w.id("vpc")
	w.vpcs[id] = &fvpc{tags: specTags(in.TagSpecifications)}
	return &ec2.CreateVpcOutput{Vpc: &ec2types.Vpc{VpcId: aws.String(id)}}, w.done(true)
}

func (f *fakeEC2) DescribeVpcAttribute(_ context.Context, in *ec2.DescribeVpcAttributeInput, _ ...func(*ec2.Options)) (*ec2.DescribeVpcAttributeOutput, error) {
	w := f.w()
	if err := w.call("ec2:DescribeVpcAttribute", in); err != nil {
		return nil, err
	}
	v := w.vpcs[aws.ToString(in.VpcId)]
	if v == nil {
		w.done(false)
		return nil, apiErr("InvalidVpcID.NotFound")
	}
	return &ec2.DescribeVpcAttributeOutput{EnableDnsHostnames: &ec2types.AttributeBooleanValue{Value: aws.Bool(v.dns)}}, w.done(false)
}

func (f *fakeEC2) ModifyVpcAttribute(_ context.Context, in *ec2.ModifyVpcAttributeInput, _ ...func(*ec2.Options)) (*ec2.ModifyVpcAttributeOutput, error) {
	w := f.w()
	if err := w.call("ec2:ModifyVpcAttribute", in); err != nil {
		return nil, err
	}
	v := w.vpcs[aws.ToString(in.VpcId)]
	if v == nil {
		w.done(false)
		return nil, apiErr("InvalidVpcID.NotFound")
	}
	v.dns = aws.ToBool(in.EnableDnsHostnames.Value)
	return &ec2.ModifyVpcAttributeOutput{}, w.done(true)
}

func (f *fakeEC2) DeleteVpc(_ context.Context, in *ec2.DeleteVpcInput, _ ...func(*ec2.Options)) (*ec2.DeleteVpcOutput, error) {
	w := f.w()
	if err := w.call("ec2:DeleteVpc", in); err != nil {
		return nil, err
	}
	id := aws.ToString(in.VpcId)
	if w.vpcs[id] == nil {
		w.done(false)
		return nil, apiErr("InvalidVpcID.NotFound")
	}
	for _, s := range w.subnets {
		if s.vpc == id {
			w.done(false)
			return nil, apiErr("DependencyViolation")
		}
	}
	for _, g := range w.igws {
		if g.attached == id {
			w.done(false)
			return nil, apiErr("DependencyViolation")
		}
	}
	for _, rt := range w.rts {
		if rt.vpc == id {
			w.done(false)
			return nil, apiErr("DependencyViolation")
		}
	}
	for _, g := range w.sgs {
		if g.vpc == id {
			w.done(false)
			return nil, apiErr("DependencyViolation")
		}
	}
	delete(w.vpcs, id)
	return &ec2.DeleteVpcOutput{}, w.done(true)
}

func (f *fakeEC2) DescribeInternetGateways(_ context.Context, in *ec2.DescribeInternetGatewaysInput, _ ...func(*ec2.Options)) (*ec2.DescribeInternetGatewaysOutput, error) {
	w := f.w()
	if err := w.call("ec2:DescribeInternetGateways", in); err != nil {
		return nil, err
	}
	out := &ec2.DescribeInternetGatewaysOutput{}
	for _, id := range sortedKeys(w.igws) {
		g := w.igws[id]
		if !wanted(in.InternetGatewayIds, id) || !matches(in.Filters, g.tags, "") {
			continue
		}
		ig := ec2types.InternetGateway{InternetGatewayId: aws.String(id), Tags: g.tags}
		if g.attached != "" {
			ig.Attachments = []ec2types.InternetGatewayAttachment{{VpcId: aws.String(g.attached)}}
		}
		out.InternetGateways = append(out.InternetGateways, ig)
	}
	return out, w.done(false)
}

func (f *fakeEC2) CreateInternetGateway(_ context.Context, in *ec2.CreateInternetGatewayInput, _ ...func(*ec2.Options)) (*ec2.CreateInternetGatewayOutput, error) {
	w := f.w()
	if err := w.call("ec2:CreateInternetGateway", in); err != nil {
		return nil, err
	}
	id := w.id("igw")
	w.igws[id] = &figw{tags: specTags(in.TagSpecifications)}
	return &ec2.CreateInternetGatewayOutput{InternetGateway: &ec2types.InternetGateway{InternetGatewayId: aws.String(id)}}, w.done(true)
}

func (f *fakeEC2) AttachInternetGateway(_ context.Context, in *ec2.AttachInternetGatewayInput, _ ...func(*ec2.Options)) (*ec2.AttachInternetGatewayOutput, error) {
	w := f.w()
	if err := w.call("ec2:AttachInternetGateway", in); err != nil {
		return nil, err
	}
	g := w.igws[aws.ToString(in.InternetGatewayId)]
	if g == nil || w.vpcs[aws.ToString(in.VpcId)] == nil {
		w.done(false)
		return nil, apiErr("InvalidInternetGatewayID.NotFound")
	}
	if g.attached != "" {
		w.done(false)
		return nil, apiErr("Resource.AlreadyAssociated")
	}
	g.attached = aws.ToString(in.VpcId)
	return &ec2.AttachInternetGatewayOutput{}, w.done(true)
}

func (f *fakeEC2) DetachInternetGateway(_ context.Context, in *ec2.DetachInternetGatewayInput, _ ...func(*ec2.Options)) (*ec2.DetachInternetGatewayOutput, error) {
	w := f.w()
	if err := w.call("ec2:DetachInternetGateway", in); err != nil {
		return nil, err
	}
	g := w.igws[aws.ToString(in.InternetGatewayId)]
	if g == nil {
		w.done(false)
		return nil, apiErr("InvalidInternetGatewayID.NotFound")
	}
	g.attached = ""
	return &ec2.DetachInternetGatewayOutput{}, w.done(true)
}

func (f *fakeEC2) DeleteInternetGateway(_ context.Context, in *ec2.DeleteInternetGatewayInput, _ ...func(*ec2.Options)) (*ec2.DeleteInternetGatewayOutput, error) {
	w := f.w()
	if err := w.call("ec2:DeleteInternetGateway", in); err != nil {
		return nil, err
	}
	g := w.igws[aws.ToString(in.InternetGatewayId)]
	if g == nil {
		w.done(false)
		return nil, apiErr("InvalidInternetGatewayID.NotFound")
	}
	if g.attached != "" {
		w.done(false)
		return nil, apiErr("DependencyViolation")
	}
	delete(w.igws, aws.ToString(in.InternetGatewayId))
	return &ec2.DeleteInternetGatewayOutput{}, w.done(true)
}

func (f *fakeEC2) DescribeSubnets(_ context.Context, in *ec2.DescribeSubnetsInput, _ ...func(*ec2.Options)) (*ec2.DescribeSubnetsOutput, error) {
	w := f.w()
	if err := w.call("ec2:DescribeSubnets", in); err != nil {
		return nil, err
	}
	out := &ec2.DescribeSubnetsOutput{}
	for _, id := range sortedKeys(w.subnets) {
		if s := w.subnets[id]; wanted(in.SubnetIds, id) && matches(in.Filters, s.tags, s.vpc) {
			out.Subnets = append(out.Subnets, ec2types.Subnet{SubnetId: aws.String(id), VpcId: aws.String(s.vpc), Tags: s.tags})
		}
	}
	return out, w.done(false)
}

func (f *fakeEC2) CreateSubnet(_ context.Context, in *ec2.CreateSubnetInput, _ ...func(*ec2.Options)) (*ec2.CreateSubnetOutput, error) {
	w := f.w()
	if err := w.call("ec2:CreateSubnet", in); err != nil {
		return nil, err
	}
	if w.vpcs[aws.ToString(in.VpcId)] == nil {
		w.done(false)
		return nil, apiErr("InvalidVpcID.NotFound")
	}
	for _, s := range w.subnets {
		if s.vpc == aws.ToString(in.VpcId) && s.cidr == aws.ToString(in.CidrBlock) {
			w.done(false)
			return nil, apiErr("InvalidSubnet.Conflict")
		}
	}
	id := w.id("subnet")
	w.subnets[id] = &fsubnet{vpc: aws.ToString(in.VpcId), cidr: aws.ToString(in.CidrBlock), zone: aws.ToString(in.AvailabilityZone), tags: specTags(in.TagSpecifications)}
	return &ec2.CreateSubnetOutput{Subnet: &ec2types.Subnet{SubnetId: aws.String(id)}}, w.done(true)
}

func (f *fakeEC2) DeleteSubnet(_ context.Context, in *ec2.DeleteSubnetInput, _ ...func(*ec2.Options)) (*ec2.DeleteSubnetOutput, error) {
	w := f.w()
	if err := w.call("ec2:DeleteSubnet", in); err != nil {
		return nil, err
	}
	id := aws.ToString(in.SubnetId)
	if w.subnets[id] == nil {
		w.done(false)
		return nil, apiErr("InvalidSubnetID.NotFound")
	}
	for _, n := range w.nats {
		if n.subnet == id && !n.deleted {
			w.done(false)
			return nil, apiErr("DependencyViolation")
		}
	}
	for _, c := range w.eks {
		if slices.Contains(c.in.ResourcesVpcConfig.SubnetIds, id) {
			w.done(false)
			return nil, apiErr("DependencyViolation")
		}
	}
	for _, lb := range w.lbs {
		if slices.Contains(lb.subnets, id) {
			w.done(false)
			return nil, apiErr("DependencyViolation")
		}
	}
	delete(w.subnets, id)
	return &ec2.DeleteSubnetOutput{}, w.done(true)
}

func (f *fakeEC2) DescribeAddresses(_ context.Context, in *ec2.DescribeAddressesInput, _ ...func(*ec2.Options)) (*ec2.DescribeAddressesOutput, error) {
	w := f.w()
	if err := w.call("ec2:DescribeAddresses", in); err != nil {
		return nil, err
	}
	out := &ec2.DescribeAddressesOutput{}
	for _, id := range sortedKeys(w.eips) {
		if matches(in.Filters, w.eips[id], "") {
			out.Addresses = append(out.Addresses, ec2types.Address{AllocationId: aws.String(id), Tags: w.eips[id]})
		}
	}
	return out, w.done(false)
}

func (f *fakeEC2) AllocateAddress(_ context.Context, in *ec2.AllocateAddressInput, _ ...func(*ec2.Options)) (*ec2.AllocateAddressOutput, error) {
	w := f.w()
	if err := w.call("ec2:AllocateAddress", in); err != nil {
		return nil, err
	}
	id := w.id("eipalloc")
	w.eips[id] = specTags(in.TagSpecifications)
	return &ec2.AllocateAddressOutput{AllocationId: aws.String(id)}, w.done(true)
}

func (f *fakeEC2) ReleaseAddress(_ context.Context, in *ec2.ReleaseAddressInput, _ ...func(*ec2.Options)) (*ec2.ReleaseAddressOutput, error) {
	w := f.w()
	if err := w.call("ec2:ReleaseAddress", in); err != nil {
		return nil, err
	}
	id := aws.ToString(in.AllocationId)
	if _, ok := w.eips[id]; !ok {
		w.done(false)
		return nil, apiErr("InvalidAllocationID.NotFound")
	}
	for _, n := range w.nats {
		if n.eip == id && !n.deleted {
			w.done(false)
			return nil, apiErr("InvalidIPAddress.InUse")
		}
	}
	delete(w.eips, id)
	return &ec2.ReleaseAddressOutput{}, w.done(true)
}

func (f *fakeEC2) DescribeNatGateways(_ context.Context, in *ec2.DescribeNatGatewaysInput, _ ...func(*ec2.Options)) (*ec2.DescribeNatGatewaysOutput, error) {
	w := f.w()
	if err := w.call("ec2:DescribeNatGateways", in); err != nil {
		return nil, err
	}
	out := &ec2.DescribeNatGatewaysOutput{}
	for _, id := range sortedKeys(w.nats) {
		n := w.nats[id]
		if !wanted(in.NatGatewayIds, id) || !matches(in.Filter, n.tags, "") {
			continue
		}
		state := ec2types.NatGatewayStatePending
		switch {
		case n.deleted:
			state = ec2types.NatGatewayStateDeleted
		case !time.Now().Before(n.readyAt):
			state = ec2types.NatGatewayStateAvailable
		}
		out.NatGateways = append(out.NatGateways, ec2types.NatGateway{NatGatewayId: aws.String(id), State: state, Tags: n.tags, SubnetId: aws.String(n.subnet)})
	}
	return out, w.done(false)
}

func (f *fakeEC2) CreateNatGateway(_ context.Context, in *ec2.CreateNatGatewayInput, _ ...func(*ec2.Options)) (*ec2.CreateNatGatewayOutput, error) {
	w := f.w()
	if err := w.call("ec2:CreateNatGateway", in); err != nil {
		return nil, err
	}
	if w.subnets[aws.ToString(in.SubnetId)] == nil {
		w.done(false)
		return nil, apiErr("InvalidSubnetID.NotFound")
	}
	if _, ok := w.eips[aws.ToString(in.AllocationId)]; !ok {
		w.done(false)
		return nil, apiErr("InvalidAllocationID.NotFound")
	}
	id := w.id("nat")
	w.nats[id] = &fnat{subnet: aws.ToString(in.SubnetId), eip: aws.ToString(in.AllocationId), tags: specTags(in.TagSpecifications),
		readyAt: time.Now().Add(w.latency["nat"])}
	return &ec2.CreateNatGatewayOutput{NatGateway: &ec2types.NatGateway{NatGatewayId: aws.String(id)}}, w.done(true)
}

func (f *fakeEC2) DeleteNatGateway(_ context.Context, in *ec2.DeleteNatGatewayInput, _ ...func(*ec2.Options)) (*ec2.DeleteNatGatewayOutput, error) {
	w := f.w()
	if err := w.call("ec2:DeleteNatGateway", in); err != nil {
		return nil, err
	}
	n := w.nats[aws.ToString(in.NatGatewayId)]
	if n == nil {
		w.done(false)
		return nil, apiErr("NatGatewayNotFound")
	}
	n.deleted = true
	return &ec2.DeleteNatGatewayOutput{}, w.done(true)
}

func (f *fakeEC2) DescribeRouteTables(_ context.Context, in *ec2.DescribeRouteTablesInput, _ ...func(*ec2.Options)) (*ec2.DescribeRouteTablesOutput, error) {
	w := f.w()
	if err := w.call("ec2:DescribeRouteTables", in); err != nil {
		return nil, err
	}
	out := &ec2.DescribeRouteTablesOutput{}
	for _, id := range sortedKeys(w.rts) {
		rt := w.rts[id]
		if !wanted(in.RouteTableIds, id) || !matches(in.Filters, rt.tags, rt.vpc) {
			continue
		}
		t := ec2types.RouteTable{RouteTableId: aws.String(id), VpcId: aws.String(rt.vpc), Tags: rt.tags}
		for dest, target := range rt.routes {
			r := ec2types.Route{DestinationCidrBlock: aws.String(dest)}
			if strings.HasPrefix(target, "nat-") {
				r.NatGatewayId = aws.String(target)
			} else {
				r.GatewayId = aws.String(target)
			}
			t.Routes = append(t.Routes, r)
		}
		for _, a := range sortedKeys(rt.assocs) {
			t.Associations = append(t.Associations, ec2types.RouteTableAssociation{RouteTableAssociationId: aws.String(a), SubnetId: aws.String(rt.assocs[a])})
		}
		out.RouteTables = append(out.RouteTables, t)
	}
	return out, w.done(false)
}

func (f *fakeEC2) CreateRouteTable(_ context.Context, in *ec2.CreateRouteTableInput, _ ...func(*ec2.Options)) (*ec2.CreateRouteTableOutput, error) {
	w := f.w()
	if err := w.call("ec2:CreateRouteTable", in); err != nil {
		return nil, err
	}
	id := w.id("rtb")
	w.rts[id] = &frt{vpc: aws.ToString(in.VpcId), tags: specTags(in.TagSpecifications), routes: map[string]string{}, assocs: map[string]string{}}
	return &ec2.CreateRouteTableOutput{RouteTable: &ec2types.RouteTable{RouteTableId: aws.String(id)}}, w.done(true)
}

func (f *fakeEC2) CreateRoute(_ context.Context, in *ec2.CreateRouteInput, _ ...func(*ec2.Options)) (*ec2.CreateRouteOutput, error) {
	w := f.w()
	if err := w.call("ec2:CreateRoute", in); err != nil {
		return nil, err
	}
	rt := w.rts[aws.ToString(in.RouteTableId)]
	if rt == nil {
		w.done(false)
		return nil, apiErr("InvalidRouteTableID.NotFound")
	}
	if _, ok := rt.routes[aws.ToString(in.DestinationCidrBlock)]; ok {
		w.done(false)
		return nil, apiErr("RouteAlreadyExists")
	}
	rt.routes[aws.ToString(in.DestinationCidrBlock)] = aws.ToString(in.GatewayId) + aws.ToString(in.NatGatewayId)
	return &ec2.CreateRouteOutput{Return: aws.Bool(true)}, w.done(true)
}

func (f *fakeEC2) AssociateRouteTable(_ context.Context, in *ec2.AssociateRouteTableInput, _ ...func(*ec2.Options)) (*ec2.AssociateRouteTableOutput, error) {
	w := f.w()
	if err := w.call("ec2:AssociateRouteTable", in); err != nil {
		return nil, err
	}
	rt := w.rts[aws.ToString(in.RouteTableId)]
	if rt == nil || w.subnets[aws.ToString(in.SubnetId)] == nil {
		w.done(false)
		return nil, apiErr("InvalidRouteTableID.NotFound")
	}
	for _, other := range w.rts {
		for _, s := range other.assocs {
			if s == aws.ToString(in.SubnetId) {
				w.done(false)
				return nil, apiErr("Resource.AlreadyAssociated")
			}
		}
	}
	id := w.id("rtbassoc")
	rt.assocs[id] = aws.ToString(in.SubnetId)
	return &ec2.AssociateRouteTableOutput{AssociationId: aws.String(id)}, w.done(true)
}

func (f *fakeEC2) DisassociateRouteTable(_ context.Context, in *ec2.DisassociateRouteTableInput, _ ...func(*ec2.Options)) (*ec2.DisassociateRouteTableOutput, error) {
	w := f.w()
	if err := w.call("ec2:DisassociateRouteTable", in); err != nil {
		return nil, err
	}
	for _, rt := range w.rts {
		if _, ok := rt.assocs[aws.ToString(in.AssociationId)]; ok {
			delete(rt.assocs, aws.ToString(in.AssociationId))
			return &ec2.DisassociateRouteTableOutput{}, w.done(true)
		}
	}
	w.done(false)
	return nil, apiErr("InvalidAssociationID.NotFound")
}

func (f *fakeEC2) DeleteRouteTable(_ context.Context, in *ec2.DeleteRouteTableInput, _ ...func(*ec2.Options)) (*ec2.DeleteRouteTableOutput, error) {
	w := f.w()
	if err := w.call("ec2:DeleteRouteTable", in); err != nil {
		return nil, err
	}
	rt := w.rts[aws.ToString(in.RouteTableId)]
	if rt == nil {
		w.done(false)
		return nil, apiErr("InvalidRouteTableID.NotFound")
	}
	if len(rt.assocs) > 0 {
		w.done(false)
		return nil, apiErr("DependencyViolation")
	}
	delete(w.rts, aws.ToString(in.RouteTableId))
	return &ec2.DeleteRouteTableOutput{}, w.done(true)
}

const account = "123456789012"

type fakeIAM world

func (f *fakeIAM) w() *world { return (*world)(f) }

func noSuchEntity() error {
	return &iamtypes.NoSuchEntityException{Message: aws.String("not found (simulated)")}
}

func (f *fakeIAM) role(name string) (*frole, error) {
	r := f.roles[name]
	if r == nil {
		f.w().done(false)
		return nil, noSuchEntity()
	}
	return r, nil
}

func roleARN(path, name string) string { return "arn:aws:iam::" + account + ":role" + path + name }

func (f *fakeIAM) GetRole(_ context.Context, in *iam.GetRoleInput, _ ...func(*iam.Options)) (*iam.GetRoleOutput, error) {
	if err := f.w().call("iam:GetRole", in); err != nil {
		return nil, err
	}
	r, err := f.role(aws.ToString(in.RoleName))
	if err != nil {
		return nil, err
	}
	return &iam.GetRoleOutput{Role: &iamtypes.Role{RoleName: in.RoleName, Arn: aws.String(roleARN(r.path, aws.ToString(in.RoleName))),
		AssumeRolePolicyDocument: aws.String(strings.ReplaceAll(r.trust, ":", "%3A")), Tags: r.tags}}, f.w().done(false)
}

func (f *fakeIAM) CreateRole(_ context.Context, in *iam.CreateRoleInput, _ ...func(*iam.Options)) (*iam.CreateRoleOutput, error) {
	if err := f.w().call("iam:CreateRole", in); err != nil {
		return nil, err
	}
	if f.roles[aws.ToString(in.RoleName)] != nil {
		f.w().done(false)
		return nil, &iamtypes.EntityAlreadyExistsException{Message: aws.String("exists")}
	}
	f.roles[aws.ToString(in.RoleName)] = &frole{path: aws.ToString(in.Path), trust: aws.ToString(in.AssumeRolePolicyDocument), tags: in.Tags, inline: map[string]string{}}
	return &iam.CreateRoleOutput{}, f.w().done(true)
}

func (f *fakeIAM) UpdateAssumeRolePolicy(_ context.Context, in *iam.UpdateAssumeRolePolicyInput, _ ...func(*iam.Options)) (*iam.UpdateAssumeRolePolicyOutput, error) {
	if err := f.w().call("iam:UpdateAssumeRolePolicy", in); err != nil {
		return nil, err
	}
	r, err := f.role(aws.ToString(in.RoleName))
	if err != nil {
		return nil, err
	}
	r.trust = aws.ToString(in.PolicyDocument)
	return &iam.UpdateAssumeRolePolicyOutput{}, f.w().done(true)
}

func (f *fakeIAM) DeleteRole(_ context.Context, in *iam.DeleteRoleInput, _ ...func(*iam.Options)) (*iam.DeleteRoleOutput, error) {
	if err := f.w().call("iam:DeleteRole", in); err != nil {
		return nil, err
	}
	r, err := f.role(aws.ToString(in.RoleName))
	if err != nil {
		return nil, err
	}
	if len(r.attached) > 0 || len(r.inline) > 0 {
		f.w().done(false)
		return nil, &iamtypes.DeleteConflictException{Message: aws.String("must detach policies first")}
	}
	delete(f.roles, aws.ToString(in.RoleName))
	return &iam.DeleteRoleOutput{}, f.w().done(true)
}

func (f *fakeIAM) ListRoles(_ context.Context, in *iam.ListRolesInput, _ ...func(*iam.Options)) (*iam.ListRolesOutput, error) {
	if err := f.w().call("iam:ListRoles", in); err != nil {
		return nil, err
	}
	out := &iam.ListRolesOutput{}
	for _, name := range sortedKeys(f.roles) {
		if strings.HasPrefix(f.roles[name].path, aws.ToString(in.PathPrefix)) {
			out.Roles = append(out.Roles, iamtypes.Role{RoleName: aws.String(name)}) // ListRoles returns no tags
		}
	}
	return out, f.w().done(false)
}

func (f *fakeIAM) ListAttachedRolePolicies(_ context.Context, in *iam.ListAttachedRolePoliciesInput, _ ...func(*iam.Options)) (*iam.ListAttachedRolePoliciesOutput, error) {
	if err := f.w().call("iam:ListAttachedRolePolicies", in); err != nil {
		return nil, err
	}
	r, err := f.role(aws.ToString(in.RoleName))
	if err != nil {
		return nil, err
	}
	out := &iam.ListAttachedRolePoliciesOutput{}
	for _, p := range r.attached {
		out.AttachedPolicies = append(out.AttachedPolicies, iamtypes.AttachedPolicy{PolicyArn: aws.String(p)})
	}
	return out, f.w().done(false)
}

func (f *fakeIAM) AttachRolePolicy(_ context.Context, in *iam.AttachRolePolicyInput, _ ...func(*iam.Options)) (*iam.AttachRolePolicyOutput, error) {
	if err := f.w().call("iam:AttachRolePolicy", in); err != nil {
		return nil, err
	}
	r, err := f.role(aws.ToString(in.RoleName))
	if err != nil {
		return nil, err
	}
	if !slices.Contains(r.attached, aws.ToString(in.PolicyArn)) {
		r.attached = append(r.attached, aws.ToString(in.PolicyArn))
	}
	return &iam.AttachRolePolicyOutput{}, f.w().done(true)
}

func (f *fakeIAM) DetachRolePolicy(_ context.Context, in *iam.DetachRolePolicyInput, _ ...func(*iam.Options)) (*iam.DetachRolePolicyOutput, error) {
	if err := f.w().call("iam:DetachRolePolicy", in); err != nil {
		return nil, err
	}
	r, err := f.role(aws.ToString(in.RoleName))
	if err != nil {
		return nil, err
	}
	r.attached = slices.DeleteFunc(r.attached, func(p string) bool { return p == aws.ToString(in.PolicyArn) })
	return &iam.DetachRolePolicyOutput{}, f.w().done(true)
}

func (f *fakeIAM) GetRolePolicy(_ context.Context, in *iam.GetRolePolicyInput, _ ...func(*iam.Options)) (*iam.GetRolePolicyOutput, error) {
	if err := f.w().call("iam:GetRolePolicy", in); err != nil {
		return nil, err
	}
	r, err := f.role(aws.ToString(in.RoleName))
	if err != nil {
		return nil, err
	}
	doc, ok := r.inline[aws.ToString(in.PolicyName)]
	if !ok {
		f.w().done(false)
		return nil, noSuchEntity()
	}
	return &iam.GetRolePolicyOutput{PolicyDocument: aws.String(doc)}, f.w().done(false)
}

func (f *fakeIAM) PutRolePolicy(_ context.Context, in *iam.PutRolePolicyInput, _ ...func(*iam.Options)) (*iam.PutRolePolicyOutput, error) {
	if err := f.w().call("iam:PutRolePolicy", in); err != nil {
		return nil, err
	}
	r, err := f.role(aws.ToString(in.RoleName))
	if err != nil {
		return nil, err
	}
	r.inline[aws.ToString(in.PolicyName)] = aws.ToString(in.PolicyDocument)
	return &iam.PutRolePolicyOutput{}, f.w().done(true)
}

func (f *fakeIAM) ListRolePolicies(_ context.Context, in *iam.ListRolePoliciesInput, _ ...func(*iam.Options)) (*iam.ListRolePoliciesOutput, error) {
	if err := f.w().call("iam:ListRolePolicies", in); err != nil {
		return nil, err
	}
	r, err := f.role(aws.ToString(in.RoleName))
	if err != nil {
		return nil, err
	}
	return &iam.ListRolePoliciesOutput{PolicyNames: sortedKeys(r.inline)}, f.w().done(false)
}

func (f *fakeIAM) DeleteRolePolicy(_ context.Context, in *iam.DeleteRolePolicyInput, _ ...func(*iam.Options)) (*iam.DeleteRolePolicyOutput, error) {
	if err := f.w().call("iam:DeleteRolePolicy", in); err != nil {
		return nil, err
	}
	r, err := f.role(aws.ToString(in.RoleName))
	if err != nil {
		return nil, err
	}
	delete(r.inline, aws.ToString(in.PolicyName))
	return &iam.DeleteRolePolicyOutput{}, f.w().done(true)
}

func (f *fakeIAM) ListOpenIDConnectProviders(_ context.Context, in *iam.ListOpenIDConnectProvidersInput, _ ...func(*iam.Options)) (*iam.ListOpenIDConnectProvidersOutput, error) {
	if err := f.w().call("iam:ListOpenIDConnectProviders", in); err != nil {
		return nil, err
	}
	out := &iam.ListOpenIDConnectProvidersOutput{}
	for _, arn := range sortedKeys(f.oidc) {
		out.OpenIDConnectProviderList = append(out.OpenIDConnectProviderList, iamtypes.OpenIDConnectProviderListEntry{Arn: aws.String(arn)})
	}
	return out, f.w().done(false)
}

func (f *fakeIAM) GetOpenIDConnectProvider(_ context.Context, in *iam.GetOpenIDConnectProviderInput, _ ...func(*iam.Options)) (*iam.GetOpenIDConnectProviderOutput, error) {
	if err := f.w().call("iam:GetOpenIDConnectProvider", in); err != nil {
		return nil, err
	}
	tags, ok := f.oidc[aws.ToString(in.OpenIDConnectProviderArn)]
	if !ok {
		f.w().done(false)
		return nil, noSuchEntity()
	}
	return &iam.GetOpenIDConnectProviderOutput{Tags: tags}, f.w().done(false)
}

func (f *fakeIAM) CreateOpenIDConnectProvider(_ context.Context, in *iam.CreateOpenIDConnectProviderInput, _ ...func(*iam.Options)) (*iam.CreateOpenIDConnectProviderOutput, error) {
	if err := f.w().call("iam:CreateOpenIDConnectProvider", in); err != nil {
		return nil, err
	}
	arn := "arn:aws:iam::" + account + ":oidc-provider/" + strings.TrimPrefix(aws.ToString(in.Url), "https://")
	if _, ok := f.oidc[arn]; ok {
		f.w().done(false)
		return nil, &iamtypes.EntityAlreadyExistsException{Message: aws.String("exists")}
	}
	f.oidc[arn] = in.Tags
	return &iam.CreateOpenIDConnectProviderOutput{OpenIDConnectProviderArn: aws.String(arn)}, f.w().done(true)
}

func (f *fakeIAM) DeleteOpenIDConnectProvider(_ context.Context, in *iam.DeleteOpenIDConnectProviderInput, _ ...func(*iam.Options)) (*iam.DeleteOpenIDConnectProviderOutput, error) {
	if err := f.w().call("iam:DeleteOpenIDConnectProvider", in); err != nil {
		return nil, err
	}
	if _, ok := f.oidc[aws.ToString(in.OpenIDConnectProviderArn)]; !ok {
		f.w().done(false)
		return nil, noSuchEntity()
	}
	delete(f.oidc, aws.ToString(in.OpenIDConnectProviderArn))
	return &iam.DeleteOpenIDConnectProviderOutput{}, f.w().done(true)
}

type fakeEKS world

func (f *fakeEKS) w() *world { return (*world)(f) }

func eksNotFound() error {
	return &ekstypes.ResourceNotFoundException{Message: aws.String("not found (simulated)")}
}

// cluster returns the named cluster after applying the passage of time: a deleted one is gone.
func (f *fakeEKS) cluster(name string) *feks {
	c := f.eks[name]
	if c != nil && c.deleting && !time.Now().Before(c.deleteAt) {
		delete(f.eks, name)
		return nil
	}
	return c
}

func (f *fakeEKS) DescribeCluster(_ context.Context, in *eks.DescribeClusterInput, _ ...func(*eks.Options)) (*eks.DescribeClusterOutput, error) {
	if err := f.w().call("eks:DescribeCluster", in); err != nil {
		return nil, err
	}
	c := f.cluster(aws.ToString(in.Name))
	if c == nil {
		f.w().done(false)
		return nil, eksNotFound()
	}
	out := &ekstypes.Cluster{Name: in.Name, Arn: aws.String("arn:aws:eks:" + f.region + ":" + account + ":cluster/" + aws.ToString(in.Name)),
		Tags: c.in.Tags, Status: ekstypes.ClusterStatusCreating}
	switch {
	case c.deleting:
		out.Status = ekstypes.ClusterStatusDeleting
	case c.updating && time.Now().Before(c.readyAt):
		out.Status = ekstypes.ClusterStatusUpdating
	case !time.Now().Before(c.readyAt):
		out.Status = ekstypes.ClusterStatusActive
		out.Endpoint = aws.String("https://" + aws.ToString(in.Name) + ".gr7." + f.region + ".eks.amazonaws.com")
		out.CertificateAuthority = &ekstypes.Certificate{Data: aws.String("LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==")}
		out.Identity = &ekstypes.Identity{Oidc: &ekstypes.OIDC{Issuer: aws.String("https://oidc.eks." + f.region + ".amazonaws.com/id/" + strings.ToUpper(aws.ToString(in.Name)))}}
	}
	out.ResourcesVpcConfig = &ekstypes.VpcConfigResponse{PublicAccessCidrs: slices.Clone(c.public)}
	return &eks.DescribeClusterOutput{Cluster: out}, f.w().done(false)
}

// publicCIDRs are the publicAccessCidrs EKS keeps for a request's: 0.0.0.0/0 when there are none.
func publicCIDRs(vpc *ekstypes.VpcConfigRequest) []string {
	if vpc == nil || len(vpc.PublicAccessCidrs) == 0 {
		return []string{"0.0.0.0/0"}
	}
	return slices.Clone(vpc.PublicAccessCidrs)
}

func (f *fakeEKS) UpdateClusterConfig(_ context.Context, in *eks.UpdateClusterConfigInput, _ ...func(*eks.Options)) (*eks.UpdateClusterConfigOutput, error) {
	if err := f.w().call("eks:UpdateClusterConfig", in); err != nil {
		return nil, err
	}
	c := f.cluster(aws.ToString(in.Name))
	if c == nil {
		f.w().done(false)
		return nil, eksNotFound()
	}
	if c.deleting || time.Now().Before(c.readyAt) {
		f.w().done(false)
		return nil, &ekstypes.ResourceInUseException{Message: aws.String("Cannot update cluster while it is " + map[bool]string{true: "DELETING", false: "CREATING or UPDATING"}[c.deleting])}
	}
	c.public = publicCIDRs(in.ResourcesVpcConfig)
	c.updating, c.readyAt = true, time.Now().Add(f.latency["nodegroup"])
	return &eks.UpdateClusterConfigOutput{}, f.w().done(true)
}

func (f *fakeEKS) CreateCluster(_ context.Context, in *eks.CreateClusterInput, _ ...func(*eks.Options)) (*eks.CreateClusterOutput, error) {
	if err := f.w().call("eks:CreateCluster", in); err != nil {
		return nil, err
	}
	if f.cluster(aws.ToString(in.Name)) != nil {
		f.w().done(false)
		return nil, &ekstypes.ResourceInUseException{Message: aws.String("exists")}
	}
	for _, s := range in.ResourcesVpcConfig.SubnetIds {
		if f.subnets[s] == nil {
			f.w().done(false)
			return nil, &ekstypes.InvalidParameterException{Message: aws.String("subnet " + s + " does not exist")}
		}
	}
	c := &feks{in: in, public: publicCIDRs(in.ResourcesVpcConfig), readyAt: time.Now().Add(f.latency["eks"]), nodegroups: map[string]*fng{}, access: map[string]*faccess{}, addons: map[string]*faddon{}}
	if in.AccessConfig != nil && aws.ToBool(in.AccessConfig.BootstrapClusterCreatorAdminPermissions) {
		// EKS gives the creator an untagged entry with cluster-admin.
		c.access[creatorARN] = &faccess{tags: map[string]string{}, policies: []string{ClusterAdminPolicy + " cluster"}}
	}
	f.eks[aws.ToString(in.Name)] = c
	return &eks.CreateClusterOutput{}, f.w().done(true)
}

func (f *fakeEKS) DeleteCluster(_ context.Context, in *eks.DeleteClusterInput, _ ...func(*eks.Options)) (*eks.DeleteClusterOutput, error) {
	if err := f.w().call("eks:DeleteCluster", in); err != nil {
		return nil, err
	}
	c := f.cluster(aws.ToString(in.Name))
	if c == nil {
		f.w().done(false)
		return nil, eksNotFound()
	}
	if len(c.nodegroups) > 0 {
		f.w().done(false)
		return nil, &ekstypes.ResourceInUseException{Message: aws.String("cluster has node groups")}
	}
	if !c.deleting {
		c.deleting, c.deleteAt = true, time.Now().Add(f.latency["eks"]/2)
	}
	return &eks.DeleteClusterOutput{}, f.w().done(true)
}

func (f *fakeEKS) ListClusters(_ context.Context, in *eks.ListClustersInput, _ ...func(*eks.Options)) (*eks.ListClustersOutput, error) {
	if err := f.w().call("eks:ListClusters", in); err != nil {
		return nil, err
	}
	return &eks.ListClustersOutput{Clusters: sortedKeys(f.eks)}, f.w().done(false)
}

func (f *fakeEKS) nodegroup(cluster, name string) *fng {
	c := f.cluster(cluster)
	if c == nil {
		return nil
	}
	g := c.nodegroups[name]
	if g != nil && g.deleting && !time.Now().Before(g.deleteAt) {
		delete(c.nodegroups, name)
		return nil
	}
	return g
}

func (f *fakeEKS) DescribeNodegroup(_ context.Context, in *eks.DescribeNodegroupInput, _ ...func(*eks.Options)) (*eks.DescribeNodegroupOutput, error) {
	if err := f.w().call("eks:DescribeNodegroup", in); err != nil {
		return nil, err
	}
	g := f.nodegroup(aws.ToString(in.ClusterName), aws.ToString(in.NodegroupName))
	if g == nil {
		f.w().done(false)
		return nil, eksNotFound()
	}
	status := ekstypes.NodegroupStatusCreating
	switch {
	case g.deleting:
		status = ekstypes.NodegroupStatusDeleting
	case !time.Now().Before(g.readyAt):
		status = ekstypes.NodegroupStatusActive
	}
	return &eks.DescribeNodegroupOutput{Nodegroup: &ekstypes.Nodegroup{NodegroupName: in.NodegroupName, Status: status, Tags: g.in.Tags,
		NodegroupArn:  aws.String("arn:aws:eks:nodegroup/" + aws.ToString(in.NodegroupName)),
		ScalingConfig: &ekstypes.NodegroupScalingConfig{DesiredSize: aws.Int32(g.desired)}}}, f.w().done(false)
}

func (f *fakeEKS) CreateNodegroup(_ context.Context, in *eks.CreateNodegroupInput, _ ...func(*eks.Options)) (*eks.CreateNodegroupOutput, error) {
	if err := f.w().call("eks:CreateNodegroup", in); err != nil {
		return nil, err
	}
	c := f.cluster(aws.ToString(in.ClusterName))
	if c == nil || time.Now().Before(c.readyAt) {
		f.w().done(false)
		return nil, eksNotFound()
	}
	if f.nodegroup(aws.ToString(in.ClusterName), aws.ToString(in.NodegroupName)) != nil {
		f.w().done(false)
		return nil, &ekstypes.ResourceInUseException{Message: aws.String("exists")}
	}
	c.nodegroups[aws.ToString(in.NodegroupName)] = &fng{in: in, readyAt: time.Now().Add(f.latency["nodegroup"]), desired: aws.ToInt32(in.ScalingConfig.DesiredSize)}
	return &eks.CreateNodegroupOutput{}, f.w().done(true)
}

func (f *fakeEKS) UpdateNodegroupConfig(_ context.Context, in *eks.UpdateNodegroupConfigInput, _ ...func(*eks.Options)) (*eks.UpdateNodegroupConfigOutput, error) {
	if err := f.w().call("eks:UpdateNodegroupConfig", in); err != nil {
		return nil, err
	}
	g := f.nodegroup(aws.ToString(in.ClusterName), aws.ToString(in.NodegroupName))
	if g == nil {
		f.w().done(false)
		return nil, eksNotFound()
	}
	g.desired = aws.ToInt32(in.ScalingConfig.DesiredSize)
	return &eks.UpdateNodegroupConfigOutput{}, f.w().done(true)
}

func (f *fakeEKS) DeleteNodegroup(_ context.Context, in *eks.DeleteNodegroupInput, _ ...func(*eks.Options)) (*eks.DeleteNodegroupOutput, error) {
	if err := f.w().call("eks:DeleteNodegroup", in); err != nil {
		return nil, err
	}
	g := f.nodegroup(aws.ToString(in.ClusterName), aws.ToString(in.NodegroupName))
	if g == nil {
		f.w().done(false)
		return nil, eksNotFound()
	}
	if !g.deleting {
		g.deleting, g.deleteAt = true, time.Now().Add(f.latency["nodegroup"]/2)
	}
	return &eks.DeleteNodegroupOutput{}, f.w().done(true)
}

func (f *fakeEKS) ListNodegroups(_ context.Context, in *eks.ListNodegroupsInput, _ ...func(*eks.Options)) (*eks.ListNodegroupsOutput, error) {
	if err := f.w().call("eks:ListNodegroups", in); err != nil {
		return nil, err
	}
	c := f.cluster(aws.ToString(in.ClusterName))
	if c == nil {
		f.w().done(false)
		return nil, eksNotFound()
	}
	return &eks.ListNodegroupsOutput{Nodegroups: sortedKeys(c.nodegroups)}, f.w().done(false)
}

// creatorARN is the principal of the fake's credentials.
const creatorARN = "arn:aws:iam::" + account + ":role/installer"

// activeCluster is the named cluster if it is ACTIVE: access entries need one.
func (f *fakeEKS) activeCluster(name *string) (*feks, error) {
	c := f.cluster(aws.ToString(name))
	switch {
	case c == nil:
		return nil, eksNotFound()
	case c.deleting || time.Now().Before(c.readyAt):
		return nil, &ekstypes.ResourceInUseException{Message: aws.String("cluster is not ACTIVE (simulated)")}
	}
	return c, nil
}

func (f *fakeEKS) ListAccessEntries(_ context.Context, in *eks.ListAccessEntriesInput, _ ...func(*eks.Options)) (*eks.ListAccessEntriesOutput, error) {
	if err := f.w().call("eks:ListAccessEntries", in); err != nil {
		return nil, err
	}
	c, err := f.activeCluster(in.ClusterName)
	if err != nil {
		f.w().done(false)
		return nil, err
	}
	return &eks.ListAccessEntriesOutput{AccessEntries: sortedKeys(c.access)}, f.w().done(false)
}

func (f *fakeEKS) entry(cluster, principal *string) (*faccess, error) {
	c, err := f.activeCluster(cluster)
	if err != nil {
		return nil, err
	}
	if a := c.access[aws.ToString(principal)]; a != nil {
		return a, nil
	}
	return nil, eksNotFound()
}

func (f *fakeEKS) DescribeAccessEntry(_ context.Context, in *eks.DescribeAccessEntryInput, _ ...func(*eks.Options)) (*eks.DescribeAccessEntryOutput, error) {
	if err := f.w().call("eks:DescribeAccessEntry", in); err != nil {
		return nil, err
	}
	a, err := f.entry(in.ClusterName, in.PrincipalArn)
	if err != nil {
		f.w().done(false)
		return nil, err
	}
	return &eks.DescribeAccessEntryOutput{AccessEntry: &ekstypes.AccessEntry{PrincipalArn: in.PrincipalArn, Tags: a.tags}}, f.w().done(false)
}

func (f *fakeEKS) CreateAccessEntry(_ context.Context, in *eks.CreateAccessEntryInput, _ ...func(*eks.Options)) (*eks.CreateAccessEntryOutput, error) {
	if err := f.w().call("eks:CreateAccessEntry", in); err != nil {
		return nil, err
	}
	c, err := f.activeCluster(in.ClusterName)
	if err == nil && c.access[aws.ToString(in.PrincipalArn)] != nil {
		err = &ekstypes.ResourceInUseException{Message: aws.String("access entry exists (simulated)")}
	}
	if err != nil {
		f.w().done(false)
		return nil, err
	}
	c.access[aws.ToString(in.PrincipalArn)] = &faccess{tags: in.Tags}
	return &eks.CreateAccessEntryOutput{}, f.w().done(true)
}

func (f *fakeEKS) DeleteAccessEntry(_ context.Context, in *eks.DeleteAccessEntryInput, _ ...func(*eks.Options)) (*eks.DeleteAccessEntryOutput, error) {
	if err := f.w().call("eks:DeleteAccessEntry", in); err != nil {
		return nil, err
	}
	if _, err := f.entry(in.ClusterName, in.PrincipalArn); err != nil {
		f.w().done(false)
		return nil, err
	}
	delete(f.eks[aws.ToString(in.ClusterName)].access, aws.ToString(in.PrincipalArn))
	return &eks.DeleteAccessEntryOutput{}, f.w().done(true)
}

func (f *fakeEKS) ListAssociatedAccessPolicies(_ context.Context, in *eks.ListAssociatedAccessPoliciesInput, _ ...func(*eks.Options)) (*eks.ListAssociatedAccessPoliciesOutput, error) {
	if err := f.w().call("eks:ListAssociatedAccessPolicies", in); err != nil {
		return nil, err
	}
	a, err := f.entry(in.ClusterName, in.PrincipalArn)
	if err != nil {
		f.w().done(false)
		return nil, err
	}
	out := &eks.ListAssociatedAccessPoliciesOutput{}
	for _, p := range a.policies {
		arn, scope, _ := strings.Cut(p, " ")
		out.AssociatedAccessPolicies = append(out.AssociatedAccessPolicies, ekstypes.AssociatedAccessPolicy{
			PolicyArn: aws.String(arn), AccessScope: &ekstypes.AccessScope{Type: ekstypes.AccessScopeType(scope)}})
	}
	return out, f.w().done(false)
}

func (f *fakeEKS) AssociateAccessPolicy(_ context.Context, in *eks.AssociateAccessPolicyInput, _ ...func(*eks.Options)) (*eks.AssociateAccessPolicyOutput, error) {
	if err := f.w().call("eks:AssociateAccessPolicy", in); err != nil {
		return nil, err
	}
	a, err := f.entry(in.ClusterName, in.PrincipalArn)
	if err != nil {
		f.w().done(false)
		return nil, err
	}
	p := aws.ToString(in.PolicyArn) + " " + string(in.AccessScope.Type)
	if !slices.Contains(a.policies, p) { // associating again replaces: idempotent
		a.policies = append(a.policies, p)
	}
	return &eks.AssociateAccessPolicyOutput{}, f.w().done(true)
}

func (f *fakeEKS) DescribeAddon(_ context.Context, in *eks.DescribeAddonInput, _ ...func(*eks.Options)) (*eks.DescribeAddonOutput, error) {
	if err := f.w().call("eks:DescribeAddon", in); err != nil {
		return nil, err
	}
	c := f.cluster(aws.ToString(in.ClusterName))
	if c == nil || c.addons[aws.ToString(in.AddonName)] == nil {
		f.w().done(false)
		return nil, eksNotFound()
	}
	a := c.addons[aws.ToString(in.AddonName)]
	status := ekstypes.AddonStatusCreating
	if !time.Now().Before(a.readyAt) {
		status = ekstypes.AddonStatusActive
	}
	return &eks.DescribeAddonOutput{Addon: &ekstypes.Addon{AddonName: in.AddonName, Status: status, Tags: a.in.Tags,
		AddonArn:              aws.String("arn:aws:eks:" + f.region + ":" + account + ":addon/" + aws.ToString(in.ClusterName) + "/" + aws.ToString(in.AddonName)),
		ServiceAccountRoleArn: a.in.ServiceAccountRoleArn}}, f.w().done(false)
}

func (f *fakeEKS) CreateAddon(_ context.Context, in *eks.CreateAddonInput, _ ...func(*eks.Options)) (*eks.CreateAddonOutput, error) {
	if err := f.w().call("eks:CreateAddon", in); err != nil {
		return nil, err
	}
	c, err := f.activeCluster(in.ClusterName)
	if err == nil && c.addons[aws.ToString(in.AddonName)] != nil {
		err = &ekstypes.ResourceInUseException{Message: aws.String("add-on exists (simulated)")}
	}
	if err == nil && f.roleByARN(aws.ToString(in.ServiceAccountRoleArn)) == nil {
		err = &ekstypes.InvalidParameterException{Message: aws.String("role " + aws.ToString(in.ServiceAccountRoleArn) + " does not exist (simulated)")}
	}
	if err != nil {
		f.w().done(false)
		return nil, err
	}
	c.addons[aws.ToString(in.AddonName)] = &faddon{in: in, readyAt: time.Now().Add(f.latency["addon"])}
	return &eks.CreateAddonOutput{}, f.w().done(true)
}

// roleByARN finds a role of the fake IAM by its ARN.
func (f *fakeEKS) roleByARN(arn string) *frole {
	for name, r := range f.roles {
		if arn == roleARN(r.path, name) {
			return r
		}
	}
	return nil
}

// fakeS3 is only for the whole-install tests under fake time; the bucket steps are tested on MinIO.
type fakeS3 world

func (f *fakeS3) w() *world { return (*world)(f) }

func (f *fakeS3) bucket(name *string) (*fbucket, error) {
	b := f.buckets[aws.ToString(name)]
	if b == nil {
		f.w().done(false)
		return nil, &s3types.NoSuchBucket{Message: aws.String("no such bucket (simulated)")}
	}
	return b, nil
}

func (f *fakeS3) HeadBucket(_ context.Context, in *s3.HeadBucketInput, _ ...func(*s3.Options)) (*s3.HeadBucketOutput, error) {
	if err := f.w().call("s3:HeadBucket", in); err != nil {
		return nil, err
	}
	if f.buckets[aws.ToString(in.Bucket)] == nil {
		f.w().done(false)
		return nil, &s3types.NotFound{}
	}
	return &s3.HeadBucketOutput{}, f.w().done(false)
}

func (f *fakeS3) CreateBucket(_ context.Context, in *s3.CreateBucketInput, _ ...func(*s3.Options)) (*s3.CreateBucketOutput, error) {
	if err := f.w().call("s3:CreateBucket", in); err != nil {
		return nil, err
	}
	if f.buckets[aws.ToString(in.Bucket)] != nil {
		f.w().done(false)
		return nil, &s3types.BucketAlreadyOwnedByYou{}
	}
	b := &fbucket{}
	if in.CreateBucketConfiguration != nil {
		b.tags = in.CreateBucketConfiguration.Tags // as AWS: tags on create
	}
	f.buckets[aws.ToString(in.Bucket)] = b
	return &s3.CreateBucketOutput{}, f.w().done(true)
}

func (f *fakeS3) DeleteBucket(_ context.Context, in *s3.DeleteBucketInput, _ ...func(*s3.Options)) (*s3.DeleteBucketOutput, error) {
	if err := f.w().call("s3:DeleteBucket", in); err != nil {
		return nil, err
	}
	b, err := f.bucket(in.Bucket)
	if err != nil {
		return nil, err
	}
	if b.objects > 0 {
		f.w().done(false)
		return nil, apiErr("BucketNotEmpty")
	}
	delete(f.buckets, aws.ToString(in.Bucket))
	return &s3.DeleteBucketOutput{}, f.w().done(true)
}

func (f *fakeS3) ListBuckets(_ context.Context, in *s3.ListBucketsInput, _ ...func(*s3.Options)) (*s3.ListBucketsOutput, error) {
	if err := f.w().call("s3:ListBuckets", in); err != nil {
		return nil, err
	}
	out := &s3.ListBucketsOutput{}
	for _, name := range sortedKeys(f.buckets) {
		if strings.HasPrefix(name, aws.ToString(in.Prefix)) {
			out.Buckets = append(out.Buckets, s3types.Bucket{Name: aws.String(name)})
		}
	}
	return out, f.w().done(false)
}

func (f *fakeS3) GetBucketTagging(_ context.Context, in *s3.GetBucketTaggingInput, _ ...func(*s3.Options)) (*s3.GetBucketTaggingOutput, error) {
	if err := f.w().call("s3:GetBucketTagging", in); err != nil {
		return nil, err
	}
	b, err := f.bucket(in.Bucket)
	if err != nil {
		return nil, err
	}
	if len(b.tags) == 0 {
		f.w().done(false)
		return nil, apiErr("NoSuchTagSet")
	}
	return &s3.GetBucketTaggingOutput{TagSet: b.tags}, f.w().done(false)
}

func (f *fakeS3) PutBucketTagging(_ context.Context, in *s3.PutBucketTaggingInput, _ ...func(*s3.Options)) (*s3.PutBucketTaggingOutput, error) {
	if err := f.w().call("s3:PutBucketTagging", in); err != nil {
		return nil, err
	}
	b, err := f.bucket(in.Bucket)
	if err != nil {
		return nil, err
	}
	b.tags = in.Tagging.TagSet
	return &s3.PutBucketTaggingOutput{}, f.w().done(true)
}

func (f *fakeS3) GetBucketLifecycleConfiguration(_ context.Context, in *s3.GetBucketLifecycleConfigurationInput, _ ...func(*s3.Options)) (*s3.GetBucketLifecycleConfigurationOutput, error) {
	if err := f.w().call("s3:GetBucketLifecycleConfiguration", in); err != nil {
		return nil, err
	}
	b, err := f.bucket(in.Bucket)
	if err != nil {
		return nil, err
	}
	if b.lifecycle == nil {
		f.w().done(false)
		return nil, apiErr("NoSuchLifecycleConfiguration")
	}
	return &s3.GetBucketLifecycleConfigurationOutput{Rules: b.lifecycle}, f.w().done(false)
}

func (f *fakeS3) PutBucketLifecycleConfiguration(_ context.Context, in *s3.PutBucketLifecycleConfigurationInput, _ ...func(*s3.Options)) (*s3.PutBucketLifecycleConfigurationOutput, error) {
	if err := f.w().call("s3:PutBucketLifecycleConfiguration", in); err != nil {
		return nil, err
	}
	b, err := f.bucket(in.Bucket)
	if err != nil {
		return nil, err
	}
	b.lifecycle = in.LifecycleConfiguration.Rules
	return &s3.PutBucketLifecycleConfigurationOutput{}, f.w().done(true)
}

func (f *fakeS3) GetBucketEncryption(_ context.Context, in *s3.GetBucketEncryptionInput, _ ...func(*s3.Options)) (*s3.GetBucketEncryptionOutput, error) {
	if err := f.w().call("s3:GetBucketEncryption", in); err != nil {
		return nil, err
	}
	b, err := f.bucket(in.Bucket)
	if err != nil {
		return nil, err
	}
	if b.enc == nil {
		f.w().done(false)
		return nil, apiErr("ServerSideEncryptionConfigurationNotFoundError")
	}
	return &s3.GetBucketEncryptionOutput{ServerSideEncryptionConfiguration: b.enc}, f.w().done(false)
}

func (f *fakeS3) PutBucketEncryption(_ context.Context, in *s3.PutBucketEncryptionInput, _ ...func(*s3.Options)) (*s3.PutBucketEncryptionOutput, error) {
	if err := f.w().call("s3:PutBucketEncryption", in); err != nil {
		return nil, err
	}
	b, err := f.bucket(in.Bucket)
	if err != nil {
		return nil, err
	}
	b.enc = in.ServerSideEncryptionConfiguration
	return &s3.PutBucketEncryptionOutput{}, f.w().done(true)
}

func (f *fakeS3) GetPublicAccessBlock(_ context.Context, in *s3.GetPublicAccessBlockInput, _ ...func(*s3.Options)) (*s3.GetPublicAccessBlockOutput, error) {
	if err := f.w().call("s3:GetPublicAccessBlock", in); err != nil {
		return nil, err
	}
	b, err := f.bucket(in.Bucket)
	if err != nil {
		return nil, err
	}
	if b.pab == nil {
		f.w().done(false)
		return nil, apiErr("NoSuchPublicAccessBlockConfiguration")
	}
	return &s3.GetPublicAccessBlockOutput{PublicAccessBlockConfiguration: b.pab}, f.w().done(false)
}

func (f *fakeS3) PutPublicAccessBlock(_ context.Context, in *s3.PutPublicAccessBlockInput, _ ...func(*s3.Options)) (*s3.PutPublicAccessBlockOutput, error) {
	if err := f.w().call("s3:PutPublicAccessBlock", in); err != nil {
		return nil, err
	}
	b, err := f.bucket(in.Bucket)
	if err != nil {
		return nil, err
	}
	b.pab = in.PublicAccessBlockConfiguration
	return &s3.PutPublicAccessBlockOutput{}, f.w().done(true)
}

func (f *fakeS3) ListObjectsV2(_ context.Context, in *s3.ListObjectsV2Input, _ ...func(*s3.Options)) (*s3.ListObjectsV2Output, error) {
	if err := f.w().call("s3:ListObjectsV2", in); err != nil {
		return nil, err
	}
	b, err := f.bucket(in.Bucket)
	if err != nil {
		return nil, err
	}
	out := &s3.ListObjectsV2Output{}
	for i := range b.objects {
		out.Contents = append(out.Contents, s3types.Object{Key: aws.String(fmt.Sprintf("object-%d", i))})
	}
	return out, f.w().done(false)
}

func (f *fakeS3) DeleteObjects(_ context.Context, in *s3.DeleteObjectsInput, _ ...func(*s3.Options)) (*s3.DeleteObjectsOutput, error) {
	if err := f.w().call("s3:DeleteObjects", in); err != nil {
		return nil, err
	}
	b, err := f.bucket(in.Bucket)
	if err != nil {
		return nil, err
	}
	b.objects -= len(in.Delete.Objects)
	return &s3.DeleteObjectsOutput{}, f.w().done(true)
}
