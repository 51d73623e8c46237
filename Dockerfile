# syntax=docker/dockerfile:1
# segmentd and segctl in a small Debian image, run as an unprivileged user.
#
#   docker build --build-arg SEGMENTD_COMMIT=$(git rev-parse --short=12 HEAD) -t segmentd .
#   docker run -d --name segmentd -p 50051:50051 -v segmentd-data:/var/lib/segmentd \
#     -v $PWD/tokens:/etc/segmentd/tokens:ro -e SEGMENTD_TOKENS_FILE=/etc/segmentd/tokens segmentd
#
# The server listens on every interface of the container, which it refuses to do without tokens
# (--tokens-file) or client certificates; for a throwaway trial, -e SEGMENTD_INSECURE=1.

FROM rust:1.89-bookworm AS build
WORKDIR /src
# The build script reads the commit from git; .git is not in the build context.
ARG SEGMENTD_COMMIT=unknown
ENV SEGMENTD_COMMIT=${SEGMENTD_COMMIT}
COPY . .
# BuildKit caches the registry and the target directory between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin segmentd -p segctl \
    && install -D -s -t /out target/release/segmentd target/release/segctl

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 segmentd \
    && useradd --system --uid 10001 --gid segmentd --home-dir /var/lib/segmentd --shell /usr/sbin/nologin segmentd \
    && install -d -o segmentd -g segmentd -m 0750 /var/lib/segmentd
COPY --from=build /out/segmentd /out/segctl /usr/local/bin/
COPY LICENSE /usr/share/doc/segmentd/LICENSE
USER segmentd:segmentd
ENV SEGMENTD_LISTEN=0.0.0.0:50051 \
    SEGMENTD_DATA_DIR=/var/lib/segmentd \
    SEGMENTD_LOG_FORMAT=json \
    SEGMENTD_ADDR=http://127.0.0.1:50051
VOLUME ["/var/lib/segmentd"]
# gRPC (and, when enabled with SEGMENTD_METRICS_ADDR / SEGMENTD_RESP_ADDR, metrics and the Redis
# protocol on the ports chosen there).
EXPOSE 50051
# SERVING once the snapshot and log are replayed; a large data directory takes a while, hence
# the start period. The health service needs no token.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["segctl", "health"]
# SIGTERM (docker stop) drains calls and writes a final snapshot: give it time.
STOPSIGNAL SIGTERM
ENTRYPOINT ["segmentd"]
