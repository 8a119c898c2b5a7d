#!/bin/sh
# Credentials arrive as files (docker secrets, Kubernetes Secret volumes) named by VAR_FILE, or as VAR itself
# (a Secret's secretKeyRef): VAR_FILE is read into VAR here, at start, so no image or manifest carries a value.
# MLflow's client reads MLFLOW_TRACKING_USERNAME/PASSWORD, the AWS SDKs AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
# (or AWS_SHARED_CREDENTIALS_FILE), Ray RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH); the tracking server's image
# (docker/mlflow-server.sh) PGPASSWORD, MLFLOW_AUTH_ADMIN_PASSWORD and MLFLOW_FLASK_SERVER_SECRET_KEY.
set -eu
for var in MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY RAY_AUTH_TOKEN \
           PGPASSWORD MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY; do
    file=$(printenv "${var}_FILE" || true)
    if [ -n "$file" ]; then
        value=$(cat "$file")
        export "$var=$value"
        unset "${var}_FILE"
    fi
done
exec "$@"
