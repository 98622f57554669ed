# syntax=docker/dockerfile:1
#
# MLflow tracking server for docker/compose.yaml: runs in PostgreSQL, artifacts served
# by the server itself from /mlartifacts. Build (context: this folder):
#   docker build -f docker/mlflow.Dockerfile -t slimtune-mlflow:local docker
FROM python:3.11-slim-bookworm

ARG MLFLOW_VERSION=3.17.*
ARG PSYCOPG2_VERSION=2.9.13

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_PORT=5000

RUN pip install --no-cache-dir "mlflow==${MLFLOW_VERSION}" "psycopg2-binary==${PSYCOPG2_VERSION}"

RUN groupadd --gid 10001 mlflow \
    && useradd --uid 10001 --gid mlflow --create-home --shell /usr/sbin/nologin mlflow \
    && mkdir -p /mlartifacts \
    && chown mlflow:mlflow /mlartifacts
USER 10001:10001
WORKDIR /home/mlflow

EXPOSE 5000

# /health is exempt from MLflow's Host-header check, so 127.0.0.1 always works here.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MLFLOW_PORT', '5000') + '/health', timeout=5)"]

# Stand-alone default (SQLite in the home folder); compose.yaml passes the real
# command with PostgreSQL and /mlartifacts.
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", \
     "--artifacts-destination", "/mlartifacts"]
