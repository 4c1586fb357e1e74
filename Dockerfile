# syntax=docker/dockerfile:1
#
# mbx in one image: the admin CLI `mbx`, the host `mbx-host`, and `mbx-local init-demo`
# (what the compose `init` service runs). Build: `docker build -t mbx .`
# Used by docker-compose.yml; see there for how to run a cluster.

# --- build -------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target folders are BuildKit caches: a rebuild after a source change only
# recompiles mbx's own crates. The binaries are copied out of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
    && install -D -m 0755 -t /out target/release/mbx target/release/mbx-host

# --- runtime -----------------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: HTTPS send ports; curl: the health check of the admin listener.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 mbx \
    && useradd --system --uid 10001 --gid mbx --home-dir /var/lib/mbx --create-home \
       --shell /usr/sbin/nologin mbx
COPY --from=build /out/mbx /out/mbx-host /usr/local/bin/
COPY scripts/mbx-local /usr/local/bin/mbx-local
# The demo folders; a named volume mounted on /demo starts with this content and owner.
COPY demo/sample-order.xml demo/order-manager.yaml demo/sample-order.json demo/sample-payment.json /demo/
COPY demo/orchestrations /demo/orchestrations
RUN mkdir -p /demo/in /demo/out /demo/ordered /demo/far /demo/approvals /demo/orders /demo/drop \
    && chmod 0755 /usr/local/bin/mbx-local \
    && chown -R mbx:mbx /demo
ENV MBX_BIN_DIR=/usr/local/bin \
    MBX_DEMO_DIR=/demo
USER mbx
WORKDIR /var/lib/mbx
# /healthz, /readyz and /metrics of `mbx-host --admin-listen 0.0.0.0:9180`
EXPOSE 9180
STOPSIGNAL SIGTERM
CMD ["mbx-host", "--host", "default", "--admin-listen", "0.0.0.0:9180"]
