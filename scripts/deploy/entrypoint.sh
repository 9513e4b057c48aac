#!/bin/bash
# The bertkit image's entrypoint (scripts/deploy/Dockerfile; docs/DEPLOY.md).
#
#   (no arguments), serve [FLAGS], or FLAGS...
#       exec bertkit serve --host 0.0.0.0 FLAGS, adding --plan DIR for every folder
#       $BERTKIT_MODELS/*.plan (default /models; served as NAME for NAME.plan) unless FLAGS name
#       a plan themselves, and --host 0.0.0.0 unless FLAGS set --host.
#   healthcheck
#       exit 0 when GET /v2/health/ready on 127.0.0.1:${BERTKIT_HEALTHCHECK_PORT:-8000} answers
#       200 (Docker's HEALTHCHECK; the image has no curl).
#   anything else
#       runs as given: `bertkit export ...`, `bertkit info ...`, `bash`.
set -euo pipefail

healthcheck() {
    local port="${BERTKIT_HEALTHCHECK_PORT:-8000}" status
    exec 3<>"/dev/tcp/127.0.0.1/$port"
    printf 'GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' \
        "$port" >&3
    IFS= read -r -t 5 status <&3
    exec 3<&-
    case "$status" in
        "HTTP/1."?" 200 "*) exit 0 ;;
        *) echo "not ready: ${status%$'\r'}" >&2; exit 1 ;;
    esac
}

case "${1:-serve}" in
    healthcheck) healthcheck ;;
    serve) if [ $# -gt 0 ]; then shift; fi ;;
    -*) ;;
    *) exec "$@" ;;
esac

has_plan=false
has_host=false
for arg in "$@"; do
    case "$arg" in
        --plan | --plan=*) has_plan=true ;;
        --host | --host=*) has_host=true ;;
    esac
done
args=("$@")
if ! $has_host; then
    args=(--host 0.0.0.0 "${args[@]}")
fi
if ! $has_plan; then
    models="${BERTKIT_MODELS:-/models}"
    found=0
    for dir in "$models"/*.plan; do
        if [ -d "$dir" ]; then
            args+=(--plan "$dir")
            found=$((found + 1))
        fi
    done
    if [ "$found" -eq 0 ]; then
        echo "bertkit-entrypoint: no plan: mount plan folders (written by bertkit export) as" \
            "$models/NAME.plan, or pass --plan DIR or --plan NAME=DIR" >&2
        exit 2
    fi
fi
exec bertkit serve "${args[@]}"
