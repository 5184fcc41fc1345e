#!/usr/bin/env bash
# Fetches what the VM tests need and caches it under test/vm/.cache/:
#   - qemu-system-x86 (installed with apt-get when missing, --no-install-recommends),
#   - Debian's cloud kernels: bookworm (6.1) and bookworm-backports (6.12),
#     downloaded as .deb with a PRIVATE apt configuration (sources list, lists
#     and cache dirs under the cache dir: the machine's apt setup is never
#     changed) and unpacked with dpkg -x.
# The Debian mirror is the one the machine's apt already uses for bookworm
# (override with DEBIAN_MIRROR=URI).
#
# Also Debian bookworm's xdp-tools (libxdp's xdp-loader) with its libraries,
# unpacked under test/vm/.cache/xdp-tools/root for the libxdp interop test.
#
# Usage: test/vm/kernels.sh [6.1|6.12 ...]   (default: both)
# Prints nothing but progress; each kernel ends up at
#   test/vm/.cache/kernels/<name>/{vmlinuz,config,modules/<release>/...}
# VMEXEC_CACHE=DIR puts the cache elsewhere (vmexec reads the same variable),
# for example somewhere that outlives a fresh clone.
set -euo pipefail
cd "$(dirname "$0")"
cache="${VMEXEC_CACHE:-$PWD/.cache}"
names=("$@")
((${#names[@]})) || names=(6.1 6.12)

if ! command -v qemu-system-x86_64 >/dev/null || ! command -v xz >/dev/null; then
	echo "vm: installing qemu-system-x86" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null
fi

suite_of() {
	case "$1" in
	6.1) echo bookworm ;;
	6.12) echo bookworm-backports ;;
	*) echo "vm: unknown kernel $1 (want 6.1 or 6.12)" >&2; return 1 ;;
	esac
}

mirror="${DEBIAN_MIRROR:-}"
if [[ -z $mirror ]]; then
	mirror=$(apt-get indextargets --format '$(RELEASE) $(REPO_URI)' 2>/dev/null | awk '$1 == "bookworm" {print $2; exit}')
fi
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

# apt_setup SUITE: a private apt configuration for SUITE under the cache,
# its lists fetched; sets the array opts.
apt_setup() {
	local suite=$1
	apt="$cache/apt/$suite"
	rm -rf "$apt"
	mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/parts" "$apt/prefs" "$apt/debs"
	cat >"$apt/sources.list" <<SRC
deb [signed-by=$keyring] $mirror $suite main
SRC
	opts=(
		-o "Dir::Etc::SourceList=$apt/sources.list"
		-o "Dir::Etc::SourceParts=$apt/parts"
		-o "Dir::Etc::Preferences=$apt/prefs/none"
		-o "Dir::Etc::PreferencesParts=$apt/prefs"
		-o "Dir::State::Lists=$apt/lists"
		-o "Dir::Cache=$apt/cache"
		-o "Debug::NoLocking=1"
		-o "APT::Sandbox::User=root"
		-o "APT::Default-Release=$suite"
	)
	apt-get "${opts[@]}" -qq update
}

for name in "${names[@]}"; do
	suite=$(suite_of "$name")
	dest="$cache/kernels/$name"
	if [[ -f $dest/.complete ]]; then
		continue
	fi
	if [[ -z $mirror ]]; then
		echo "vm: cannot tell which Debian mirror to use: set DEBIAN_MIRROR" >&2
		exit 1
	fi
	echo "vm: downloading the $suite cloud kernel ($name)" >&2
	apt_setup "$suite"
	# The cloud metapackage depends on the versioned image package.
	meta=$(apt-cache "${opts[@]}" madison linux-image-cloud-amd64 | awk -v s="$suite/main" '$0 ~ s {print $3; exit}')
	[[ -n $meta ]] || { echo "vm: no linux-image-cloud-amd64 in $suite" >&2; exit 1; }
	pkg=$(apt-cache "${opts[@]}" depends "linux-image-cloud-amd64=$meta" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
	[[ -n $pkg ]] || { echo "vm: cannot resolve the image package of linux-image-cloud-amd64 $meta" >&2; exit 1; }
	(cd "$apt/debs" && apt-get "${opts[@]}" -qq download "$pkg")
	rm -rf "$dest"
	mkdir -p "$dest"
	deb=$(ls "$apt/debs"/*.deb | head -1)
	dpkg -x "$deb" "$dest/root"
	rel=$(ls "$dest/root/lib/modules" | head -1)
	mv "$dest/root/boot/vmlinuz-$rel" "$dest/vmlinuz"
	mv "$dest/root/boot/config-$rel" "$dest/config"
	mkdir -p "$dest/modules"
	mv "$dest/root/lib/modules/$rel" "$dest/modules/$rel"
	rm -rf "$dest/root" "$apt/debs"
	echo "$pkg $rel" >"$dest/.complete"
	echo "vm: $name is $pkg ($rel)" >&2
done

# Debian's xdp-tools (libxdp, xdp-loader) with the libraries they need,
# unpacked into a root filesystem tree that vmexec -rootfs merges into the
# VM's: the interop test runs libxdp's own tools against bpfmount's chains.
xdp="$cache/xdp-tools"
if [[ ! -f $xdp/.complete ]]; then
	if [[ -z $mirror ]]; then
		echo "vm: cannot tell which Debian mirror to use: set DEBIAN_MIRROR" >&2
		exit 1
	fi
	echo "vm: downloading Debian bookworm's xdp-tools" >&2
	apt_setup bookworm
	(cd "$apt/debs" && apt-get "${opts[@]}" -qq download xdp-tools libxdp1 libbpf1 libelf1 zlib1g libc6)
	rm -rf "$xdp"
	mkdir -p "$xdp/root"
	for deb in "$apt/debs"/*.deb; do
		dpkg -x "$deb" "$xdp/root"
	done
	ver=$(dpkg-deb -f "$apt"/debs/xdp-tools_*.deb Version)
	rm -rf "$xdp/root/usr/share" "$apt/debs"
	echo "xdp-tools $ver" >"$xdp/.complete"
	echo "vm: xdp-tools unpacked in $xdp/root" >&2
fi
