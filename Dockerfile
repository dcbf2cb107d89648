# syntax=docker/dockerfile:1
# weightgate: one static-ish binary on a small Debian runtime, run as a non-root user.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml build.rs ./
COPY src src
COPY migrations migrations
COPY templates templates
COPY static static
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && cp target/release/weightgate /usr/local/bin/weightgate

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --create-home weightgate \
 && install -d -o weightgate -m 700 /keys
COPY --from=build /usr/local/bin/weightgate /usr/local/bin/weightgate
USER weightgate
WORKDIR /data
ENV WEIGHTGATE_DATA_DIR=/data \
    WEIGHTGATE_BIND=0.0.0.0:8080 \
    WEIGHTGATE_LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["weightgate"]
CMD ["serve"]
