# bpfmount: `make demo` runs the main job on the embedded example,
# `make test` runs every test. Both need root (eBPF and mounts).

export GOTOOLCHAIN := local
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/bpfmount/bpfmount/driver.Version=$(VERSION)
BIN      := bin
EXAMPLE_OBJ := deploy/examples/xdp-counter/bpf/xdpcounter_bpfel.o
EXAMPLE_LAYOUT := build/layouts/xdp-counter

.PHONY: all build demo test vet generate bench clean fuzz

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/bpfmount ./cmd/bpfmount
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/xdp-counter-reader ./deploy/examples/xdp-counter/reader

# The example bytecode image, as an OCI layout built by bpfmount itself.
$(EXAMPLE_LAYOUT)/index.json: build $(EXAMPLE_OBJ)
	rm -rf $(EXAMPLE_LAYOUT)
	$(BIN)/bpfmount image build -o $(EXAMPLE_LAYOUT) --tag v1 $(EXAMPLE_OBJ)

demo: build $(EXAMPLE_LAYOUT)/index.json
	deploy/examples/demo.sh $(BIN) $(abspath $(EXAMPLE_LAYOUT)):v1

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: files above need formatting'; exit 1; }

# Every test, on the real kernel. Without root the kernel tests skip and say why.
test: vet
	$(GO) test -race -count=1 ./...

# Regenerate the committed eBPF objects and their Go bindings (needs clang).
generate:
	$(GO) generate ./...

clean:
	rm -rf $(BIN) build

# Each fuzz target for a bounded time (FUZZTIME each); the seed corpus in
# testdata/fuzz runs in every `make test` anyway.
FUZZTIME ?= 20s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseAttributes$$' -fuzztime $(FUZZTIME) ./driver
	$(GO) test -run '^$$' -fuzz '^FuzzParseLabels$$' -fuzztime $(FUZZTIME) ./loader/bytecode
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./driver/state
