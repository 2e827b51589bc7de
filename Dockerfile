# The one ikukantai image: controller, gateway, queue-proxy sidecar and the demo function.
#   docker build -t ikukantai:0.1.0 .
# Multi-stage: build with the pinned toolchain (profile `dist`: whole-program optimisation, see
# Cargo.toml), ship the static-enough binary on distroless
# (glibc only; TLS is rustls, no OpenSSL), as a non-root user.
FROM rust:1.95-slim-bookworm AS build
# The slim image has a C compiler but no `make`, which jemalloc's build (crates/alloc, through
# tikv-jemalloc-sys) runs; crates/kube/tests/deploy.rs checks this line stays.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p ikukantai-cli \
 && cp target/dist/ikukantai /ikukantai

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /ikukantai /ikukantai
USER 65532:65532
EXPOSE 8080 8012 8022 9090 9091
ENTRYPOINT ["/ikukantai"]
