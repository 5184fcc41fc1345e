#!/usr/bin/env bash
# Runs the VM kernel tests (test/vm) in qemu, on each kernel in turn:
# Debian bookworm's 6.1 and bookworm-backports' 6.12 cloud kernels. Fetches
# and caches what it needs first (kernels.sh). Runs as root.
#
#   test/vm/run.sh [test|bench] [6.1|6.12 ...]
#
# test (the default) runs every VM test; bench runs the dispatcher cost
# measurement (TestDispatcherCost) and prints its table. GOTESTFLAGS adds
# go test flags (e.g. GOTESTFLAGS=-v, or -run); VMEXEC_TIMEOUT bounds one
# VM (default 3m); VMTEST_BENCH_REPEAT sets the benchmark's repeat count.
set -euo pipefail
cd "$(dirname "$0")/../.."
export GOTOOLCHAIN=local
mode=${1:-test}
(($#)) && shift
kernels=("$@")
((${#kernels[@]})) || kernels=(6.1 6.12)

test/vm/kernels.sh "${kernels[@]}"
mkdir -p bin
CGO_ENABLED=0 go build -trimpath -o bin/vmexec ./test/vm/cmd/vmexec

flags=(-count=1)
case $mode in
test) ;;
bench)
	export VMTEST_BENCH=1
	flags+=(-v -run '^(TestDispatcherCost|TestPublishKth)$')
	;;
*)
	echo "usage: $0 [test|bench] [kernel...]" >&2
	exit 2
	;;
esac
# shellcheck disable=SC2206
flags+=(${GOTESTFLAGS:-})

status=0
for k in "${kernels[@]}"; do
	echo "== VM tests on Linux $k"
	start=$SECONDS
	# The test binary runs as the VM's only program: it must be static.
	CGO_ENABLED=0 go test "${flags[@]}" -exec "$PWD/bin/vmexec -kernel $k" ./test/vm/ || status=1
	echo "== Linux $k: $((SECONDS - start))s"
done
exit $status
