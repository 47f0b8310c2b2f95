#!/bin/sh
# The S3 service of docker-compose.yml: one `weed server` (master, volume, filer, S3 gateway).
# Its only identity is made here from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, given to the
# container at start; the key never lies in a file of the project or in an image.
#
# Settings (environment): WEED_IP (address the parts use among themselves, default 127.0.0.1),
# WEED_BIND (default 0.0.0.0: reachable from the other services' containers), S3_PORT (8333),
# WEED_MASTER_PORT (9333), WEED_VOLUME_PORT (8080), WEED_FILER_PORT (8888), WEED_DIR (/data),
# WEED_EXTRA_ARGS (more flags, e.g. gRPC ports when sharing the host's network).
set -eu
: "${AWS_ACCESS_KEY_ID:?set AWS_ACCESS_KEY_ID: it becomes this S3 server's access key}"
: "${AWS_SECRET_ACCESS_KEY:?set AWS_SECRET_ACCESS_KEY: it becomes this S3 server's secret key}"
config="$(mktemp -d)/s3.json"
umask 077
printf '{"identities": [{"name": "spot-runner", "credentials": [{"accessKey": "%s", "secretKey": "%s"}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}\n' \
    "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$config"
mkdir -p "${WEED_DIR:-/data}"
# shellcheck disable=SC2086 # WEED_EXTRA_ARGS is a list of flags
exec weed server -dir="${WEED_DIR:-/data}" -ip="${WEED_IP:-127.0.0.1}" -ip.bind="${WEED_BIND:-0.0.0.0}" \
    -master.port="${WEED_MASTER_PORT:-9333}" -master.volumeSizeLimitMB=1024 \
    -volume.port="${WEED_VOLUME_PORT:-8080}" -volume.max=0 \
    -filer -filer.port="${WEED_FILER_PORT:-8888}" \
    -s3 -s3.port="${S3_PORT:-8333}" -s3.config="$config" \
    ${WEED_EXTRA_ARGS:-}
