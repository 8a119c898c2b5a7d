# syntax=docker/dockerfile:1
# The tracking server: MLflow behind its basic-auth app, runs and users in PostgreSQL, artifacts proxied to
# the object store. Built from the repository root: docker build -f docker/mlflow.Dockerfile -t premem-mlflow .
# Same versions as the client the tests run against (mlflow 3.17.2; psycopg 3, SQLAlchemy's postgresql driver).
FROM python:3.11.7-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install "mlflow[auth]==3.17.2" "psycopg[binary]==3.3.9" boto3==1.44.8 \
    && useradd --create-home --uid 1000 mlflow
COPY docker/entrypoint.sh /usr/local/bin/premem-entrypoint
COPY docker/mlflow-server.sh /usr/local/bin/mlflow-server
USER 1000
WORKDIR /home/mlflow
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=5s --retries=30 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health')"]
ENTRYPOINT ["/usr/local/bin/premem-entrypoint", "/usr/local/bin/mlflow-server"]
