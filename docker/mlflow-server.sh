#!/bin/sh
# Start `mlflow server` with basic auth. Inputs (docker/compose.yaml sets them):
#   PGHOST PGPORT PGUSER PGDATABASE, PGPASSWORD or PGPASSWORD_FILE   runs, experiments and users in PostgreSQL
#   MLFLOW_AUTH_ADMIN_USERNAME, MLFLOW_AUTH_ADMIN_PASSWORD(_FILE)    the admin user, created on first start
#   MLFLOW_FLASK_SERVER_SECRET_KEY(_FILE)                            signs the auth app's CSRF tokens
#   MLFLOW_ARTIFACTS_DESTINATION (s3://bucket/prefix), MLFLOW_S3_ENDPOINT_URL, AWS_*(_FILE)
#   MLFLOW_SERVER_ALLOWED_HOSTS                                      the Host headers clients use
# The database URI carries no password (psycopg reads PGPASSWORD), so none shows in `ps` or a log line.
# The *_FILE variables are read into their variables by docker/entrypoint.sh, which starts this script.
set -eu
database="postgresql://${PGUSER}@${PGHOST}:${PGPORT:-5432}/${PGDATABASE}"
config_dir=$(mktemp -d)
cat > "$config_dir/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = ${database}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$config_dir/basic_auth.ini"
exec mlflow server --app-name basic-auth --host 0.0.0.0 --port 5000 \
    --backend-store-uri "$database" --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" --serve-artifacts "$@"
