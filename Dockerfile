# syntax=docker/dockerfile:1
# Multi-stage build: a locked release build, then a slim runtime running as
# an unprivileged user. The default config listens on 127.0.0.1; mount a
# config with `listen = "0.0.0.0:8080"` (and env: or file: secrets) to serve
# from the container.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer, so source edits rebuild only waybill.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin config \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > src/bin/loadgen.rs \
 && touch src/lib.rs config/waybill.toml \
 && cargo build --release --locked --bin waybill \
 && rm -rf src config
COPY src ./src
COPY config ./config
# Make sure cargo sees the real sources as newer than the placeholder build.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin waybill \
 && strip target/release/waybill

FROM debian:bookworm-slim AS runtime
RUN groupadd --system --gid 10001 waybill \
 && useradd --system --uid 10001 --gid waybill --home-dir /var/lib/waybill --create-home --shell /usr/sbin/nologin waybill
COPY --from=build /src/target/release/waybill /usr/local/bin/waybill
COPY config/waybill.toml /etc/waybill/waybill.toml
ENV WAYBILL_CONFIG=/etc/waybill/waybill.toml
WORKDIR /var/lib/waybill
VOLUME ["/var/lib/waybill"]
USER waybill:waybill
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/waybill"]
CMD ["serve"]
