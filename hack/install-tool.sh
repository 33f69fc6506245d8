#!/usr/bin/env bash
# install-tool.sh NAME VERSION: build a pinned tool from the Go module proxy into a per-user cache keyed by
# name and version, then link it into bin/. A tool already in the cache costs nothing, so a fresh clone on a
# machine that built it once (CI's case) only makes the link.
#
# Nothing here downloads from anywhere but the Go module proxy: setup-envtest and release tarballs cannot be
# reached from our build machines.
set -euo pipefail

name=${1:?usage: install-tool.sh NAME VERSION [LINK]}
version=${2:?usage: install-tool.sh NAME VERSION [LINK]}
# LINK names the link in bin/ (default NAME), so two versions of one tool can sit side by side.
linkname=${3:-$name}

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${OPSTRACE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/opstrace/tools}
target="$cache/$name-$version"
mkdir -p "$cache" "$root/bin"

link() { ln -sfn "$target" "$root/bin/$linkname"; }

if [[ -x "$target" ]]; then
  link
  exit 0
fi

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# wrapper makes a throwaway module that requires MODULE@VERSION, so `go build` resolves it exactly as pinned.
wrapper() {
  local module=$1 modversion=$2
  (cd "$work" && go mod init opstrace.io/toolbuild >/dev/null 2>&1 && go mod edit -require="$module@$modversion")
}

# copy_replaces MODULE VERSION: a module's replace directives bind only when it is the main module, so a
# wrapper must repeat them; `go install` refuses such modules outright. Local-path replaces are skipped.
copy_replaces() {
  local modfile
  modfile=$(cd "$work" && go mod download -json "$1@$2" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  awk '/^replace \(/ {block=1; next} block && /^\)/ {block=0; next}
       /^replace / {sub(/^replace /, ""); print; next} block {print}' "$modfile" |
    sed 's#//.*##' | awk 'NF == 4 && $2 == "=>" {print $1 "=" $3 "@" $4}' |
    while read -r replacement; do (cd "$work" && go mod edit -replace="$replacement"); done
}

echo ">> building $name $version into $target (first time on this machine; cached afterwards)" >&2
start=$SECONDS
case "$name" in
  kube-apiserver|kubectl|kube-controller-manager|kube-scheduler)
    # k8s.io/kubernetes points its staging modules at ./staging/...; use their published v0.x twins instead.
    minor=${version#v1.}; minor=${minor%%.*}
    staging="0.${version#v1.}"
    wrapper k8s.io/kubernetes "$version"
    modfile=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
    for m in $(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$modfile"); do
      (cd "$work" && go mod edit -replace="$m=$m@v$staging")
    done
    stamp="k8s.io/component-base/version"
    client="k8s.io/client-go/pkg/version"
    ldflags="-s -w"
    for pkg in "$stamp" "$client"; do
      ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
    done
    (cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$target.tmp" "k8s.io/kubernetes/cmd/$name")
    ;;
  etcd)
    wrapper go.etcd.io/etcd/server/v3 "$version"
    (cd "$work" && go build -trimpath -ldflags "-s -w" -o "$target.tmp" go.etcd.io/etcd/server/v3)
    ;;
  cortex)
    # Cortex's own Makefile builds with these tags; without slicelabels it panics on the first push.
    wrapper github.com/cortexproject/cortex "$version"
    copy_replaces github.com/cortexproject/cortex "$version"
    (cd "$work" && go build -trimpath -tags netgo,slicelabels -ldflags "-s -w" -o "$target.tmp" \
      github.com/cortexproject/cortex/cmd/cortex)
    ;;
  loki)
    # Loki's Makefile builds with -tags netgo. Its replace of github.com/grafana/loki/pkg/push => ./pkg/push is
    # local and skipped, so that module resolves to its published pseudo-version. AGPL: run only as a process.
    wrapper github.com/grafana/loki/v3 "$version"
    copy_replaces github.com/grafana/loki/v3 "$version"
    (cd "$work" && go build -trimpath -tags netgo -ldflags "-s -w" -o "$target.tmp" \
      github.com/grafana/loki/v3/cmd/loki)
    ;;
  minio)
    # MinIO publishes no semver tags; VERSION is the pseudo-version the proxy serves. AGPL: run only as a process.
    wrapper github.com/minio/minio "$version"
    copy_replaces github.com/minio/minio "$version"
    (cd "$work" && go build -trimpath -tags kqueue -ldflags "-s -w" -o "$target.tmp" github.com/minio/minio)
    ;;
  cert-manager-crds|prometheus-operator-crds)
    # CRD manifests shipped inside the projects' Go modules, for tests that need the kinds to exist.
    case "$name" in
      cert-manager-crds) module=github.com/cert-manager/cert-manager; sub=deploy/crds ;;
      prometheus-operator-crds) module=github.com/prometheus-operator/prometheus-operator; sub=example/prometheus-operator-crd ;;
    esac
    dir=$(cd "$work" && go mod download -json "$module@$version" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
    ln -sfn "$dir/$sub" "$target.tmp"
    ;;
  controller-gen)
    wrapper sigs.k8s.io/controller-tools "$version"
    (cd "$work" && go build -trimpath -o "$target.tmp" sigs.k8s.io/controller-tools/cmd/controller-gen)
    ;;
  *)
    echo "install-tool.sh: unknown tool $name; add a case for it" >&2
    exit 2
    ;;
esac
mv -T "$target.tmp" "$target"
echo ">> built $name $version in $((SECONDS - start))s" >&2
link
