#!/bin/sh
# The MLflow tracking server of adm-pipeline: the one definition of its flags. cluster/mlflow/mlflow.yaml runs it in the
# adm-pipeline image; the stack test tier (tests/stack) runs it on 127.0.0.1, on PostgreSQL and an S3 server.
# What differs per deployment comes from the environment:
#   MLFLOW_BACKEND_STORE_URI      postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB: the driver named, since SQLAlchemy
#                                 2.1 reads a bare postgresql:// as psycopg 3, which the image does not hold
#   MLFLOW_ARTIFACTS_DESTINATION  s3://BUCKET/PREFIX, with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (an S3-compatible
#                                 store: MLFLOW_S3_ENDPOINT_URL); clients reach it through this server only
#   MLFLOW_ALLOWED_HOSTS          the Host headers clients use (host:port, comma-separated)
#   MLFLOW_HOST, MLFLOW_PORT      where it listens (default 0.0.0.0:5000); PYTHON: the interpreter (default python3)
# Large artifacts (checkpoints of 0.2-2.2 GB): clients upload and download them in parts straight from the object
# store, through URLs this server signs (pipelines/infra/tracking_checks.py ARTIFACT_TRANSFER turns that on for every
# adm process). --serve-artifacts with an s3:// destination is what offers it; a signed download URL stays valid for
# an hour, as a signed upload part's does (boto3's default), so a slow multi-GB download is not cut at MLflow's 300 s.
# uvicorn kills a worker that does not answer its health check within 5 s: 4 workers importing MLflow at once on a
# pod short of CPU (or a busy 2-core test machine) never got there, and were restarted forever. 60 s lets them start.
set -eu
export MLFLOW_PRESIGNED_DOWNLOAD_URL_TTL_SECONDS="${MLFLOW_PRESIGNED_DOWNLOAD_URL_TTL_SECONDS:-3600}"
exec "${PYTHON:-python3}" -m mlflow server \
  --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" --workers 4 \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --serve-artifacts --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --allowed-hosts "$MLFLOW_ALLOWED_HOSTS" \
  --uvicorn-opts "--timeout-worker-healthcheck 60"
