#!/usr/bin/env bash
# Build the driftmon image from the Dockerfile without pulling anything from a container registry:
#   1. a Debian bookworm base (python3, pip, passwd) made by mmdebstrap from Debian packages,
#      cached as a tarball keyed on its package list, imported with buildah as a local image;
#   2. the Dockerfile built on it with buildah (--build-arg BASE_IMAGE), pip's CA bundle ($PIP_CERT,
#      when set) given to the download step as a build secret, never stored in the image.
# Runs as root without a container engine: STORAGE_DRIVER=vfs, BUILDAH_ISOLATION=chroot, in a store of
# its own under the cache folder (layers and the pip cache survive between runs on one machine).
#
#   scripts/build-image.sh build [TAG]        # default TAG: localhost/driftmon:ci; prints the image id
#   scripts/build-image.sh buildah ARGS...    # buildah on the same store, e.g. `buildah run`, `push`
#
# Environment: DRIFTMON_CACHE (rootfs tarballs, the image store), DEBIAN_MIRROR (default
# http://deb.debian.org/debian), PIP_CERT (a CA bundle for pip's downloads), STORAGE_DRIVER.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${HOME:-}" ]; then HOME=$(getent passwd "$(id -u)" | cut -d: -f6); export HOME; fi
CACHE=${DRIFTMON_CACHE:-$HOME/.cache/driftmon}/image
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What python:3.11-slim gives the Dockerfile: python3 with pip, groupadd/useradd, CA certificates.
PACKAGES=python3,python3-pip,passwd,ca-certificates
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs} BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}

say() { printf 'build-image: %s\n' "$*" >&2; }
die() { printf 'build-image: ERROR: %s\n' "$*" >&2; exit 1; }
# buildah 1.28 does not read STORAGE_DRIVER itself: pass it, and the store, on every call.
# One run root per store (locks and mount state must not be shared between stores).
RUNROOT=/run/driftmon-buildah-$(printf '%s' "$CACHE" | sha256sum | cut -c1-8)-$STORAGE_DRIVER
store() { buildah --root "$CACHE/storage-$STORAGE_DRIVER" --runroot "$RUNROOT" --storage-driver "$STORAGE_DRIVER" "$@"; }

case "${1:-build}" in
    buildah) shift; store "$@"; exit $? ;;
    build) TAG=${2:-localhost/driftmon:ci} ;;
    *) die "usage: $0 build [TAG] | buildah ARGS..." ;;
esac

for tool in mmdebstrap buildah; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (scripts/setup.sh installs it)"
done
mkdir -p "$CACHE"

key=$(printf '%s\n' "$SUITE" "$MIRROR" "$PACKAGES" | sha256sum | cut -c1-12)
base=localhost/driftmon-base:$SUITE-$key
rootfs=$CACHE/rootfs-$SUITE-$key.tar

if store inspect --type image "$base" >/dev/null 2>&1; then
    say "base image $base: present"
else
    if [ -s "$rootfs" ]; then
        say "rootfs: cached $rootfs"
    else
        say "rootfs: mmdebstrap --variant=minbase $SUITE ($PACKAGES)"
        started=$SECONDS
        # Like the official python images, pip installs into the system Python: drop Debian's PEP 668
        # marker. Docs, man pages and apt lists are not needed in an image.
        # The merged-usr hook merges /usr as Debian does, without the usrmerge package (and its Perl).
        log=$CACHE/mmdebstrap.log
        mmdebstrap --quiet --variant=minbase --include="$PACKAGES" --format=tar \
            --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
            --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
            --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
            --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
            "$SUITE" "$rootfs.tmp" "$MIRROR" >"$log" 2>&1 \
            || { tail -n 30 "$log" >&2; rm -f "$rootfs.tmp"; die "mmdebstrap failed (log: $log)"; }
        mv "$rootfs.tmp" "$rootfs"
        say "rootfs: $(du -h "$rootfs" | cut -f1) in $((SECONDS - started)) s"
    fi
    ctr=$(store from scratch)
    trap 'store rm "$ctr" >/dev/null 2>&1 || true' EXIT
    mnt=$(store mount "$ctr")
    tar -C "$mnt" -xf "$rootfs"
    store umount "$ctr" >/dev/null
    store config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
        --cmd python3 "$ctr"
    store commit --quiet --rm "$ctr" "$base" >/dev/null
    trap - EXIT
    say "base image $base: imported"
fi

# The build context is the Dockerfile and what .dockerignore lets in: the same inputs, the same image.
context=()
for path in Dockerfile .dockerignore pyproject.toml README.md LICENSE detectors monitor; do
    [ -e "$ROOT/$path" ] && context+=("$path")
done
inputs=$(cd "$ROOT" && find "${context[@]}" -type f ! -name '*.py[cod]' ! -path '*/__pycache__/*' -print0 \
    | LC_ALL=C sort -z | xargs -0 cat | sha256sum | cut -c1-16)
built=localhost/driftmon-build:$inputs-$key
if store inspect --type image "$built" >/dev/null 2>&1; then
    store tag "$built" "$TAG"
    say "$TAG: unchanged sources, the image built before ($built): $(store images --format '{{.Size}}' "$TAG" | head -n 1)"
    store inspect --type image --format '{{.FromImageID}}' "$TAG"
    exit 0
fi

# No --layers: buildah 1.28 reused a cached `COPY . .` layer after the sources had changed. The whole image
# is keyed on its inputs above instead.
build_args=(--build-arg "BASE_IMAGE=$base" --no-cache --tag "$TAG" --tag "$built" --file "$ROOT/Dockerfile")
if [ -n "${PIP_CERT:-}" ] && [ -s "$PIP_CERT" ]; then
    build_args+=(--secret "id=pip_cert,src=$PIP_CERT")
fi
say "buildah build ${build_args[*]} $ROOT"
started=$SECONDS
store build --quiet "${build_args[@]}" "$ROOT" >&2
# Only the latest build is kept: older builds' layers would fill the disk (vfs copies every layer whole).
for old in $(store images --format '{{.Name}}:{{.Tag}}' | grep '^localhost/driftmon-build:' | grep -v -x "$built"); do
    store rmi "$old" >/dev/null 2>&1 || true
done
store rmi --prune >/dev/null 2>&1 || true
say "built $TAG in $((SECONDS - started)) s: $(store images --format '{{.Size}}' "$TAG" | head -n 1)"
store inspect --type image --format '{{.FromImageID}}' "$TAG"
