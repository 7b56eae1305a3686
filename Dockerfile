# syntax=docker/dockerfile:1
# Multi-stage build: compile the host and the example plugins, then a small runtime image that
# runs as a non-root user. `make docker` builds it; docker-compose.yml puts nginx in front.

FROM rust:1-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release -p myagent-host -p weather_agent -p business_agent \
    && mkdir -p /out \
    && cp target/release/myagent-host target/release/libweather_agent.so target/release/libbusiness_agent.so /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin agent \
    && mkdir -p /var/lib/myagent && chown agent /var/lib/myagent
WORKDIR /app
COPY --from=build /out/ /app/
COPY examples/recordings/ /app/recordings/
COPY deploy/entrypoint.sh /app/entrypoint.sh
USER agent
# Sessions are stored in $XDG_STATE_HOME/myagent-host/sessions.db (a volume in docker-compose.yml).
ENV PLUGIN=/app/libweather_agent.so XDG_RUNTIME_DIR=/tmp XDG_STATE_HOME=/var/lib/myagent
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health || exit 1
# SIGTERM (docker stop) shuts down gracefully: sessions interrupted, close frames sent.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/entrypoint.sh"]
