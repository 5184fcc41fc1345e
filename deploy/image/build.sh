#!/usr/bin/env bash
# Builds the release images from the Dockerfile with buildah (rootful, vfs
# storage, no Docker engine) and writes them as OCI archives:
#
#   build/images/bpfmount-<version>.tar            (target bpfmount)
#   build/images/xdp-counter-reader-<version>.tar  (target xdp-counter-reader)
#   build/images/exec-events-reader-<version>.tar  (target exec-events-reader)
#
# Each archive holds one image whose index names it
# bpfmount/<name>:<version>; `ctr images import` and `skopeo copy
# oci-archive:...` read it.
#
# Where a registry is reachable, the Dockerfile's pinned GO_IMAGE is used as
# is. Where none is (BPFMOUNT_LOCAL_GO_IMAGE=1, the default when
# GO_IMAGE is unset and the pinned image cannot be had), the Go build image
# is made here: a Debian root filesystem from debootstrap with this
# machine's Go toolchain copied in, imported into buildah's storage as
# localhost/bpfmount-build/golang:<go version>. The build steps reach the Go
# module proxy and Debian's archive, nothing else.
#
# Usage: deploy/image/build.sh [version]   (make image; root)
# Environment: GO_IMAGE (skip the local base), DEBIAN_MIRROR (debootstrap's
# mirror; its default when unset), IMAGE_OUT (default build/images),
# BUILDAH_STORE (buildah's storage, default ~/.cache/bpfmount/buildah:
# outside the work tree, like Go's build cache, so a fresh clone on the same
# machine reuses the Go base image and the module-download layer).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
version=${1:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
out=${IMAGE_OUT:-$root/build/images}
if [ "$(id -u)" != 0 ]; then
	echo "deploy/image/build.sh: run as root (rootful buildah with the vfs driver)" >&2
	exit 1
fi
for tool in buildah debootstrap; do
	command -v "$tool" >/dev/null || {
		echo "deploy/image/build.sh: $tool is missing: apt-get install -y buildah debootstrap" >&2
		exit 1
	}
done
# vfs needs no kernel overlay support or fuse; its own storage keeps these
# images apart from anything else the machine builds.
export STORAGE_DRIVER=vfs
export BUILDAH_ISOLATION=chroot
cache=${BUILDAH_STORE:-${XDG_CACHE_HOME:-$HOME/.cache}/bpfmount/buildah}
store=(--root "$cache/storage" --runroot "$cache/run")
mkdir -p "$out" "$cache"
# containers/storage makes its driver directories private bind mounts of
# themselves and leaves them mounted when buildah exits: take back, at the
# end, the ones this run made, so the machine ends as it started.
premounted=$(awk -v p="$cache/storage/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo)
unmount_ours() {
	local m
	awk -v p="$cache/storage/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
		grep -qxF "$m" <<<"$premounted" || umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
	done
}
trap unmount_ours EXIT

go_image=${GO_IMAGE:-}
if [ -z "$go_image" ]; then
	gov=$(go env GOVERSION)
	gov=${gov#go}
	go_image=localhost/bpfmount-build/golang:$gov
	if ! buildah "${store[@]}" inspect --type image "$go_image" >/dev/null 2>&1; then
		echo "== making the Go build image $go_image (debootstrap + this machine's Go $gov)"
		rootfs=$cache/rootfs
		rm -rf "$rootfs"
		# minbase has apt; ca-certificates and libcap2-bin are what the
		# Dockerfile's stages take from the Go image (the driver's CA bundle,
		# setcap for the reader).
		debootstrap --variant=minbase --include=ca-certificates,libcap2-bin \
			bookworm "$rootfs" ${DEBIAN_MIRROR:-} >"$cache/debootstrap.log" 2>&1 || {
			tail -20 "$cache/debootstrap.log" >&2
			exit 1
		}
		rm -rf "$rootfs/var/cache/apt/archives/"*.deb
		cp -a "$(go env GOROOT)" "$rootfs/usr/local/go"
		# The build steps trust what this machine trusts (a machine behind
		# a TLS-inspecting egress has its own CA). Kept apart from Debian's
		# bundle, which is what the driver image copies: Go reads
		# SSL_CERT_DIR in addition to the system bundle.
		mkdir -p "$rootfs/usr/local/share/bpfmount-build-ca"
		cp /etc/ssl/certs/ca-certificates.crt "$rootfs/usr/local/share/bpfmount-build-ca/host.pem"
		ctr=$(buildah "${store[@]}" from scratch)
		buildah "${store[@]}" copy --quiet "$ctr" "$rootfs" / >/dev/null
		buildah "${store[@]}" config --env PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
			--env GOPATH=/go --env SSL_CERT_DIR=/usr/local/share/bpfmount-build-ca --workingdir /go "$ctr"
		buildah "${store[@]}" commit --quiet "$ctr" "$go_image" >/dev/null
		buildah "${store[@]}" rm "$ctr" >/dev/null
		rm -rf "$rootfs"
	fi
fi

created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
for target in bpfmount xdp-counter-reader exec-events-reader; do
	ref=bpfmount/$target:$version
	echo "== building $ref (Dockerfile target $target, GO_IMAGE=$go_image)"
	# --network host: build steps reach the module proxy and Debian's
	# archive; the layer cache (--layers) makes the second target and
	# rebuilds reuse the dependency and compile steps.
	buildah "${store[@]}" bud --quiet --layers --network host \
		--target "$target" \
		--build-arg GO_IMAGE="$go_image" \
		--build-arg VERSION="$version" \
		--build-arg CREATED="$created" \
		--build-arg REVISION="$revision" \
		-t "$ref" . >/dev/null
	rm -f "$out/$target-$version.tar"
	buildah "${store[@]}" push --quiet "$ref" "oci-archive:$out/$target-$version.tar:$ref" >/dev/null
	echo "   $out/$target-$version.tar ($(du -h "$out/$target-$version.tar" | cut -f1))"
done
# Layers of earlier builds that no tag names any more (vfs copies whole
# layers: they add up).
buildah "${store[@]}" rmi --prune >/dev/null 2>&1 || true
