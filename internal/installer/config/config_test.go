package config

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestParseRejectsBadConfigs(t *testing.T) {
	tests := []struct {
		name     string
		provider string
		file     string
		path     string // key path of the expected error
		fragment string // part of its message
	}{
		{"empty file", ProviderAWS, "", "", "is empty"},
		{"only a comment", ProviderAWS, "# nothing\n", "", "is empty"},
		{"not a mapping", ProviderAWS, "- a\n- b\n", "", "must be a mapping"},
		{"unknown top-level key", ProviderAWS, "tenants: [prod]\nnodes: 3\n", "nodes", `unknown key "nodes"; allowed: keys aws, cert_issuer`},
		{"unknown nested key", ProviderAWS, "aws:\n  region: us-east-1\n  zones: [a, b]\n", "aws.zones", `unknown key "zones"; allowed: keys api_authorized_ip_ranges, eks_admin_roles, instance_type, region, zone_suffixes`},
		{"repeated key", ProviderAWS, "size: small\nsize: demo\n", "size", "appears more than once"},
		{"node_count wrong type", ProviderAWS, "node_count: three\n", "node_count", `must be an integer, got the string "three"`},
		{"node_count float", ProviderAWS, "node_count: 2.5\n", "node_count", "must be an integer, got the number 2.5"},
		{"node_count zero", ProviderAWS, "node_count: 0\n", "node_count", "0 is out of range; allowed: 1..100"},
		{"node_count negative", ProviderAWS, "node_count: -2\n", "node_count", "-2 is out of range"},
		{"tenants not a list", ProviderAWS, "tenants: prod\n", "tenants", "must be a list"},
		{"tenants empty", ProviderAWS, "tenants: []\n", "tenants", "needs at least 1 item"},
		{"tenant uppercase", ProviderAWS, "tenants: [prod, Dev]\n", "tenants[1]", `invalid tenant name "Dev"; allowed: lowercase letters`},
		{"tenant system", ProviderAWS, "tenants: [system]\n", "tenants[0]", `"system" is reserved`},
		{"tenant duplicate", ProviderAWS, "tenants: [prod, dev, prod]\n", "tenants[2]", `"prod" repeats tenants[0]`},
		{"tenant too long", ProviderAWS, "tenants: [" + strings.Repeat("a", 64) + "]\n", "tenants[0]", "is 64 characters long; allowed: at most 63"},
		{"tenant number unquoted", ProviderAWS, "tenants: [2024]\n", "tenants[0]", `must be a string, got the integer 2024; allowed: a string (quote it: "2024")`},
		{"bad size", ProviderAWS, "size: large\n", "size", `unsupported value "large"; allowed: demo | small | medium`},
		{"metric retention zero", ProviderAWS, "metric_retention_days: 0\n", "metric_retention_days", "0 is out of range; allowed: 1..3650"},
		{"log retention too long", ProviderAWS, "log_retention_days: 3651\n", "log_retention_days", "3651 is out of range; allowed: 1..3650"},
		{"bad cert_issuer", ProviderAWS, "cert_issuer: letsencrypt\n", "cert_issuer", "allowed: letsencrypt-prod | letsencrypt-staging | self-signed"},
		{"letsencrypt without dns", ProviderAWS, "cert_issuer: letsencrypt-staging\n", "cert_issuer", "needs a domain name to issue a certificate for; allowed: set dns.domain, or use cert_issuer: self-signed"},
		{"bad CIDR", ProviderAWS, "data_api_authorized_ip_ranges: [10.0.0.0/8, 300.1.2.3/32]\n", "data_api_authorized_ip_ranges[1]", `invalid CIDR "300.1.2.3/32"`},
		{"CIDR host bits", ProviderAWS, "data_api_authorized_ip_ranges: [10.1.2.3/8]\n", "data_api_authorized_ip_ranges[0]", "allowed: the network address: 10.0.0.0/8"},
		{"bad aws region", ProviderAWS, "aws:\n  region: US-West\n", "aws.region", `invalid value "US-West"; allowed: an AWS region like us-west-2`},
		{"zone suffix two letters", ProviderAWS, "aws:\n  zone_suffixes: [a, b, cd]\n", "aws.zone_suffixes[2]", `invalid zone suffix "cd"; allowed: a single lowercase letter`},
		{"too few zones", ProviderAWS, "aws:\n  zone_suffixes: [a]\n", "aws.zone_suffixes", "needs at least 2 item(s)"},
		{"bad role ARN", ProviderAWS, "aws:\n  eks_admin_roles: ['arn:aws:iam::123:role/admin']\n", "aws.eks_admin_roles[0]", "allowed: an IAM role ARN like arn:aws:iam::123456789012:role/admin"},
		{"user ARN is not a role", ProviderAWS, "aws:\n  eks_admin_roles: ['arn:aws:iam::123456789012:user/me']\n", "aws.eks_admin_roles[0]", "invalid value"},
		{"bad instance type", ProviderAWS, "aws:\n  instance_type: xlarge\n", "aws.instance_type", "an EC2 instance type like m5.xlarge"},
		{"both aws and gcp", ProviderAWS, "aws: {}\ngcp:\n  project: my-project\n", "gcp", "both aws and gcp sections are set; allowed: only the aws section"},
		{"gcp section for aws", ProviderAWS, "gcp:\n  project: my-project\n", "gcp", "this config is for `opstrace create aws`"},
		{"aws section for gcp", ProviderGCP, "aws:\n  region: us-west-2\n", "aws", "this config is for `opstrace create gcp`"},
		{"gcp project missing", ProviderGCP, "gcp:\n  region: us-west2\n", "gcp.project", "is required; allowed: a GCP project ID"},
		{"gcp section missing", ProviderGCP, "tenants: [prod]\n", "gcp.project", "is required"},
		{"bad gcp project", ProviderGCP, "gcp:\n  project: My_Project\n", "gcp.project", `invalid value "My_Project"`},
		{"bad gcp region", ProviderGCP, "gcp:\n  project: my-project\n  region: us-west-2\n", "gcp.region", "a GCP region like us-west2"},
		{"eks api range IPv6", ProviderAWS, "aws:\n  api_authorized_ip_ranges: [203.0.113.0/24, \"2001:db8::/32\"]\n",
			"aws.api_authorized_ip_ranges[1]", `CIDR "2001:db8::/32" is IPv6; allowed: an IPv4 CIDR like 203.0.113.0/24: the EKS clusters opstrace makes are IPv4 clusters`},
		{"eks api range host bits", ProviderAWS, "aws:\n  api_authorized_ip_ranges: [10.1.2.3/8]\n",
			"aws.api_authorized_ip_ranges[0]", "has bits set after the prefix length; allowed: the network address: 10.0.0.0/8"},
		{"eks api ranges too many", ProviderAWS, "aws:\n  api_authorized_ip_ranges: [" + manyCIDRs(41) + "]\n",
			"aws.api_authorized_ip_ranges", "has 41 items, more than 40"},
		{"eks api ranges empty", ProviderAWS, "aws:\n  api_authorized_ip_ranges: []\n",
			"aws.api_authorized_ip_ranges", "needs at least 1 item(s), got 0; allowed: 1 to 40 IPv4 CIDRs that may reach the Kubernetes API"},
		{"gke api range bad CIDR", ProviderGCP, "gcp:\n  project: my-project\n  api_authorized_ip_ranges: [203.0.113.0/24, 203.0.113.7]\n",
			"gcp.api_authorized_ip_ranges[1]", `invalid CIDR "203.0.113.7"; allowed: an IPv4 CIDR like 203.0.113.0/24`},
		{"gke api range host bits", ProviderGCP, "gcp:\n  project: my-project\n  api_authorized_ip_ranges: [198.51.100.7/24]\n",
			"gcp.api_authorized_ip_ranges[0]", `CIDR "198.51.100.7/24" has bits set after the prefix length; allowed: the network address: 198.51.100.0/24`},
		{"gke api range IPv6", ProviderGCP, "gcp:\n  project: my-project\n  api_authorized_ip_ranges: [\"2001:db8::/32\"]\n",
			"gcp.api_authorized_ip_ranges[0]", `CIDR "2001:db8::/32" is IPv6; allowed: an IPv4 CIDR like 203.0.113.0/24: GKE authorized networks are IPv4 only`},
		{"gke api ranges empty", ProviderGCP, "gcp:\n  project: my-project\n  api_authorized_ip_ranges: []\n",
			"gcp.api_authorized_ip_ranges", "needs at least 1 item(s), got 0; allowed: 1 to 50 IPv4 CIDRs that may reach the Kubernetes API, e.g. [203.0.113.0/24]; include the egress address of the machine running opstrace"},
		{"gke api ranges too many", ProviderGCP, "gcp:\n  project: my-project\n  api_authorized_ip_ranges: [" + manyCIDRs(51) + "]\n",
			"gcp.api_authorized_ip_ranges", "has 51 items, more than 50"},
		{"gke api range repeated", ProviderGCP, "gcp:\n  project: my-project\n  api_authorized_ip_ranges: [10.0.0.0/8, 10.0.0.0/8]\n",
			"gcp.api_authorized_ip_ranges[1]", `"10.0.0.0/8" repeats gcp.api_authorized_ip_ranges[0]`},
		{"gcp section wrong type", ProviderGCP, "gcp: my-project\n", "gcp", "must be a mapping of keys, got the string"},
		{"dns domain invalid", ProviderAWS, "dns:\n  domain: opstrace_example.com\n", "dns.domain", `invalid domain name "opstrace_example.com"`},
		{"dns domain single label", ProviderAWS, "dns:\n  domain: localhost\n", "dns.domain", "invalid domain name"},
		{"dns domain too long for the gateway's name", ProviderAWS, "dns:\n  domain: " + strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." +
			strings.Repeat("c", 63) + "." + strings.Repeat("d", 54) + "\n", "dns.domain",
			"would be 254 characters long; allowed: a domain of at most 245 characters: DNS names have at most 253"},
		{"dns domain missing", ProviderAWS, "dns:\n  hosted_zone: Z123\n", "dns.domain", "is required when the dns section is set"},
		{"dns hosted zone aws", ProviderAWS, "dns:\n  domain: o.example.com\n  hosted_zone: my-zone\n", "dns.hosted_zone", "a Route 53 hosted zone ID"},
		{"bad controller image", ProviderAWS, "controller_image: 'Opstrace/Controller:v1'\n", "controller_image", "an image reference"},
		{"kubernetes version as float", ProviderAWS, "kubernetes_version: 1.30\n", "kubernetes_version", "must be a string, got the number 1.30"},
		{"two documents", ProviderAWS, "size: small\n---\nsize: demo\n", "", "more than one YAML document"},
		{"invalid YAML", ProviderAWS, "tenants: [prod\n", "", "is not valid YAML"},
	}
	if len(tests) < 20 {
		t.Fatalf("want at least 20 bad configs, have %d", len(tests))
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.file), tt.provider)
			if err == nil {
				t.Fatalf("Parse accepted:\n%s", tt.file)
			}
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("error is %T, want ErrorList: %v", err, err)
			}
			for _, fe := range list {
				if fe.Path == tt.path && strings.Contains(fe.Error(), tt.fragment) {
					return
				}
			}
			t.Errorf("no error at %q containing %q; got:\n%v", tt.path, tt.fragment, err)
		})
	}
}

func TestParseCollectsEveryProblemWithLines(t *testing.T) {
	file := `tenants: [prod, System]
node_count: -1
size: huge
aws:
  region: mars-1
  zone_suffixes: [a, a]
  color: blue
`
	_, err := Parse([]byte(file), ProviderAWS)
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("want ErrorList, got %v", err)
	}
	want := map[string]int{ // path → line
		"tenants[1]":           1,
		"node_count":           2,
		"size":                 3,
		"aws.region":           5,
		"aws.zone_suffixes[1]": 6,
		"aws.color":            7,
	}
	got := map[string]int{}
	for _, fe := range list {
		got[fe.Path] = fe.Line
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("errors (path → line) = %v, want %v\n%v", got, want, err)
	}
	t.Logf("the user sees:\n%v", err)
}

func TestParseDoesNotRepeatDecodeErrorsAsValidationErrors(t *testing.T) {
	_, err := Parse([]byte("node_count: many\n"), ProviderAWS)
	var list ErrorList
	errors.As(err, &list)
	if len(list) != 1 || list[0].Path != "node_count" || !strings.Contains(list[0].Problem, "must be an integer") {
		t.Errorf("want one type error at node_count, got %v", err)
	}
}

func TestParseAppliesDefaults(t *testing.T) {
	t.Run("aws, tenants only", func(t *testing.T) {
		got, err := Parse([]byte("tenants: [prod, dev]\n"), ProviderAWS)
		if err != nil {
			t.Fatal(err)
		}
		want := Defaults(ProviderAWS)
		want.Tenants = []string{"prod", "dev"}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v\nwant %+v", got, want)
		}
		if !reflect.DeepEqual(got.AWS.APIAuthorizedIPRanges, []string{"0.0.0.0/0"}) {
			t.Errorf("default aws.api_authorized_ip_ranges %v", got.AWS.APIAuthorizedIPRanges)
		}
		if got.Provider() != ProviderAWS || got.CertIssuer != CertIssuerSelfSigned || got.AWS.InstanceType != "m5.xlarge" {
			t.Errorf("defaults: provider %q, cert_issuer %q, instance_type %q", got.Provider(), got.CertIssuer, got.AWS.InstanceType)
		}
	})
	t.Run("aws, empty section", func(t *testing.T) {
		got, err := Parse([]byte("aws:\n"), ProviderAWS)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, Defaults(ProviderAWS)) {
			t.Errorf("got %+v, want the defaults", got)
		}
	})
	t.Run("gcp, size and dns derive defaults", func(t *testing.T) {
		got, err := Parse([]byte("size: medium\ndns:\n  domain: o.example.com\ngcp:\n  project: my-project\n"), ProviderGCP)
		if err != nil {
			t.Fatal(err)
		}
		if got.GCP.MachineType != "n2-standard-8" || got.GCP.Region != DefaultGCPRegion || got.CertIssuer != CertIssuerLetsEncryptProd {
			t.Errorf("got machine_type %q region %q cert_issuer %q", got.GCP.MachineType, got.GCP.Region, got.CertIssuer)
		}
		if got.AWS != nil {
			t.Errorf("aws section set on a gcp config: %+v", got.AWS)
		}
		// The Kubernetes API stays reachable from anywhere unless the file says otherwise: the installer
		// must reach it from wherever it runs, and it cannot know that address.
		if !reflect.DeepEqual(got.GCP.APIAuthorizedIPRanges, []string{"0.0.0.0/0"}) {
			t.Errorf("default gcp.api_authorized_ip_ranges %v", got.GCP.APIAuthorizedIPRanges)
		}
	})
	t.Run("explicit values win", func(t *testing.T) {
		file := `tenants: [prod]
node_count: 5
size: demo
metric_retention_days: 365
log_retention_days: 14
cert_issuer: letsencrypt-staging
dns:
  domain: metrics.example.com
  hosted_zone: Z0123456789ABC
data_api_authorized_ip_ranges: [203.0.113.0/24, "2001:db8::/32"]
controller_image: registry.example.com:5000/opstrace/controller:v1.2.3
gateway_image: opstrace/opstrace-gateway@sha256:` + strings.Repeat("a", 64) + `
kubernetes_version: "1.32"
aws:
  region: eu-central-1
  instance_type: c6gn.2xlarge
  zone_suffixes: [a, b]
  eks_admin_roles: ["arn:aws:iam::123456789012:role/ops/admin"]
`
		got, err := Parse([]byte(file), ProviderAWS)
		if err != nil {
			t.Fatal(err)
		}
		if got.NodeCount != 5 || got.Size != SizeDemo || got.AWS.InstanceType != "c6gn.2xlarge" || len(got.AWS.EKSAdminRoles) != 1 ||
			got.DNS.HostedZone != "Z0123456789ABC" || got.KubernetesVersion != "1.32" {
			t.Errorf("got %+v %+v %+v", got, got.AWS, got.DNS)
		}
	})
}

func TestRenderRoundTrips(t *testing.T) {
	for _, tc := range []struct{ provider, file string }{
		{ProviderAWS, "tenants: [prod]\n"},
		{ProviderAWS, "dns:\n  domain: o.example.com\naws:\n  eks_admin_roles: ['arn:aws:iam::123456789012:role/a']\n"},
		{ProviderAWS, "aws:\n  api_authorized_ip_ranges: [203.0.113.0/24]\n"},
		{ProviderGCP, "size: demo\ngcp:\n  project: my-project\n"},
		{ProviderGCP, "gcp:\n  project: my-project\n  api_authorized_ip_ranges: [203.0.113.0/24, 198.51.100.7/32]\n"},
	} {
		first, err := Parse([]byte(tc.file), tc.provider)
		if err != nil {
			t.Fatal(err)
		}
		rendered := Render(first)
		second, err := Parse(rendered, tc.provider)
		if err != nil {
			t.Fatalf("Parse(Render(c)): %v\n%s", err, rendered)
		}
		if !reflect.DeepEqual(first, second) {
			t.Errorf("round trip changed the config:\n%+v\n%+v\n%s", first, second, rendered)
		}
		if again := Render(second); string(again) != string(rendered) {
			t.Errorf("Render is not stable:\n%s\n%s", rendered, again)
		}
	}
	t.Logf("rendered defaults (aws):\n%s", Render(Defaults(ProviderAWS)))
}

// manyCIDRs is n distinct /32s, as a YAML flow list's items.
func manyCIDRs(n int) string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("10.0.%d.%d/32", i/256, i%256))
	}
	return strings.Join(out, ", ")
}

func TestParseRejectsUnknownProvider(t *testing.T) {
	if _, err := Parse([]byte("tenants: [prod]\n"), "azure"); err == nil || !strings.Contains(err.Error(), `"aws" or "gcp"`) {
		t.Errorf("got %v", err)
	}
}
