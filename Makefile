# bpfmount: `make demo` runs the main job on the embedded example,
# `make test` runs every test. Both need root (eBPF and mounts).

export GOTOOLCHAIN := local
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/bpfmount/bpfmount/driver.Version=$(VERSION) -X main.version=$(VERSION)
BIN      := bin
EXAMPLE_OBJ := deploy/examples/xdp-counter/bpf/xdpcounter_bpfel.o
EXAMPLE_LAYOUT := build/layouts/xdp-counter

.PHONY: all build demo test vet generate bench bench-host clean fuzz manifests test-chart test-vm bench-vm bench-libxdp e2e image cluster cluster-down

all: build

# bin/bpfmount is the client alone (it starts in a few ms: none of the
# daemon's packages is linked); its serve and image exec bin/bpfmountd, the
# whole program, which also works alone.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/bpfmountd ./cmd/bpfmount
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -tags bpfmount_cli -o $(BIN)/bpfmount ./cmd/bpfmount
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/xdp-counter-reader ./deploy/examples/xdp-counter/reader
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/exec-events-reader ./deploy/examples/exec-events/reader

# The example bytecode image, as an OCI layout built by bpfmount itself.
$(EXAMPLE_LAYOUT)/index.json: build $(EXAMPLE_OBJ)
	rm -rf $(EXAMPLE_LAYOUT)
	$(BIN)/bpfmount image build -o $(EXAMPLE_LAYOUT) --tag v1 $(EXAMPLE_OBJ)

demo: build $(EXAMPLE_LAYOUT)/index.json
	deploy/examples/demo.sh $(BIN) $(abspath $(EXAMPLE_LAYOUT)):v1

vet:
	$(GO) vet ./...
	$(GO) vet -tags bpfmount_cli ./cmd/bpfmount
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: files above need formatting'; exit 1; }

# Every test, on the real kernel. Without root the kernel tests skip and say why.
test: vet test-chart
	$(GO) test -race -count=1 ./...
	$(GO) test -race -count=1 -tags bpfmount_cli ./cmd/bpfmount

# Chart tests: a separate module, so Helm and Kubernetes libraries stay out
# of the main go.mod.
test-chart:
	cd test/chart && $(GO) vet ./... && $(GO) test -count=1 ./...

# Kernel tests in qemu VMs booting Debian's 6.1 and 6.12 kernels, where XDP
# and tc programs chain through the dispatchers (this host's kernel rejects
# freplace): the dispatcher tests (test/vm, the swap under traffic also on
# two vCPUs), then the driver's integration and crash suites with the same
# static binaries (all on 6.12; on 6.1 those touching xdp and tc). Fetches
# and caches qemu and the kernels on first use (test/vm/.cache). Needs root.
test-vm:
	test/vm/run.sh test

# Dispatcher cost per packet (BPF_PROG_TEST_RUN under TCG: ratios only).
bench-vm:
	test/vm/run.sh bench

# bpfmount beside libxdp (Debian's xdp-tools 1.3.1) in the same VM boot, on
# 6.1 and 6.12: dispatcher cost per frame with 1, 5 and 10 members, and
# whole-process latency of adding the k-th program; writes the section
# "Side by side with libxdp" of docs/benchmarks.md (part of make bench).
bench-libxdp:
	mkdir -p $(BENCHDIR)
	test/vm/run.sh bench-libxdp > $(BENCHDIR)/libxdp.log 2>&1 || { cat $(BENCHDIR)/libxdp.log; exit 1; }
	cat $(BENCHDIR)/libxdp.log
	$(GO) run ./test/vm/cmd/libxdpdoc < $(BENCHDIR)/libxdp.log > $(BENCHDIR)/libxdp.md
	$(MERGEDOC) $(BENCHDIR)/libxdp.md

# The release images, built from the Dockerfile with buildah (root, no
# Docker engine): build/images/bpfmount-$(VERSION).tar,
# build/images/xdp-counter-reader-$(VERSION).tar and
# build/images/exec-events-reader-$(VERSION).tar, OCI archives.
image:
	deploy/image/build.sh $(VERSION)

# End to end on a real single-node Kubernetes (root): helm install of the
# images `make image` built, pods whose inline volumes load programs, policy
# denials, sharing, an upgrade under traffic, uninstall. Builds Kubernetes
# v1.34.4 once (about 20 min cold on 2 cores), cached in test/e2e/.cache/bin.
# First the cluster package's state tests that run without root only (as
# root, a broken guard would let Down act on the host) as user nobody; then
# the module's packages one at a time (-p 1: one cluster on a machine).
e2e: image
	test/e2e/build-k8s.sh
	t=$$(mktemp -d) && cd test/e2e && $(GO) test -c -o $$t/cluster.test ./cluster && chmod 755 $$t && \
		cd $$t && setpriv --reuid=65534 --regid=65534 --clear-groups ./cluster.test -test.count=1; \
		rc=$$?; rm -rf $$t; exit $$rc
	cd test/e2e && $(GO) vet ./... && BPFMOUNT_E2E=1 BPFMOUNT_E2E_IMAGES=$(abspath build/images) \
		BPFMOUNT_E2E_IMAGE_VERSION=$(VERSION) $(GO) test -p 1 -count=1 -timeout 30m -v ./...

# A local cluster to try bpfmount on (root): the e2e's single-node
# Kubernetes, the chart installed from the images `make image` built (same
# VERSION), the example bytecode laid out. It prints the KUBECONFIG and runs
# until `make cluster-down`, which removes everything it made (and refuses a
# cluster it did not make).
cluster:
	test/e2e/build-k8s.sh
	cd test/e2e && $(GO) run ./cmd/cluster up -repo $(CURDIR) -images $(abspath build/images) -version $(VERSION)

cluster-down:
	cd test/e2e && $(GO) run ./cmd/cluster down

# deploy/manifests/bpfmount.yaml, rendered from the chart (a test fails when
# the committed file drifts).
manifests:
	deploy/manifests/render.sh

# Benchmarks (not part of make test): writes docs/benchmarks.md. Needs
# root; the CLI rows compare with Debian's xdp-tools and bpftool when they
# are installed (apt-get install -y xdp-tools bpftool) and say so when not.
# BPFMOUNT_BENCH_PROFILES=DIR keeps the pprof profiles. Each part writes its
# sections to build/bench/ and mergedoc puts them into the document, keeping
# every section that part does not make (another target's, e.g. libxdp's).
BENCHDIR  := $(abspath build/bench)
MERGEDOC  := $(GO) run ./test/bench/mergedoc docs/benchmarks.md
# The parts run one after the other, not as prerequisites: under make -j
# two mergedoc runs would rewrite docs/benchmarks.md at once.
bench:
	$(MAKE) bench-host
	$(MAKE) bench-libxdp
	{ printf '## Dispatchers (qemu VMs, Debian 6.1 and 6.12)\n\nThis host rejects freplace, so the dispatcher figures come from `make bench-vm`:\nper-packet cost with BPF_PROG_TEST_RUN and the publish latency of the k-th\nprogram. Under TCG (no KVM) only ratios and trends mean anything.\n\n```\n'; \
	  test/vm/run.sh bench 2>&1 | grep -vE '^([IEW][0-9]{4} |=== RUN|=== PAUSE|=== CONT|--- PASS|PASS$$|ok )' | sed -E 's/^ +(bench|driver)_test.go:[0-9]+: ?//'; \
	  printf '```\n'; } > $(BENCHDIR)/vm.md
	$(MERGEDOC) $(BENCHDIR)/vm.md
	test/e2e/build-k8s.sh
	deploy/image/build.sh $(VERSION)
	{ printf '## Pod start latency (real Kubernetes, test/e2e)\n\n```\n'; \
	  (cd test/e2e && BPFMOUNT_E2E_BENCH=1 BPFMOUNT_E2E_IMAGES=$(abspath build/images) BPFMOUNT_E2E_IMAGE_VERSION=$(VERSION) $(GO) test -count=1 -timeout 30m -run '^TestPodStartBench$$' -v . 2>&1 | grep -E '^ +(bpfmount volume|emptyDir|ratio)'); \
	  printf '```\n'; } > $(BENCHDIR)/e2e.md
	$(MERGEDOC) $(BENCHDIR)/e2e.md

# The host part of make bench alone (no VMs, no Kubernetes build): its
# sections and the document's header; the others stay as they are.
bench-host: build
	mkdir -p $(BENCHDIR)
	BPFMOUNT_BENCH_OUT=$(BENCHDIR)/host.md BPFMOUNT_BENCH_BIN=$(abspath $(BIN)/bpfmount) $(GO) test -count=1 -timeout 30m -run '^TestBenchmarkReport$$' ./test/bench/
	{ printf '## Go benchmarks (pure-Go hot paths)\n\n`go test -run ^$$ -bench . -benchmem` on the packages below; feed two runs to benchstat to compare.\n\n```\n'; \
	  $(GO) test -run '^$$' -bench . -benchmem ./driver ./driver/state ./driver/policy ./loader ./internal/mapfs | grep -E '^(Benchmark|goos|goarch|cpu|pkg)'; \
	  printf '```\n'; } > $(BENCHDIR)/gobench.md
	$(MERGEDOC) $(BENCHDIR)/host.md $(BENCHDIR)/gobench.md

# Regenerate the committed eBPF objects and their Go bindings (needs clang).
generate:
	$(GO) generate ./...

clean:
	rm -rf $(BIN) build

# Each fuzz target for a bounded time (FUZZTIME each); the seed corpus in
# testdata/fuzz runs in every `make test` anyway. Every new interesting input
# is minimized first, at about len(input)²/2 calls, up to 60 s by default:
# with two workers both minimizing a few hundred bytes the run makes no
# progress at all, so minimizing is bounded by a number of calls.
FUZZTIME ?= 20s
FUZZMINIMIZE ?= 2000x
FUZZFLAGS = -run '^$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)
fuzz:
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzParseAttributes$$' ./driver
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzParseLabels$$' ./loader/bytecode
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzDecode$$' ./driver/state
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzDecodeIntent$$' ./driver/state
