#!/usr/bin/env bash
# Validate docker-compose.yml without a Docker engine; CI runs it as root. Fails loudly.
#
# 1. `docker compose config` (the v2 plugin) if this machine has it, otherwise Debian's
#    `docker-compose` (1.29, installed with apt-get --no-install-recommends, so no engine):
#    parses the file, checks it against compose's schema and resolves ${...} from
#    .env.example, exactly as `docker compose up` would.
# 2. The same file against the current Compose Specification JSON schema (the one vendored by
#    check-jsonschema, installed with pip into a private venv), which knows the newest keys.
# 3. Flower and Grafana stay behind auth: the file must be refused when FLOWER_BASIC_AUTH or
#    GRAFANA_ADMIN_PASSWORD is missing.
# 4. The monitoring files it mounts exist: deploy/prometheus.yml and deploy/grafana/.
# 5. docker-compose.cluster.yml (state on a Redis Cluster, broker on RabbitMQ) merged over
#    it: valid, RabbitMQ as the broker of worker, beat and Flower, refused without
#    RABBITMQ_PASSWORD; checked against the schema in step 2 too.
#
# Idempotent: a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECK_JSONSCHEMA_VERSION=0.39.0
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/batchrelay/check-compose"
FILE=docker-compose.yml
ENV_EXAMPLE=.env.example

die() {
  echo "check-compose: $*" >&2
  exit 1
}

[ -f "$FILE" ] || die "$FILE not found"
[ -f "$ENV_EXAMPLE" ] || die "$ENV_EXAMPLE not found"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- 1. compose itself --------------------------------------------------------------------
COMPOSE=()
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
else
  echo "check-compose: no docker compose here; installing Debian's docker-compose" >&2
  as_root apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    docker-compose >/dev/null || die "apt-get install docker-compose failed"
  command -v docker-compose >/dev/null 2>&1 || die "docker-compose still not on PATH"
  COMPOSE=(docker-compose)
fi
echo "check-compose: using $("${COMPOSE[@]}" version 2>/dev/null | head -n 1)"

# ENV_FILE points the services' env_file at .env.example: no .env is created or needed.
# Run with a clean environment for compose's variables so the shell cannot hide a mistake.
compose() {
  env -u FLOWER_BASIC_AUTH -u GRAFANA_ADMIN_PASSWORD -u EMULATOR_WEBHOOK_SECRET \
    -u REDIS_HOST_PORT -u FLOWER_HOST_PORT -u EMULATOR_HOST_PORT -u API_HOST_PORT -u METRICS_HOST_PORT \
    -u PROMETHEUS_HOST_PORT -u GRAFANA_HOST_PORT \
    ENV_FILE="$ENV_EXAMPLE" "${COMPOSE[@]}" -f "$FILE" "$@"
}

compose --env-file "$ENV_EXAMPLE" config -q || die "$FILE is not valid (compose config)"
services="$(compose --env-file "$ENV_EXAMPLE" config --services | sort | tr '\n' ' ')"
want="api beat emulator flower grafana metrics prometheus redis worker "
[ "$services" = "$want" ] || die "unexpected services: $services (want $want)"

# --- 3. Flower and Grafana must refuse to start without credentials -----------------------
no_auth="$(mktemp)"
trap 'rm -f "$no_auth"' EXIT
for var in FLOWER_BASIC_AUTH GRAFANA_ADMIN_PASSWORD; do
  grep -v "^$var=" "$ENV_EXAMPLE" >"$no_auth"
  if compose --env-file "$no_auth" config -q >/dev/null 2>&1; then
    die "$FILE accepted a configuration without $var: it would run unprotected"
  fi
done

# --- 4. the monitoring files the services mount ---------------------------------------------
for path in deploy/prometheus.yml deploy/grafana/provisioning/datasources/prometheus.yml \
  deploy/grafana/provisioning/dashboards/batchrelay.yml deploy/grafana/dashboards/batchrelay.json; do
  [ -f "$path" ] || die "$path is missing (mounted by $FILE)"
done
python3 -c 'import json, sys; json.load(open(sys.argv[1]))' deploy/grafana/dashboards/batchrelay.json \
  || die "deploy/grafana/dashboards/batchrelay.json is not valid JSON"

# --- 4. the cluster variant: state on a Redis Cluster, the broker on RabbitMQ --------------
CLUSTER_FILE=docker-compose.cluster.yml
[ -f "$CLUSTER_FILE" ] || die "$CLUSTER_FILE not found"
with_rabbit="$(mktemp)"
trap 'rm -f "$no_auth" "$with_rabbit"' EXIT
{ cat "$ENV_EXAMPLE"; echo "RABBITMQ_PASSWORD=check"; } >"$with_rabbit"
cluster() {
  env -u RABBITMQ_PASSWORD ENV_FILE="$ENV_EXAMPLE" "${COMPOSE[@]}" -f "$FILE" -f "$CLUSTER_FILE" "$@"
}
cluster --env-file "$with_rabbit" config -q || die "$FILE + $CLUSTER_FILE is not valid"
[ "$(cluster --env-file "$with_rabbit" config --services | sort | tr '\n' ' ')" \
  = "api beat emulator flower grafana metrics prometheus rabbitmq redis worker " ] \
  || die "$CLUSTER_FILE: unexpected services"
broker="BATCHRELAY_BROKER_URL: amqp://batchrelay:check@rabbitmq:5672/batchrelay"
[ "$(cluster --env-file "$with_rabbit" config | grep -c "$broker")" -eq 4 ] \
  || die "$CLUSTER_FILE: worker, beat, flower and metrics must all get the RabbitMQ broker"
if cluster --env-file "$ENV_EXAMPLE" config -q >/dev/null 2>&1; then
  die "$CLUSTER_FILE accepted a configuration without RABBITMQ_PASSWORD"
fi

# --- 2. the current Compose Specification schema ------------------------------------------
if ! "$CACHE/venv/bin/check-jsonschema" --version 2>/dev/null \
  | grep -q "$CHECK_JSONSCHEMA_VERSION"; then
  echo "check-compose: installing check-jsonschema $CHECK_JSONSCHEMA_VERSION into $CACHE/venv" >&2
  rm -rf "$CACHE/venv"
  mkdir -p "$CACHE"
  python3 -m venv "$CACHE/venv" || die "python3 -m venv failed"
  "$CACHE/venv/bin/pip" install -q --disable-pip-version-check \
    "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" || die "pip install check-jsonschema failed"
fi
"$CACHE/venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$FILE" "$CLUSTER_FILE" \
  || die "$FILE or $CLUSTER_FILE does not match the Compose Specification schema"

echo "check-compose: $FILE and $CLUSTER_FILE are valid (services: $services)"
