#!/usr/bin/env bash
# Prep benchmark: throughput against the raw tokenizers crate on the same text and cores
# (1 and 2 threads), then peak memory of `bertkit prep` at 1x and 10x the input.
#
# Usage: scripts/bench/prep.sh [THREADS_LIST]      (default 1,2; results go in docs/PERFORMANCE.md)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
THREADS="${1:-1,2}"
scripts/fetch-assets.sh >&2
cargo build --release --quiet
B=target/release/bertkit
TOK=assets/all-MiniLM-L6-v2
echo "machine: $(scripts/bench/cpu.sh)"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/sotu10" "$TMP/wiki10"
for i in 0 1 2 3 4 5 6 7 8 9; do
    cp -r assets/data/sotu "$TMP/sotu10/copy$i"
    cp assets/data/wikipedia/*.bz2 "$TMP/wiki10/part$i.xml.bz2"
done

echo; echo "## Throughput: State of the Union (plain text, 233 files, 10.8 MB)"
cargo bench -q -p bertkit-train --bench prep -- assets/data/sotu --tokenizer "$TOK" --threads "$THREADS" 2>/dev/null
python3 scripts/bench/make_multistream.py assets/data/wikipedia/*.bz2 "$TMP/multistream10.xml.bz2" 10
echo; echo "## Throughput: one multistream .bz2 (Wikipedia layout, 100 pages a stream), the sample's pages x10"
cargo bench -q -p bertkit-train --bench prep -- "$TMP/multistream10.xml.bz2" --tokenizer "$TOK" --threads "$THREADS" 2>/dev/null
echo; echo "## Throughput: Wikipedia sample x10 (10 pages-articles .bz2 files, 57 MB of wikitext)"
cargo bench -q -p bertkit-train --bench prep -- "$TMP/wiki10" --tokenizer "$TOK" --threads "$THREADS" 2>/dev/null
python3 scripts/bench/make_multistream.py assets/data/wikipedia/*.bz2 "$TMP/multistream10.xml.bz2" 10
echo; echo "## Throughput: one multistream .bz2 (Wikipedia layout, 100 pages a stream), the sample's pages x10"
cargo bench -q -p bertkit-train --bench prep -- "$TMP/multistream10.xml.bz2" --tokenizer "$TOK" --threads "$THREADS" 2>/dev/null
echo; echo "## Throughput: Wikipedia sample x1 (one file, 5.7 MB of wikitext: one shard)"
cargo bench -q -p bertkit-train --bench prep -- assets/data/wikipedia --tokenizer "$TOK" --threads "$THREADS" 2>/dev/null

echo; echo "## Peak memory (bertkit prep --nsp, all cores)"
echo "| input | --shard-size | size on disk | tokens | shards | seconds | peak RSS |"
echo "|---|---|---|---|---|---|---|"
run() { # NAME INPUT SHARD_SIZE
    local out="$TMP/out"
    /usr/bin/time -f "%e %M" -o "$TMP/time" "$B" prep --input "$2" --tokenizer "$TOK" --out "$out" \
        --nsp --shard-size "$3" --quiet > "$TMP/log"
    read -r secs kb < "$TMP/time"
    local counts
    counts="$(python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(m['counts']['tokens'], '|', len(m['shards']))" "$out/manifest.json")"
    echo "| $1 | $3 | $(du -sh "$2" | cut -f1) | $counts | $secs | $((kb / 1024)) MB |"
    rm -rf "$out"
}
run "SOTU 1x" assets/data/sotu 4MB
run "SOTU 10x" "$TMP/sotu10" 4MB
run "Wikipedia 1x" assets/data/wikipedia 4MB
run "Wikipedia 10x (10 files)" "$TMP/wiki10" 4MB
run "SOTU 1x" assets/data/sotu 16MB
run "SOTU 10x" "$TMP/sotu10" 16MB
