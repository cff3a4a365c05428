#!/bin/sh
# Runs once, on the first start of an empty data volume (docker-entrypoint-initdb.d): creates
# each database named in ADAPTFLOW_EXTRA_DATABASES (space- or comma-separated) next to
# POSTGRES_DB, owned by POSTGRES_USER. Prefect uses POSTGRES_DB; MLflow uses "mlflow".
set -eu

for db in $(echo "${ADAPTFLOW_EXTRA_DATABASES:-}" | tr ',' ' '); do
    echo "create-databases: creating database ${db}"
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
        -v db="$db" -v owner="$POSTGRES_USER" <<'SQL'
CREATE DATABASE :"db" OWNER :"owner";
SQL
done
