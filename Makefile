# Every tool is pinned here and built from the Go module proxy by hack/install-tool.sh into a per-user cache,
# then linked into bin/. Nothing is downloaded from anywhere else.
KUBERNETES_VERSION ?= v1.37.1
ETCD_VERSION ?= v3.7.3
CONTROLLER_TOOLS_VERSION ?= v0.23.0
# The Cortex release the controller runs by default; tests run this binary for real.
CORTEX_VERSION ?= v1.21.1
# The release before it (manifests.PreviousCortexVersion): upgrade tests move a cluster from it to CORTEX_VERSION.
CORTEX_PREVIOUS_VERSION ?= v1.20.1
# Logs (grafana/loki) and S3 for the local cluster (MinIO publishes no semver tags: a pseudo-version).
LOKI_VERSION ?= v3.7.8
MINIO_VERSION ?= v0.0.0-20260212201848-7aac2a2c5b7c
# CRDs the controller tests install, from these projects' Go modules.
CERT_MANAGER_VERSION ?= v1.21.2
PROMETHEUS_OPERATOR_VERSION ?= v0.94.1

export GOTOOLCHAIN := local
export CGO_ENABLED := 0

BIN := $(abspath bin)
CONTROLLER_GEN := $(BIN)/controller-gen
# envtest finds kube-apiserver, etcd and kubectl here.
export KUBEBUILDER_ASSETS := $(BIN)

# The local-cluster e2e (upgrade under load on three ingesters) runs for minutes; go test stops at 10 by default.
GO_TEST_FLAGS ?= -count=1 -timeout 60m

.PHONY: help
help: ## Show the targets.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*##/ {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

##@ Quick start

LOCAL_CLUSTER ?= demo

.PHONY: run
run: build test-tools ## Run the whole distribution on this machine (opstrace create local demo).
	bin/opstrace create local $(LOCAL_CLUSTER)

.PHONY: test
test: verify build test-tools ## Run every test: real kube-apiserver, etcd, Cortex and the local cluster.
	go test $(GO_TEST_FLAGS) ./...

##@ Development

.PHONY: build
build: ## Build bin/opstrace (the CLI), bin/opstrace-controller, bin/opstrace-gateway and bin/opstrace-node-agent.
	go build -o bin/opstrace ./cmd/installer
	go build -o bin/opstrace-controller ./cmd/controller
	go build -o bin/opstrace-gateway ./cmd/gateway
	go build -o bin/opstrace-node-agent ./cmd/node-agent

.PHONY: manifests
manifests: controller-gen ## Regenerate CRDs and RBAC into config/ and the Helm chart.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd paths="./..." output:crd:artifacts:config=config/crd/bases
	rm -f charts/opstrace/crds/*.yaml
	cp config/crd/bases/*.yaml charts/opstrace/crds/
	cp config/rbac/role.yaml charts/opstrace/files/role.yaml

.PHONY: generate
generate: controller-gen ## Regenerate deepcopy functions.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths="./..."

.PHONY: verify
verify: controller-gen ## Fail when generated files, formatting, go.mod or go vet are not clean.
	hack/verify.sh

##@ Tools

.PHONY: test-tools
test-tools: ## Build (once per machine) kube-apiserver, etcd, kubectl, Cortex, Loki and MinIO for tests.
	hack/install-tool.sh kube-apiserver $(KUBERNETES_VERSION)
	hack/install-tool.sh kube-controller-manager $(KUBERNETES_VERSION)
	hack/install-tool.sh kube-scheduler $(KUBERNETES_VERSION)
	hack/install-tool.sh kubectl $(KUBERNETES_VERSION)
	hack/install-tool.sh etcd $(ETCD_VERSION)
	hack/install-tool.sh cortex $(CORTEX_VERSION)
	hack/install-tool.sh cortex $(CORTEX_PREVIOUS_VERSION) cortex-$(CORTEX_PREVIOUS_VERSION)
	hack/install-tool.sh loki $(LOKI_VERSION)
	hack/install-tool.sh minio $(MINIO_VERSION)
	hack/install-tool.sh cert-manager-crds $(CERT_MANAGER_VERSION)
	hack/install-tool.sh prometheus-operator-crds $(PROMETHEUS_OPERATOR_VERSION)

.PHONY: controller-gen
controller-gen:
	hack/install-tool.sh controller-gen $(CONTROLLER_TOOLS_VERSION)
