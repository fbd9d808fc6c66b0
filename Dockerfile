# syntax=docker/dockerfile:1
# Multi-stage build: a locked release build, then a slim runtime running as
# an unprivileged user (uid 10001) and listening on 0.0.0.0:8080. The image
# carries the default config; mount your own at /etc/waybill/waybill.toml
# (with env: or file: secrets). The build context is only what the COPY
# lines name (.dockerignore), and `.ci/docker-build` builds it in CI.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer, so source edits rebuild only waybill.
COPY Cargo.toml Cargo.lock ./
COPY vendor ./vendor
RUN mkdir -p src/bin/loadgen \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > src/bin/loadgen/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bin waybill \
 && rm -rf src
COPY src ./src
COPY config ./config
# The API description is served by the binary (GET /openapi.json).
COPY docs/openapi.json ./docs/openapi.json
# Make sure cargo sees the real sources as newer than the placeholder build.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin waybill \
 && strip target/release/waybill

FROM debian:bookworm-slim AS runtime
RUN groupadd --system --gid 10001 waybill \
 && useradd --system --uid 10001 --gid waybill --home-dir /var/lib/waybill --create-home --shell /usr/sbin/nologin waybill
COPY --from=build /src/target/release/waybill /usr/local/bin/waybill
COPY config/waybill.toml /etc/waybill/waybill.toml
ENV WAYBILL_CONFIG=/etc/waybill/waybill.toml \
    WAYBILL_LISTEN=0.0.0.0:8080
WORKDIR /var/lib/waybill
VOLUME ["/var/lib/waybill"]
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/waybill"]
CMD ["serve"]
