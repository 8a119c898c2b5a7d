#!/bin/sh
# Random credentials for docker/compose.yaml, one file each in docker/secrets/ (git-ignored, mode 600).
# Existing files are kept: rerunning never locks you out of a database that already has a password.
set -eu
dir="$(dirname "$0")/secrets"
mkdir -p "$dir"
chmod 700 "$dir"
umask 077
for name in postgres_password mlflow_admin_password mlflow_flask_secret_key s3_access_key s3_secret_key ray_auth_token; do
    if [ ! -s "$dir/$name" ]; then
        python3 -c "import secrets; print(secrets.token_hex(24), end='')" > "$dir/$name"
        echo "made $dir/$name"
    fi
done
