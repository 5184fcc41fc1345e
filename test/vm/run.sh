#!/usr/bin/env bash
# Runs the VM kernel tests (test/vm) in qemu, on each kernel in turn:
# Debian bookworm's 6.1 and bookworm-backports' 6.12 cloud kernels. Fetches
# and caches what it needs first (kernels.sh). Runs as root.
#
#   test/vm/run.sh [test|bench|bench-libxdp] [6.1|6.12 ...]
#
# test (the default) runs every VM test (test/vm), then the driver's own
# suites (test/integration, test/crash) in the VM, where XDP and tc volumes
# chain through the dispatchers: all of them on 6.12, the ones that touch
# xdp and tc on 6.1 (it has no tcx). bench runs the dispatcher cost
# measurement (TestDispatcherCost) and prints its table. bench-libxdp
# measures bpfmount against Debian's libxdp in the same boot
# (TestLibxdpSideBySide): dispatcher cost per frame and whole-process
# latency of adding the k-th program.
#
# GOTESTFLAGS adds go test flags (e.g. GOTESTFLAGS=-v, or -run);
# VMTEST_PACKAGES replaces the packages (e.g. ./test/integration);
# VMEXEC_TIMEOUT bounds one VM (default 3m for test/vm, 20m for a suite);
# BPFMOUNT_TEST_STRESS_CALLS sizes the stress test (default 40 calls per
# goroutine under emulation); VMTEST_BENCH_REPEAT sets the benchmark's
# repeat count.
set -euo pipefail
cd "$(dirname "$0")/../.."
export GOTOOLCHAIN=local
mode=${1:-test}
(($#)) && shift
kernels=("$@")
((${#kernels[@]})) || kernels=(6.1 6.12)

test/vm/kernels.sh "${kernels[@]}"
mkdir -p bin/vm
CGO_ENABLED=0 go build -trimpath -o bin/vmexec ./test/vm/cmd/vmexec

flags=(-count=1)
case $mode in
test) ;;
bench)
	export VMTEST_BENCH=1
	flags+=(-v -run '^(TestDispatcherCost|TestPublishKth)$')
	;;
bench-libxdp)
	export VMTEST_BENCH=1
	flags+=(-v -timeout 30m -run '^TestLibxdpSideBySide$')
	export VMEXEC_TIMEOUT=${VMEXEC_TIMEOUT:-20m}
	;;
*)
	echo "usage: $0 [test|bench|bench-libxdp] [kernel...]" >&2
	exit 2
	;;
esac
# shellcheck disable=SC2206
flags+=(${GOTESTFLAGS:-})

# The driver's suites find the daemon binaries (plain and with failpoints)
# and the uprobe targets in BPFMOUNT_TEST_BINDIR instead of building them,
# and the repository's objects at their host paths: vmexec copies all of
# them into the VM.
suite_files() {
	CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o bin/vm/bpfmount ./cmd/bpfmount
	CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -tags failpoints -o bin/vm/bpfmount-failpoints ./cmd/bpfmount
	# The uprobe tests' targets: the VMs have no compiler.
	go run ./internal/testenv/cmd/buildprobes bin/vm
	local f files=()
	# Every committed object the suites may open by its host path.
	for f in bin/vm/bpfmount bin/vm/bpfmount-failpoints bin/vm/probe-target bin/vm/probe-server \
		deploy/examples/*/bpf/*.o test/programs/*.o; do
		files+=("$PWD/$f")
	done
	(IFS=,; echo "${files[*]}")
}
# On 6.1 (no tcx) the suites' tests that touch xdp and tc, the cgroup
# hooks' and the uprobes' (a container's too).
suite_run_61='^(TestXDP|TestSecondXDP|TestIdentical|TestReadOnly|TestRestartKeeps|TestPublishIsIdempotent|TestInterfaceRemoval|TestUnpublishAfter|TestCrashDuring|TestTrafficContinues|TestSIGTERM|TestPodCgroup|TestLocalCgroup|TestHybridCgroup|TestDefaultRoute|TestKeepAttached|TestNameHeldByAnotherLoad|TestMapOnlyVolume|TestNodeProgramsFromFile|TestUpgradeInPlaceXDP|TestRolloutUpgradesLingeringProgram|TestCrashWhileLingering|TestPodInterfaceXDPChain|TestPodInterfaceTCChain|TestPodChainPrunedAtStart|TestContainerUprobe|TestTracingUprobe)'

status=0
suites=0
files=
vmfiles= # what test/vm's own VM needs from the host besides the test binary
# Debian's xdp-tools, merged into the VMs of test/vm for the libxdp tests.
rootfs="${VMEXEC_CACHE:-$PWD/test/vm/.cache}/xdp-tools/root"
if [[ $mode == test ]]; then
	export VMTEST_LIBXDP=1
	files=$(suite_files)
	vmfiles=$files # the libxdp crash test runs the daemon binaries too
	export BPFMOUNT_TEST_BINDIR=$PWD/bin/vm
	export BPFMOUNT_TEST_STRESS_CALLS=${BPFMOUNT_TEST_STRESS_CALLS:-40}
	suites=1
elif [[ $mode == bench-libxdp ]]; then
	# The daemon runs as a process and publish as the client alone.
	CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -tags bpfmount_cli -o bin/vm/bpfmount-bpfmount_cli ./cmd/bpfmount
	vmfiles=$(suite_files),$PWD/bin/vm/bpfmount-bpfmount_cli
	export BPFMOUNT_TEST_BINDIR=$PWD/bin/vm
fi
run() { # kernel, vmexec flags, go test args...
	local k=$1 vmflags=$2
	shift 2
	# The test binary runs as the VM's only program: it must be static.
	CGO_ENABLED=0 go test "$@" -exec "$PWD/bin/vmexec -kernel $k $vmflags" || status=1
}
suite() { # kernel: everything this mode runs on it
	local k=$1 status=0 start=$SECONDS
	echo "== VM tests on Linux $k"
	if [[ -n ${VMTEST_PACKAGES:-} ]]; then
		# shellcheck disable=SC2086
		VMEXEC_TIMEOUT=${VMEXEC_TIMEOUT:-20m} run "$k" "-files=$files" -timeout 30m "${flags[@]}" $VMTEST_PACKAGES
	else
		run "$k" "-rootfs=$rootfs${vmfiles:+ -files=$vmfiles}" "${flags[@]}" ./test/vm/
		if ((suites)); then
			# Frames on one vCPU meet swaps on the other.
			VMTEST_CPUS=2 run "$k" "-smp 2 -rootfs=$rootfs" "${flags[@]}" -run '^(TestRemoveMiddleUnderTraffic|TestSharedSwapUnderTraffic|TestReplaceMemberUnderTraffic)$' ./test/vm/
			sel=()
			[[ $k == 6.1 ]] && sel=(-run "$suite_run_61")
			VMEXEC_TIMEOUT=${VMEXEC_TIMEOUT:-20m} run "$k" "-files=$files" -p 1 -timeout 30m "${sel[@]}" "${flags[@]}" ./test/integration/ ./test/crash/
		fi
	fi
	echo "== Linux $k: $((SECONDS - start))s"
	return $status
}
# The kernels' VMs run side by side (each is one emulated CPU, most of the
# time), their lines prefixed with the kernel; VMTEST_SERIAL=1 runs them one
# after the other, and bench modes always do (their figures are ratios
# within one boot, but a second VM beside it would add noise).
if ((${#kernels[@]} > 1)) && [[ -z ${VMTEST_SERIAL:-} && $mode == test ]]; then
	pids=()
	for k in "${kernels[@]}"; do
		(
			set -o pipefail
			suite "$k" 2>&1 | sed -u "s/^/[$k] /"
		) &
		pids+=($!)
	done
	for p in "${pids[@]}"; do
		wait "$p" || status=1
	done
else
	for k in "${kernels[@]}"; do
		suite "$k" || status=1
	done
fi
exit $status
