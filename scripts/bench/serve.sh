#!/usr/bin/env bash
# Served throughput and latency of `bertkit serve` on the real all-MiniLM-L6-v2 (an embedding plan),
# next to the plan runtime in-process on the same inputs (`bertkit bench-serve --in-process`:
# tokenize + run in batches of the plan's max batch, no HTTP). The inputs are the first INPUTS
# movie-review sentences (scripts/fetch-assets.sh), one per request, to each of ENDPOINTS:
# `embed` (POST /embed, JSON), `infer` (KServe v2 over HTTP, JSON tensors), `grpc` (KServe v2
# ModelInfer over gRPC, raw tensors as tritonclient.grpc sends them; the server then also
# listens on --grpc-port).
#
#   1. export the plan (PRECISION, default int8; buckets 32,64,128);
#   2. start `bertkit serve` (THREADS runtime threads, 1 tokenization worker), wait until ready;
#   3. ROUNDS rounds, each: the in-process run (REQUESTS inputs, THREADS threads, while the idle
#      server waits), then for each endpoint `bertkit bench-serve` at concurrency 1, 8, 32 and 64 (closed loop:
#      each client sends its next request when answered), REQUESTS requests each (concurrency 1:
#      REQUESTS/4). The ratio is taken within a round, so drift in the machine's speed (seen here:
#      ±25% over minutes) hits both sides alike;
#   4. SIGTERM, and a table per endpoint of medians over rounds: inputs/s, served ÷ in-process,
#      p50/p90/p99.
# The load generator runs on the same machine and takes CPU from the server: on a 2-core machine
# that is part of what the ratio measures.
#
# Usage: scripts/bench/serve.sh [THREADS=2] [REQUESTS=2000] [ROUNDS=3]
#   env: BIN (target/release/bertkit), MODEL (assets/all-MiniLM-L6-v2), PRECISION (int8),
#        INPUTS (2000), PORT (18000; gRPC on PORT+1), DELAY_US (the server's --max-queue-delay-us, 0),
#        ENDPOINTS ("embed"; e.g. "embed infer grpc"),
#        WORK (default a temp dir, removed at exit)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
echo "machine: $(scripts/bench/cpu.sh)"
THREADS=${1:-2}
REQUESTS=${2:-2000}
ROUNDS=${3:-3}
DELAY_US=${DELAY_US:-0}
BIN=${BIN:-target/release/bertkit}
MODEL=${MODEL:-assets/all-MiniLM-L6-v2}
PRECISION=${PRECISION:-int8}
INPUTS=${INPUTS:-2000}
PORT=${PORT:-18000}
ENDPOINTS=${ENDPOINTS:-embed}
GRPC_ARGS=()
if [[ " $ENDPOINTS " == *" grpc "* ]]; then GRPC_ARGS=(--grpc-port "$((PORT + 1))"); fi
SERVER=
stop_server() { if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; fi; }
if [ -z "${WORK:-}" ]; then
    WORK="$(mktemp -d)"
    trap 'stop_server; rm -rf "$WORK"' EXIT
else
    mkdir -p "$WORK"
    trap stop_server EXIT
fi
head -n "$INPUTS" assets/data/sentiment/train.jsonl > "$WORK/inputs.jsonl"
"$BIN" export --model "$MODEL" --out "$WORK/bench.plan" --precision "$PRECISION" \
    --seq-buckets 32,64,128 --max-length 128 --no-tune --overwrite > "$WORK/export.log"
"$BIN" serve --plan "bench=$WORK/bench.plan" --port "$PORT" "${GRPC_ARGS[@]}" --threads "$THREADS" \
    --tokenization-workers 1 --max-queue-delay-us "$DELAY_US" > "$WORK/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 600); do
    grep -q "bertkit serve: ready" "$WORK/serve.log" && break
    sleep 0.1
done
grep -q "bertkit serve: ready" "$WORK/serve.log" || { cat "$WORK/serve.log"; exit 1; }
for round in $(seq "$ROUNDS"); do
    "$BIN" bench-serve --in-process --plan "$WORK/bench.plan" --threads "$THREADS" \
        --requests "$REQUESTS" --input "$WORK/inputs.jsonl" --json > "$WORK/in-process-$round.json"
    for e in $ENDPOINTS; do
        url="http://127.0.0.1:$PORT"
        [ "$e" = grpc ] && url="http://127.0.0.1:$((PORT + 1))"
        for c in 1 8 32 64; do
            n=$REQUESTS
            [ "$c" = 1 ] && n=$((REQUESTS / 4))
            "$BIN" bench-serve --url "$url" --concurrency "$c" --requests "$n" --model bench \
                --input "$WORK/inputs.jsonl" --endpoint "$e" --json > "$WORK/served-$e-$c-$round.json"
        done
    done
done
kill -TERM "$SERVER"
wait "$SERVER"
SERVER=
python3 - "$WORK" "$THREADS" "$PRECISION" "$ROUNDS" "$DELAY_US" "$ENDPOINTS" <<'PY'
import json, statistics, sys
work, threads, precision, rounds, delay, endpoints = sys.argv[1:7]
rounds = range(1, int(rounds) + 1)
med = statistics.median
ip = [json.load(open(f"{work}/in-process-{r}.json")) for r in rounds]
print(f"plan: MiniLM embedding, {precision}, {threads} runtime threads, queue delay {delay} us; "
      f"inputs: movie-review sentences, one per request; medians of {len(ip)} rounds")
each = ", ".join("%.1f" % x["inputs_per_s"] for x in ip)
print(f"in-process (batches of {ip[0]['batch']}): {med(x['inputs_per_s'] for x in ip):.1f} inputs/s "
      f"(rounds: {each})")
names = {"embed": "HTTP POST /embed (JSON)", "infer": "HTTP KServe v2 infer (JSON tensors)",
         "grpc": "gRPC KServe v2 ModelInfer (raw tensors)"}
print("| endpoint | concurrency | served inputs/s | served ÷ in-process | p50 ms | p90 ms | p99 ms | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for e in endpoints.split():
    for c in (1, 8, 32, 64):
        rs = [json.load(open(f"{work}/served-{e}-{c}-{r}.json")) for r in rounds]
        ratio = med(r["inputs_per_s"] / i["inputs_per_s"] for r, i in zip(rs, ip))
        print(f"| {names.get(e, e)} | {c} | {med(r['inputs_per_s'] for r in rs):.1f} | {ratio:.2f} | "
              f"{med(r['p50_ms'] for r in rs):.2f} | {med(r['p90_ms'] for r in rs):.2f} | "
              f"{med(r['p99_ms'] for r in rs):.2f} | {sum(r['errors'] for r in rs)} |")
PY
