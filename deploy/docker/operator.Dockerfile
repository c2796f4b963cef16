# oxlb-operator image. Build from the repository root:
#   docker build -f deploy/docker/operator.Dockerfile -t oxlb-operator .
# Not built by CI: the build machine has no container registry to pull the base images from.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p oxlb-operator \
    && strip --strip-debug target/release/oxlb-operator

FROM debian:bookworm-slim
COPY --from=build /src/target/release/oxlb-operator /usr/local/bin/oxlb-operator
# Talks only to the Kubernetes API and the appliances; needs no privilege at all.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/oxlb-operator"]
