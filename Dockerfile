# syntax=docker/dockerfile:1
# The credential broker: build a virtualenv in one stage, copy only it into a slim, non-root runtime.
#   docker build -t credential-broker .
#   docker run -v ./broker.yaml:/etc/broker/broker.yaml:ro -e BROKER_DATABASE_URL=... \
#              -e BROKER_KEY_ENCRYPTION_KEY=... credential-broker
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# every dependency ships a manylinux wheel (psycopg[binary], cryptography): no compiler needed anywhere
RUN python -m venv /opt/broker
COPY pyproject.toml ./
COPY broker ./broker
RUN /opt/broker/bin/pip install --no-compile . \
 && /opt/broker/bin/pip uninstall --yes pip setuptools \
 && find /opt/broker -name "__pycache__" -type d -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="credential-broker" \
      org.opencontainers.image.description="Short-lived, per-task credentials from attested identity"
# no package manager front-ends or pip in the final image; the broker runs as uid 10001
RUN rm -rf /usr/local/lib/python3.12/site-packages/pip /usr/local/bin/pip* \
 && groupadd --system --gid 10001 broker \
 && useradd --system --uid 10001 --gid broker --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin broker \
 && mkdir -p /etc/broker /var/lib/broker /run/broker \
 && chown broker:broker /var/lib/broker /run/broker
COPY --from=build /opt/broker /opt/broker
ENV PATH=/opt/broker/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BROKER_ENV=production \
    BROKER_DATA_DIR=/var/lib/broker
USER 10001:10001
WORKDIR /var/lib/broker
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["broker"]
# configuration: the mounted file plus BROKER_* variables (BROKER_DATABASE_URL, BROKER_KEY_ENCRYPTION_KEY…)
CMD ["serve", "--config", "/etc/broker/broker.yaml", "--host", "0.0.0.0", "--port", "8080"]
