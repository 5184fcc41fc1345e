#!/bin/sh
# Renders deploy/manifests/bpfmount.yaml: the Helm chart charts/bpfmount with
# its default values, release "bpfmount" in namespace "bpfmount", exactly as
# `helm template bpfmount charts/bpfmount --namespace bpfmount` prints it
# (plus a header). It uses Helm's libraries through the chart-test module
# test/chart, so no helm binary is needed, and the chart tests
# (TestManifestsUpToDate) compare against the same rendering.
#
# Usage: deploy/manifests/render.sh   (from anywhere; `make manifests`)
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root/test/chart"
GOTOOLCHAIN=local exec ${GO:-go} run ./cmd/render \
	-chart "$root/charts/bpfmount" \
	-o "$root/deploy/manifests/bpfmount.yaml"
