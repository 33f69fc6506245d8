// Package config reads and checks the cluster config file of `opstrace create aws|gcp NAME -c config.yaml`.
//
// The file is YAML. Unknown keys are rejected, and every problem is reported with the key path (for example
// `aws.zone_suffixes[2]`), what is wrong and what is allowed; all problems are reported at once.
//
// # Schema and defaults
//
// A key that is absent takes its default; a key that is present is checked as written (so `node_count: 0`
// is an error, not "use the default"). [Defaults] returns the same values in code.
//
//	tenants:                        [default]     tenant names: DNS labels, at most 63 characters,
//	                                              "system" is reserved, no duplicates, at least one
//	node_count:                     3             worker nodes, 1..100
//	size:                           small         demo | small | medium (sizes the nodes and the components)
//	metric_retention_days:          30            1..3650
//	log_retention_days:             7             1..3650
//	cert_issuer:                    letsencrypt-prod when dns is set, otherwise self-signed
//	                                              letsencrypt-prod | letsencrypt-staging | self-signed
//	                                              (Let's Encrypt needs dns.domain). Let's Encrypt: create
//	                                              installs cert-manager, whose ACME ClusterIssuer answers
//	                                              DNS01 challenges in the zone and issues the gateway's
//	                                              certificate for metrics.DOMAIN; self-signed: the
//	                                              controller's own CA issues it
//	dns:                            (absent)      optional; without it the gateway is reached by the
//	  domain:                                     load balancer's name. domain is required in the section;
//	                                              create points metrics.DOMAIN at the gateway's load
//	                                              balancer (AWS CNAME, GCP A record, each with an ownership
//	                                              TXT record)
//	  hosted_zone:                  (looked up by domain) AWS: Route 53 zone ID (Z...); GCP: managed zone name
//	                                              (in gcp.project); public, containing metrics.DOMAIN
//	data_api_authorized_ip_ranges:  [0.0.0.0/0]   CIDRs allowed to reach the data API (tokens still required)
//	controller_image:               opstrace/opstrace-controller:<CLI version>
//	gateway_image:                  opstrace/opstrace-gateway:<CLI version>
//	kubernetes_version:             "1.33"        MAJOR.MINOR of the EKS/GKE control plane
//	aws:                            (only with `opstrace create aws`; may be omitted)
//	  region:                       us-west-2
//	  instance_type:                by size: demo t3.large, small m5.xlarge, medium m5.2xlarge
//	  zone_suffixes:                [a, b, c]     2..6 single letters; zones are region + suffix
//	  eks_admin_roles:              []            IAM role ARNs given cluster-admin on EKS
//	  api_authorized_ip_ranges:     [0.0.0.0/0]   IPv4 CIDRs (at most 40) allowed to reach the EKS public
//	                                              endpoint (publicAccessCidrs; credentials still required);
//	                                              the nodes use the private endpoint. As gcp's below: a
//	                                              list must include the installer's egress address
//	gcp:                            (only with `opstrace create gcp`; required there, for project)
//	  project:                      (required)    GCP project ID
//	  region:                       us-west2
//	  machine_type:                 by size: demo e2-standard-2, small n2-standard-4, medium n2-standard-8
//	  api_authorized_ip_ranges:     [0.0.0.0/0]   IPv4 CIDRs (at most 50) allowed to reach the GKE control
//	                                              plane's public endpoint (credentials still required);
//	                                              [0.0.0.0/0] leaves it open to any address. The installer
//	                                              itself talks to the API server: a list must include the
//	                                              egress address of every machine `opstrace` runs on
//	                                              (it is not detected). Changing it updates the cluster
//
// The config with every default filled in ([Render]) is stored in the cluster, so that upgrade and status
// need no file; rendering and parsing again gives the same config.
package config

import (
	"fmt"

	// go.yaml.in/yaml/v3 through sigs.k8s.io/yaml's alias package: go.mod lists sigs.k8s.io/yaml as a direct
	// dependency and go.yaml.in/yaml/v3 as indirect, and this change does not touch go.mod. Switch the
	// import to go.yaml.in/yaml/v3 when go.mod is next tidied; nothing else changes.
	yaml "go.yaml.in/yaml/v3"

	"github.com/opstrace/opstrace/internal/version"
)

// Providers, as in `opstrace create aws|gcp`.
const (
	ProviderAWS = "aws"
	ProviderGCP = "gcp"
)

// Sizes.
const (
	SizeDemo   = "demo"
	SizeSmall  = "small"
	SizeMedium = "medium"
)

// GatewayPrefix is the label before dns.domain of the gateway's DNS name (cloud.GatewayHostname).
const GatewayPrefix = "metrics."

// Certificate issuers.
const (
	CertIssuerLetsEncryptProd    = "letsencrypt-prod"
	CertIssuerLetsEncryptStaging = "letsencrypt-staging"
	CertIssuerSelfSigned         = "self-signed"
)

// Limits checked by validation.
const (
	MaxNodeCount     = 100
	MaxRetentionDays = 3650
	MaxTenantNameLen = 63
	MinZones         = 2
	MaxZones         = 6
	// ReservedTenant is the tenant of the distribution's own telemetry (api/v1alpha1.SystemTenant).
	ReservedTenant = "system"
)

// Config is the cluster config file. The yaml tags are the keys of the file.
type Config struct {
	Tenants                   []string `yaml:"tenants"`
	NodeCount                 int      `yaml:"node_count"`
	Size                      string   `yaml:"size"`
	MetricRetentionDays       int      `yaml:"metric_retention_days"`
	LogRetentionDays          int      `yaml:"log_retention_days"`
	CertIssuer                string   `yaml:"cert_issuer"`
	DNS                       *DNS     `yaml:"dns,omitempty"`
	DataAPIAuthorizedIPRanges []string `yaml:"data_api_authorized_ip_ranges"`
	ControllerImage           string   `yaml:"controller_image"`
	GatewayImage              string   `yaml:"gateway_image"`
	KubernetesVersion         string   `yaml:"kubernetes_version"`
	AWS                       *AWS     `yaml:"aws,omitempty"`
	GCP                       *GCP     `yaml:"gcp,omitempty"`
}

// DNS is the optional domain the cluster's endpoints are published under.
type DNS struct {
	Domain     string `yaml:"domain"`
	HostedZone string `yaml:"hosted_zone,omitempty"`
}

// AWS holds the settings used only by `opstrace create aws`.
type AWS struct {
	Region        string   `yaml:"region"`
	InstanceType  string   `yaml:"instance_type"`
	ZoneSuffixes  []string `yaml:"zone_suffixes"`
	EKSAdminRoles []string `yaml:"eks_admin_roles"`
	// APIAuthorizedIPRanges are the CIDRs that may reach the EKS public endpoint (publicAccessCidrs).
	APIAuthorizedIPRanges []string `yaml:"api_authorized_ip_ranges"`
}

// GCP holds the settings used only by `opstrace create gcp`.
type GCP struct {
	Project     string `yaml:"project"`
	Region      string `yaml:"region"`
	MachineType string `yaml:"machine_type"`
	// APIAuthorizedIPRanges are the CIDRs that may reach the GKE control plane (master authorized
	// networks); [DefaultAuthorizedIPRange] alone means any address.
	APIAuthorizedIPRanges []string `yaml:"api_authorized_ip_ranges"`
}

// Provider says which cloud the config is for: the provider whose section is set.
func (c Config) Provider() string {
	switch {
	case c.AWS != nil && c.GCP == nil:
		return ProviderAWS
	case c.GCP != nil && c.AWS == nil:
		return ProviderGCP
	}
	return ""
}

// Defaults of the keys whose default does not depend on other keys.
const (
	DefaultTenant              = "default"
	DefaultNodeCount           = 3
	DefaultSize                = SizeSmall
	DefaultMetricRetentionDays = 30
	DefaultLogRetentionDays    = 7
	DefaultAuthorizedIPRange   = "0.0.0.0/0"
	DefaultKubernetesVersion   = "1.33"
	DefaultAWSRegion           = "us-west-2"
	DefaultGCPRegion           = "us-west2"
	ControllerRepository       = "opstrace/opstrace-controller"
	GatewayRepository          = "opstrace/opstrace-gateway"
)

// MaxGKEAuthorizedNetworks is how many CIDRs GKE accepts as authorized networks of a control plane with a
// public endpoint.
const MaxGKEAuthorizedNetworks = 50

// MaxEKSPublicAccessCIDRs is how many CIDRs EKS accepts as the public endpoint's publicAccessCidrs (its
// default quota).
const MaxEKSPublicAccessCIDRs = 40

// DefaultAWSZoneSuffixes are the zones used in the region when aws.zone_suffixes is absent.
var DefaultAWSZoneSuffixes = []string{"a", "b", "c"}

// AWSInstanceTypes is the default aws.instance_type for each size.
var AWSInstanceTypes = map[string]string{SizeDemo: "t3.large", SizeSmall: "m5.xlarge", SizeMedium: "m5.2xlarge"}

// GCPMachineTypes is the default gcp.machine_type for each size.
var GCPMachineTypes = map[string]string{SizeDemo: "e2-standard-2", SizeSmall: "n2-standard-4", SizeMedium: "n2-standard-8"}

// DefaultCertIssuer is the cert_issuer used when the key is absent: Let's Encrypt needs a domain.
func DefaultCertIssuer(dns *DNS) string {
	if dns != nil {
		return CertIssuerLetsEncryptProd
	}
	return CertIssuerSelfSigned
}

// Defaults is the config of an empty file for the provider (except gcp.project, which has no default).
func Defaults(provider string) Config {
	c := Config{
		Tenants:                   []string{DefaultTenant},
		NodeCount:                 DefaultNodeCount,
		Size:                      DefaultSize,
		MetricRetentionDays:       DefaultMetricRetentionDays,
		LogRetentionDays:          DefaultLogRetentionDays,
		CertIssuer:                DefaultCertIssuer(nil),
		DataAPIAuthorizedIPRanges: []string{DefaultAuthorizedIPRange},
		ControllerImage:           ControllerRepository + ":" + version.Version,
		GatewayImage:              GatewayRepository + ":" + version.Version,
		KubernetesVersion:         DefaultKubernetesVersion,
	}
	switch provider {
	case ProviderAWS:
		c.AWS = &AWS{
			Region:                DefaultAWSRegion,
			InstanceType:          AWSInstanceTypes[DefaultSize],
			ZoneSuffixes:          append([]string(nil), DefaultAWSZoneSuffixes...),
			EKSAdminRoles:         []string{},
			APIAuthorizedIPRanges: []string{DefaultAuthorizedIPRange},
		}
	case ProviderGCP:
		c.GCP = &GCP{Region: DefaultGCPRegion, MachineType: GCPMachineTypes[DefaultSize],
			APIAuthorizedIPRanges: []string{DefaultAuthorizedIPRange}}
	}
	return c
}

// applyDefaults fills every key that was absent from the file (set holds the key paths that were present).
// Defaults that depend on other keys (cert_issuer on dns, machine types on size) are resolved here too.
func applyDefaults(c *Config, provider string, set keys) {
	d := Defaults(provider)
	if !set.has("tenants") {
		c.Tenants = d.Tenants
	}
	if !set.has("node_count") {
		c.NodeCount = d.NodeCount
	}
	if !set.has("size") {
		c.Size = d.Size
	}
	if !set.has("metric_retention_days") {
		c.MetricRetentionDays = d.MetricRetentionDays
	}
	if !set.has("log_retention_days") {
		c.LogRetentionDays = d.LogRetentionDays
	}
	if !set.has("cert_issuer") {
		c.CertIssuer = DefaultCertIssuer(c.DNS)
	}
	if !set.has("data_api_authorized_ip_ranges") {
		c.DataAPIAuthorizedIPRanges = d.DataAPIAuthorizedIPRanges
	}
	if !set.has("controller_image") {
		c.ControllerImage = d.ControllerImage
	}
	if !set.has("gateway_image") {
		c.GatewayImage = d.GatewayImage
	}
	if !set.has("kubernetes_version") {
		c.KubernetesVersion = d.KubernetesVersion
	}
	// The provider's own section may be omitted; the other provider's section is left for validation to
	// reject, without defaults.
	if provider == ProviderAWS && c.AWS == nil {
		c.AWS = &AWS{}
	}
	if provider == ProviderGCP && c.GCP == nil {
		c.GCP = &GCP{}
	}
	if c.AWS != nil && provider == ProviderAWS {
		if !set.has("aws.region") {
			c.AWS.Region = d.AWS.Region
		}
		if !set.has("aws.instance_type") {
			c.AWS.InstanceType = AWSInstanceTypes[c.Size] // "" for an unknown size, which is reported
		}
		if !set.has("aws.zone_suffixes") {
			c.AWS.ZoneSuffixes = d.AWS.ZoneSuffixes
		}
		if !set.has("aws.eks_admin_roles") {
			c.AWS.EKSAdminRoles = d.AWS.EKSAdminRoles
		}
		if !set.has("aws.api_authorized_ip_ranges") {
			c.AWS.APIAuthorizedIPRanges = d.AWS.APIAuthorizedIPRanges
		}
	}
	if c.GCP != nil && provider == ProviderGCP {
		if !set.has("gcp.region") {
			c.GCP.Region = d.GCP.Region
		}
		if !set.has("gcp.machine_type") {
			c.GCP.MachineType = GCPMachineTypes[c.Size]
		}
		if !set.has("gcp.api_authorized_ip_ranges") {
			c.GCP.APIAuthorizedIPRanges = d.GCP.APIAuthorizedIPRanges
		}
	}
}

// Parse reads a config file for the provider (ProviderAWS or ProviderGCP), applies the defaults of the
// absent keys and validates the result. The error, if any, is an ErrorList naming every problem.
func Parse(data []byte, provider string) (Config, error) {
	if provider != ProviderAWS && provider != ProviderGCP {
		return Config{}, fmt.Errorf("config: unknown provider %q: use %q or %q", provider, ProviderAWS, ProviderGCP)
	}
	var c Config
	set, decodeErrs := decode(data, &c)
	applyDefaults(&c, provider, set)
	// Validate what was decoded even when some keys could not be, so that every problem is reported at
	// once; a key that failed to decode is left zero, so its validation errors are dropped as repeats.
	errs := append(decodeErrs, validate(c, provider, set).without(decodeErrs.paths())...)
	if len(errs) > 0 {
		return Config{}, errs.sorted()
	}
	return c, nil
}

// Render returns the config as YAML with every default filled in; Parse(Render(c), provider) returns c.
func Render(c Config) []byte {
	out, err := yaml.Marshal(c)
	if err != nil {
		// Config holds only strings, ints, slices and pointers to such structs: marshalling cannot fail.
		panic(fmt.Sprintf("config: render: %v", err))
	}
	return append([]byte("# opstrace cluster config, with defaults filled in.\n"), out...)
}
