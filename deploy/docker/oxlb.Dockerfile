# oxlb appliance image (XDP + AF_XDP data plane, REST API). Build from the repository root:
#   docker build -f deploy/docker/oxlb.Dockerfile -t oxlb .
# Not built by CI: the build machine has no container registry to pull the base images from.
FROM rust:1.95-bookworm AS build
# The XDP program is compiled with clang -target bpf; xsk-rs builds its vendored libxdp.
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends \
       clang llvm libbpf-dev gcc-multilib libelf-dev zlib1g-dev m4 pkg-config make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p oxlb -p oxlbctl \
    && strip --strip-debug target/release/oxlb target/release/oxlbctl

FROM debian:bookworm-slim
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends libelf1 zlib1g \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/oxlb /src/target/release/oxlbctl /usr/local/bin/
# Runs as root with only the capabilities the DaemonSet grants (deploy/kube/oxlb-appliance.yaml):
# Kubernetes gives a non-root user no ambient capabilities.
ENTRYPOINT ["/usr/local/bin/oxlb"]
