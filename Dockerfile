# syntax=docker/dockerfile:1
#
# Three images from one build:
#   docker build --target bpfmount            -t bpfmount/bpfmount:dev .
#   docker build --target xdp-counter-reader  -t bpfmount/xdp-counter-reader:dev .
#   docker build --target exec-events-reader  -t bpfmount/exec-events-reader:dev .
# (the default target, the last stage, is bpfmount).
#
# The binaries are static (CGO_ENABLED=0): the eBPF objects are committed
# and embedded, so no clang or libbpf is needed to build, and the images
# carry nothing but the binary (and CA certificates for the driver, which
# pulls bytecode images over TLS). Base images are build arguments, so a
# mirror can be used: --build-arg GO_IMAGE=registry.example/golang:1.26.
# The default is pinned by digest so a build is reproducible; bump it
# deliberately. GO_IMAGE must be a Debian-based Go image (the reader stage
# uses apt-get); with GOTOOLCHAIN=auto an image older than go.mod's Go
# version fetches that toolchain through the module proxy.
#
# Without a registry (as in this project's CI), deploy/image/build.sh
# (`make image`) makes a local Go image with debootstrap and builds this
# file with buildah.

ARG GO_IMAGE=golang:1.26@sha256:3aff6657219a4d9c14e27fb1d8976c49c29fddb70ba835014f477e1c70636647
ARG BASE_IMAGE=scratch

FROM ${GO_IMAGE} AS build
ENV CGO_ENABLED=0 GOTOOLCHAIN=auto GOFLAGS="-trimpath -buildvcs=false"
WORKDIR /src
# Dependencies first: this layer is reused until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -ldflags "-s -w -X github.com/bpfmount/bpfmount/driver.Version=${VERSION}" \
        -o /out/bpfmount ./cmd/bpfmount \
 && go build -ldflags "-s -w" -o /out/xdp-counter-reader ./deploy/examples/xdp-counter/reader \
 && go build -ldflags "-s -w" -o /out/exec-events-reader ./deploy/examples/exec-events/reader

# The readers run as a non-root user with only CAP_BPF added (see
# deploy/examples/xdp-counter-pod.yaml and deploy/examples/exec-events/pod.yaml):
# opening a pinned map needs it where kernel.unprivileged_bpf_disabled is
# set. Reading a ring buffer needs nothing more: the exec-events reader
# opens the map read-write (it writes its consumer position; the volume's
# file permissions, through the pod's fsGroup, allow that) and maps the
# ring's pages with mmap, which takes no capability. Container runtimes
# give a non-root process added capabilities only through file
# capabilities on the executable, so each binary carries cap_bpf in its
# permitted and effective sets. BuildKit keeps this extended attribute
# when copying between stages.
FROM ${GO_IMAGE} AS reader-caps
RUN apt-get update \
 && apt-get install -y --no-install-recommends libcap2-bin \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/xdp-counter-reader /out/exec-events-reader /out/
RUN setcap cap_bpf=ep /out/xdp-counter-reader && getcap /out/xdp-counter-reader \
 && setcap cap_bpf=ep /out/exec-events-reader && getcap /out/exec-events-reader

FROM ${BASE_IMAGE} AS xdp-counter-reader
ARG VERSION=dev
ARG CREATED
ARG REVISION
LABEL org.opencontainers.image.title="xdp-counter-reader" \
      org.opencontainers.image.description="Example reader of the bpfmount XDP counter: serves the counts of a pinned map it opens through a bpfmount volume" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/bpfmount/bpfmount"
COPY --from=reader-caps /out/xdp-counter-reader /xdp-counter-reader
USER 65534:65534
ENTRYPOINT ["/xdp-counter-reader"]

FROM ${BASE_IMAGE} AS exec-events-reader
ARG VERSION=dev
ARG CREATED
ARG REVISION
LABEL org.opencontainers.image.title="exec-events-reader" \
      org.opencontainers.image.description="Example reader of the bpfmount exec-events tracepoint: prints the exec events it reads from a ring buffer it opens through a bpfmount volume" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/bpfmount/bpfmount"
COPY --from=reader-caps /out/exec-events-reader /exec-events-reader
USER 65534:65534
ENTRYPOINT ["/exec-events-reader"]

# The driver runs as root (it loads eBPF programs and mounts filesystems;
# the Helm chart makes the container privileged) and never executes another
# program: mounts are made with system calls, so the image needs no mount,
# umount or shell.
FROM ${BASE_IMAGE} AS bpfmount
ARG VERSION=dev
ARG CREATED
ARG REVISION
LABEL org.opencontainers.image.title="bpfmount" \
      org.opencontainers.image.description="CSI node plugin that loads eBPF programs for pods and mounts their pinned maps" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/bpfmount/bpfmount"
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/bpfmount /bpfmount
USER 0:0
ENTRYPOINT ["/bpfmount"]
CMD ["serve"]
