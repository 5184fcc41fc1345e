#!/usr/bin/env bash
# bpfmount demo: the example XDP counter, loaded by publishing a volume,
# counting real frames on a veth, read through the mounted map.
#
# Two network namespaces joined by a veth stand in for a node and its
# neighbour; the daemon runs in the "node" namespace so the host's own
# interfaces are never touched. Everything is removed on exit.
set -euo pipefail

BIN=${1:?usage: demo.sh BIN_DIR LAYOUT_PATH:TAG}
LAYOUT=${2:?usage: demo.sh BIN_DIR LAYOUT_PATH:TAG}
BIN=$(cd "$BIN" && pwd)

if [[ $(id -u) != 0 ]]; then
	echo "make demo needs root: it loads an XDP program, mounts bpf filesystems and creates network namespaces." >&2
	echo "Run: sudo make demo" >&2
	exit 1
fi

work=$(mktemp -d /tmp/bpfmount-demo.XXXXXX)
daemon=
cleanup() {
	set +e
	if [[ -n $daemon ]]; then
		kill -TERM "$daemon" 2>/dev/null
		wait "$daemon" 2>/dev/null
	fi
	# Unmount volumes, staging mounts, the bpffs and the namespace files
	# (deepest first); the namespaces die with their last mount.
	if [[ -d $work ]]; then
		awk -v w="$work" '$5 == w || index($5, w "/") == 1 {print $5}' /proc/self/mountinfo | sort -r |
			while read -r m; do umount -l "$m"; done
		rm -rf "$work"
	fi
}
trap cleanup EXIT

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "Creating two network namespaces joined by a veth"
touch "$work/node.netns" "$work/peer.netns"
unshare --net="$work/node.netns" true
unshare --net="$work/peer.netns" true
node() { nsenter --net="$work/node.netns" "$@"; }
peer() { nsenter --net="$work/peer.netns" "$@"; }
node ip link add veth-demo type veth peer name veth-peer
node ip link set veth-peer netns "$work/peer.netns"
node ip addr add 169.254.77.1/30 dev veth-demo
peer ip addr add 169.254.77.2/30 dev veth-peer
node ip link set lo up
node ip link set veth-demo up
peer ip link set veth-peer up
echo "node: veth-demo 169.254.77.1   peer: veth-peer 169.254.77.2"

step "Starting bpfmount serve (in the node namespace)"
sock="$work/csi.sock"
# nsenter execs the daemon, so $! is the daemon itself.
nsenter --net="$work/node.netns" "$BIN/bpfmount" serve --endpoint "unix://$sock" --node-id demo-node \
	--state-dir "$work/state" --bpffs-root "$work/bpffs/bpfmount" --image-cache "$work/cache" --target-root "$work" \
	>"$work/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.05; done
[[ -S $sock ]] || { cat "$work/daemon.log"; echo "daemon did not start" >&2; exit 1; }
echo "daemon pid $daemon, socket $sock"

step "Publishing a volume: image=oci:$LAYOUT interface=veth-demo (read-only)"
vol="$work/volume"
"$BIN/bpfmount" publish --endpoint "unix://$sock" --target "$vol" --readonly \
	--attr "image=oci:$LAYOUT" --attr interface=veth-demo
"$BIN/bpfmount" list --endpoint "unix://$sock" -o wide
echo
echo "The volume holds the program's map:"
ls -l "$vol"

step "Counters before traffic"
"$BIN/xdp-counter-reader" --once --map "$vol/xdp_stats_map"

step "Sending 20 UDP datagrams from the peer to the node"
peer bash -c 'for i in $(seq 20); do echo "frame $i" >/dev/udp/169.254.77.1/9; done' || true
sleep 0.2

step "Counters after traffic (read through the mounted volume)"
"$BIN/xdp-counter-reader" --once --map "$vol/xdp_stats_map"

step "Unpublishing: the program is detached and the volume unmounted"
"$BIN/bpfmount" unpublish --endpoint "unix://$sock" --target "$vol"
if node ip link show veth-demo | grep -q xdp; then
	echo "XDP program still attached!" >&2
	exit 1
fi
echo "veth-demo has no XDP program; $vol exists: $([[ -e $vol ]] && echo yes || echo no)"
step "Done; cleaning up"
