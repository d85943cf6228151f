# syntax=docker/dockerfile:1
# Build a wheel in one stage, install it into a slim runtime with a non-root user.
# The base image is pinned by version (Python patch release and Debian release): a rebuild gets
# the same interpreter; bump it on purpose.
# `--build-arg EXTRAS=otel` adds tracing (docs/operations.md, Tracing).
ARG EXTRAS=""

FROM python:3.12.7-slim-bookworm AS build
ARG EXTRAS
WORKDIR /src
COPY pyproject.toml README.md openapi.yaml ./
COPY gateway ./gateway
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".${EXTRAS:+[$EXTRAS]}"

FROM python:3.12.7-slim-bookworm
ARG EXTRAS
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_DATABASE=/data/gateway.db
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin gateway \
    && mkdir -p /data && chown gateway:gateway /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "sms-gateway${EXTRAS:+[$EXTRAS]}" \
    && rm -rf /wheels
USER gateway
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('GATEWAY_PORT', '8080')}/healthz\", timeout=2)"]
# SIGTERM drains: requests in flight finish (a send waits for the provider, up to
# GATEWAY_PROVIDER_TIMEOUT, 15 s), webhook attempts get 5 s, late settlements 5 s, then the
# database closes. Give it a stop grace period above that sum: `docker stop -t 30`, compose's
# `stop_grace_period: 30s`, Kubernetes' `terminationGracePeriodSeconds: 30` (Docker's default,
# 10 s, would SIGKILL a send in flight; the next start's sweep then settles it as `unknown`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["sms-gateway"]
CMD ["serve"]
