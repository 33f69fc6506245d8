package config

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

var (
	dnsLabel       = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	awsRegion      = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$`)
	awsInstance    = regexp.MustCompile(`^[a-z][a-z0-9-]*\.[a-z0-9]+$`)
	zoneSuffix     = regexp.MustCompile(`^[a-z]$`)
	iamRoleARN     = regexp.MustCompile(`^arn:aws(-cn|-us-gov)?:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$`)
	route53Zone    = regexp.MustCompile(`^Z[A-Z0-9]{1,31}$`)
	gcpProject     = regexp.MustCompile(`^[a-z][a-z0-9-]{4,28}[a-z0-9]$`)
	gcpRegion      = regexp.MustCompile(`^[a-z]+-[a-z]+[0-9]{1,2}$`)
	gcpMachineType = regexp.MustCompile(`^[a-z][a-z0-9]*-[a-z0-9-]*[a-z0-9]$`)
	gcpZoneName    = regexp.MustCompile(`^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$`)
	k8sVersion     = regexp.MustCompile(`^1\.[0-9]{2}$`)
	// imageRef is a pragmatic OCI reference check: [registry[:port]/]path[:tag][@sha256:digest].
	imageRef = regexp.MustCompile(`^([a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?/)?[a-z0-9]+([._-]{1,2}[a-z0-9]+)*(/[a-z0-9]+([._-]{1,2}[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$`)
)

// validator collects the problems of a decoded, defaulted config.
type validator struct {
	set  keys
	errs ErrorList
}

func (v *validator) add(path, problem, allowed string) {
	v.errs = append(v.errs, &FieldError{Path: path, Line: v.set.line(path), Problem: problem, Allowed: allowed})
}

func (v *validator) oneOf(path, value string, allowed ...string) {
	for _, a := range allowed {
		if value == a {
			return
		}
	}
	v.add(path, fmt.Sprintf("unsupported value %q", value), strings.Join(allowed, " | "))
}

func (v *validator) intRange(path string, value, lo, hi int) {
	if value < lo || value > hi {
		v.add(path, fmt.Sprintf("%d is out of range", value), fmt.Sprintf("%d..%d", lo, hi))
	}
}

func (v *validator) match(path, value string, re *regexp.Regexp, allowed string) bool {
	if value == "" {
		v.add(path, "is required", allowed)
		return false
	}
	if !re.MatchString(value) {
		v.add(path, fmt.Sprintf("invalid value %q", value), allowed)
		return false
	}
	return true
}

// list checks a list's length and that no item repeats; each returns the items' own checks.
func (v *validator) list(path string, items []string, minLen, maxLen int, allowed string, each func(p, item string)) {
	if len(items) < minLen {
		v.add(path, fmt.Sprintf("needs at least %d item(s), got %d", minLen, len(items)), allowed)
	}
	if maxLen > 0 && len(items) > maxLen {
		v.add(path, fmt.Sprintf("has %d items, more than %d", len(items), maxLen), allowed)
	}
	first := map[string]int{}
	for i, item := range items {
		p := fmt.Sprintf("%s[%d]", path, i)
		if j, dup := first[item]; dup {
			v.add(p, fmt.Sprintf("%q repeats %s[%d]", item, path, j), "each value once")
			continue
		}
		first[item] = i
		each(p, item)
	}
}

// cidr checks one CIDR of an authorized-ranges list. ipv4Only, when not empty, says why the list takes
// IPv4 CIDRs only (the cloud's rule).
func (v *validator) cidr(path, cidr, ipv4Only string) {
	prefix, err := netip.ParsePrefix(cidr)
	switch {
	case err != nil && ipv4Only != "":
		v.add(path, fmt.Sprintf("invalid CIDR %q", cidr), "an IPv4 CIDR like 203.0.113.0/24")
	case err != nil:
		v.add(path, fmt.Sprintf("invalid CIDR %q", cidr), "an IPv4 or IPv6 CIDR like 203.0.113.0/24")
	case ipv4Only != "" && !prefix.Addr().Is4():
		v.add(path, fmt.Sprintf("CIDR %q is IPv6", cidr), "an IPv4 CIDR like 203.0.113.0/24: "+ipv4Only)
	case prefix.Masked() != prefix:
		v.add(path, fmt.Sprintf("CIDR %q has bits set after the prefix length", cidr),
			fmt.Sprintf("the network address: %s", prefix.Masked()))
	}
}

// validate checks a defaulted config for the provider. set holds the keys present in the file, for line
// numbers and to tell "absent" from "empty".
func validate(c Config, provider string, set keys) ErrorList {
	v := &validator{set: set}

	v.list("tenants", c.Tenants, 1, 0, "DNS labels, e.g. [prod, dev]", func(p, name string) {
		switch {
		case len(name) > MaxTenantNameLen:
			v.add(p, fmt.Sprintf("tenant name %q is %d characters long", name, len(name)),
				fmt.Sprintf("at most %d characters", MaxTenantNameLen))
		case !dnsLabel.MatchString(name):
			v.add(p, fmt.Sprintf("invalid tenant name %q", name),
				"lowercase letters, digits and '-', starting and ending with a letter or digit")
		case name == ReservedTenant:
			v.add(p, fmt.Sprintf("tenant name %q is reserved for the distribution's own telemetry", name),
				"any other DNS label")
		}
	})
	v.intRange("node_count", c.NodeCount, 1, MaxNodeCount)
	v.oneOf("size", c.Size, SizeDemo, SizeSmall, SizeMedium)
	v.intRange("metric_retention_days", c.MetricRetentionDays, 1, MaxRetentionDays)
	v.intRange("log_retention_days", c.LogRetentionDays, 1, MaxRetentionDays)
	v.oneOf("cert_issuer", c.CertIssuer, CertIssuerLetsEncryptProd, CertIssuerLetsEncryptStaging, CertIssuerSelfSigned)
	if c.DNS == nil && (c.CertIssuer == CertIssuerLetsEncryptProd || c.CertIssuer == CertIssuerLetsEncryptStaging) {
		v.add("cert_issuer", fmt.Sprintf("%s needs a domain name to issue a certificate for", c.CertIssuer),
			"set dns.domain, or use cert_issuer: self-signed")
	}
	if c.DNS != nil || set.has("dns") {
		validateDNS(v, c.DNS, provider)
	}
	v.list("data_api_authorized_ip_ranges", c.DataAPIAuthorizedIPRanges, 1, 0,
		"CIDRs, e.g. [203.0.113.0/24]; use [0.0.0.0/0] to allow any address", func(p, cidr string) { v.cidr(p, cidr, "") })
	const imageAllowed = "an image reference like registry.example.com/opstrace/opstrace-controller:v1.2.3"
	v.match("controller_image", c.ControllerImage, imageRef, imageAllowed)
	v.match("gateway_image", c.GatewayImage, imageRef, imageAllowed)
	v.match("kubernetes_version", c.KubernetesVersion, k8sVersion, `MAJOR.MINOR, e.g. "1.33" (quoted)`)

	// The provider's own section is filled in by the defaults; what counts is what the file has.
	awsSet, gcpSet := set.has("aws"), set.has("gcp")
	switch {
	case awsSet && gcpSet:
		other := ProviderGCP
		if provider == ProviderGCP {
			other = ProviderAWS
		}
		v.add(other, "both aws and gcp sections are set", fmt.Sprintf("only the %s section for `opstrace create %s`", provider, provider))
	case provider == ProviderAWS && gcpSet:
		v.add("gcp", "this config is for `opstrace create aws`, which does not read the gcp section",
			"an aws section (or run `opstrace create gcp`)")
	case provider == ProviderGCP && awsSet:
		v.add("aws", "this config is for `opstrace create gcp`, which does not read the aws section",
			"a gcp section (or run `opstrace create aws`)")
	}
	if provider == ProviderAWS && c.AWS != nil {
		validateAWS(v, *c.AWS, set)
	}
	if provider == ProviderGCP && c.GCP != nil {
		validateGCP(v, *c.GCP, set)
	}
	return v.errs
}

func validateDNS(v *validator, d *DNS, provider string) {
	if d == nil {
		v.add("dns", "is empty", "keys domain (required) and hosted_zone, or remove the dns section")
		return
	}
	if d.Domain == "" {
		v.add("dns.domain", "is required when the dns section is set", "a domain name like opstrace.example.com")
	} else if !validDomain(d.Domain) {
		v.add("dns.domain", fmt.Sprintf("invalid domain name %q", d.Domain),
			"a lowercase domain name of at least two labels, at most 253 characters, like opstrace.example.com")
	} else if gateway := len(GatewayPrefix) + len(strings.TrimSuffix(d.Domain, ".")); gateway > 253 {
		v.add("dns.domain", fmt.Sprintf("the gateway's name %s%s would be %d characters long", GatewayPrefix, d.Domain, gateway),
			fmt.Sprintf("a domain of at most %d characters: DNS names have at most 253", 253-len(GatewayPrefix)))
	}
	if d.HostedZone == "" {
		return
	}
	switch provider {
	case ProviderAWS:
		v.match("dns.hosted_zone", d.HostedZone, route53Zone, "a Route 53 hosted zone ID like Z0123456789ABCDEFGHIJ")
	case ProviderGCP:
		v.match("dns.hosted_zone", d.HostedZone, gcpZoneName, "a Cloud DNS managed zone name like opstrace-example-com")
	}
}

func validDomain(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if len(s) > 253 {
		return false
	}
	labels := strings.Split(s, ".")
	if len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if len(l) == 0 || len(l) > 63 || !dnsLabel.MatchString(l) {
			return false
		}
	}
	return true
}

func validateAWS(v *validator, a AWS, set keys) {
	v.match("aws.region", a.Region, awsRegion, "an AWS region like us-west-2 or eu-central-1")
	// Absent and empty: size is invalid, so it has no default instance type; the size error says so.
	if a.InstanceType != "" || set.has("aws.instance_type") {
		v.match("aws.instance_type", a.InstanceType, awsInstance, "an EC2 instance type like m5.xlarge")
	}
	v.list("aws.zone_suffixes", a.ZoneSuffixes, MinZones, MaxZones,
		fmt.Sprintf("%d to %d single letters, e.g. [a, b, c]", MinZones, MaxZones), func(p, s string) {
			if !zoneSuffix.MatchString(s) {
				v.add(p, fmt.Sprintf("invalid zone suffix %q", s),
					"a single lowercase letter a-z; the zone is the region plus the suffix, e.g. us-west-2a")
			}
		})
	v.list("aws.eks_admin_roles", a.EKSAdminRoles, 0, 0, "IAM role ARNs", func(p, arn string) {
		v.match(p, arn, iamRoleARN, "an IAM role ARN like arn:aws:iam::123456789012:role/admin")
	})
	apiRanges(v, "aws.api_authorized_ip_ranges", a.APIAuthorizedIPRanges, MaxEKSPublicAccessCIDRs,
		"the EKS clusters opstrace makes are IPv4 clusters, whose public endpoint takes IPv4 CIDRs only")
}

func validateGCP(v *validator, g GCP, set keys) {
	v.match("gcp.project", g.Project, gcpProject,
		"a GCP project ID: 6-30 lowercase letters, digits and '-', starting with a letter")
	v.match("gcp.region", g.Region, gcpRegion, "a GCP region like us-west2 or europe-west1")
	if g.MachineType != "" || set.has("gcp.machine_type") {
		v.match("gcp.machine_type", g.MachineType, gcpMachineType, "a Compute Engine machine type like n2-standard-4")
	}
	apiRanges(v, "gcp.api_authorized_ip_ranges", g.APIAuthorizedIPRanges, MaxGKEAuthorizedNetworks, "GKE authorized networks are IPv4 only")
}

// apiRanges checks the CIDRs that may reach the Kubernetes API (aws. or gcp.api_authorized_ip_ranges).
func apiRanges(v *validator, path string, ranges []string, max int, ipv4Only string) {
	v.list(path, ranges, 1, max,
		fmt.Sprintf("1 to %d IPv4 CIDRs that may reach the Kubernetes API, e.g. [203.0.113.0/24]; "+
			"include the egress address of the machine running opstrace (it talks to the API server); "+
			"use [0.0.0.0/0] to allow any address", max),
		func(p, cidr string) { v.cidr(p, cidr, ipv4Only) })
}
