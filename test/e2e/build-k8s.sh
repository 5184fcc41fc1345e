#!/bin/sh
# Builds kube-apiserver, kube-controller-manager, kube-scheduler and kubelet
# from the wrapper module in ./k8s into .cache/bin, unless the binaries of
# this version are already there. Cold build: ~17 minutes on 2 cores.
#
# A copy of the binaries is kept outside the work tree as well
# ($BPFMOUNT_K8S_CACHE, default ~/.cache/bpfmount/k8s-<version>), like Go's
# own build cache, so a fresh clone on the same machine (CI's) skips the
# build.
set -eu
cd "$(dirname "$0")"
VERSION=v1.34.4
BIN=.cache/bin
SHARED=${BPFMOUNT_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bpfmount/k8s-$VERSION}
mkdir -p "$BIN"
if [ "$(cat "$BIN/k8s-version" 2>/dev/null)" = "$VERSION" ]; then
	echo "kubernetes $VERSION binaries cached in $BIN"
	exit 0
fi
if [ "$(cat "$SHARED/k8s-version" 2>/dev/null)" = "$VERSION" ]; then
	cp "$SHARED"/kube-apiserver "$SHARED"/kube-controller-manager "$SHARED"/kubelet "$SHARED"/kube-scheduler "$BIN"/
	echo "$VERSION" > "$BIN/k8s-version"
	echo "kubernetes $VERSION binaries copied from $SHARED"
	exit 0
fi
export GOTOOLCHAIN=local CGO_ENABLED=0
LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=$VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34 -X k8s.io/client-go/pkg/version.gitVersion=$VERSION"
cd k8s
for cmd in kube-apiserver kube-controller-manager kubelet kube-scheduler; do
	echo "building $cmd"
	go build -trimpath -ldflags "$LDFLAGS" -o "../$BIN/$cmd" "k8s.io/kubernetes/cmd/$cmd"
done
cd ..
echo "$VERSION" > "$BIN/k8s-version"
if mkdir -p "$SHARED" 2>/dev/null; then
	cp "$BIN"/kube-apiserver "$BIN"/kube-controller-manager "$BIN"/kubelet "$BIN"/kube-scheduler "$SHARED"/ &&
		echo "$VERSION" > "$SHARED/k8s-version" || echo "build-k8s.sh: could not keep a copy in $SHARED" >&2
fi
