#!/usr/bin/env bash
# verify.sh: fail when a generated file is stale, Go code is unformatted, go.mod is untidy or go vet complains.
# Stale generated files are regenerated in place, so the fix is to commit what this leaves behind.
set -euo pipefail
cd "$(dirname "$0")/.."

generated=(config/crd/bases config/rbac/role.yaml charts/opstrace/crds charts/opstrace/files/role.yaml
  api/v1alpha1/zz_generated.deepcopy.go)
fingerprint() { find "${generated[@]}" -type f -print0 2>/dev/null | sort -z | xargs -0 sha256sum; }

status=0
before=$(fingerprint)
make -s manifests generate >/dev/null
after=$(fingerprint)
if [[ "$before" != "$after" ]]; then
  echo "verify: generated files were stale (now regenerated; review and commit them):" >&2
  diff <(echo "$before") <(echo "$after") | sed -n 's/^> [0-9a-f]*  /  /p' >&2
  status=1
fi

unformatted=$(gofmt -l $(find . -name '*.go' -not -path './bin/*'))
if [[ -n "$unformatted" ]]; then
  echo "verify: gofmt would change these files (run gofmt -w):" >&2
  echo "$unformatted" | sed 's/^/  /' >&2
  status=1
fi

if ! go mod tidy -diff >/dev/null 2>&1; then
  echo "verify: go.mod or go.sum is not tidy (run go mod tidy):" >&2
  go mod tidy -diff >&2 || true
  status=1
fi

go vet ./... || status=1
exit $status
