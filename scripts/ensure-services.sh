#!/usr/bin/env bash
# Make sure RabbitMQ (127.0.0.1:5672, guest/guest), Redis (127.0.0.1:6379) and, when
# CHOREO_NEED_POSTGRES=1, PostgreSQL (127.0.0.1:5432) answer. Idempotent: a service
# that already answers is used as is; one that is installed is started; one that is
# missing is started with Docker when an engine answers, else installed from Debian
# packages. Prints one line per service; exits non-zero with one line on failure.
# Also installs the prometheus binary (Debian's package) that `choreo up` runs on its
# own; it never starts or stops a system Prometheus, and a stack runs without it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
LOG="${TMPDIR:-/tmp}/choreo-ensure-services.log"
: >>"$LOG"

die() { echo "ensure-services: ERROR: $*" >&2; exit 1; }
say() { echo "$1: $2"; }
have() { command -v "$1" >/dev/null 2>&1; }
tcp_open() { timeout 2 bash -c ">/dev/tcp/$1/$2" >/dev/null 2>&1; }

# Run a command as root (we normally are; fall back to passwordless sudo).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif have sudo && sudo -n true 2>/dev/null; then sudo -n "$@"
  else return 1
  fi
}

# wait_for SECONDS CHECK...: poll CHECK until it succeeds or the deadline passes.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 1
  done
}

APT_UPDATED=0
apt_install() {
  have apt-get || return 1
  if [ "$APT_UPDATED" -eq 0 ]; then
    as_root apt-get update -q >>"$LOG" 2>&1 || return 1
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >>"$LOG" 2>&1
}

DOCKER_OK=""
docker_ok() {
  if [ -z "$DOCKER_OK" ]; then
    if have docker && timeout 10 docker info >/dev/null 2>&1; then DOCKER_OK=1; else DOCKER_OK=0; fi
  fi
  [ "$DOCKER_OK" -eq 1 ]
}
# A local broker for development, on loopback: its bootstrap user is guest, as a Debian package's
# is (choreo broker setup uses it, through the management API on 15672). Compose needs the
# variables for any of its services.
compose() {
  (cd "$ROOT" && CHOREO_BROKER_ADMIN_USER="${CHOREO_BROKER_ADMIN_USER:-guest}" \
    CHOREO_BROKER_ADMIN_PASSWORD="${CHOREO_BROKER_ADMIN_PASSWORD:-guest}" docker compose "$@")
}
compose_up() { compose up -d "$@" >>"$LOG" 2>&1; }

# ---------------------------------------------------------------- RabbitMQ
rmqctl() { as_root timeout 30 rabbitmqctl "$@"; }

rabbit_ctl_ok() { have rabbitmqctl && rmqctl -q status >/dev/null 2>&1; }
rabbit_ok() {
  rabbit_ctl_ok && return 0
  tcp_open 127.0.0.1 5672 && have rabbitmq-diagnostics \
    && as_root timeout 30 rabbitmq-diagnostics -q ping >/dev/null 2>&1
}
rabbit_booted() {
  fix_cookie  # the server writes its cookie on first boot
  have rabbitmqctl && rmqctl -q await_startup --timeout 10 >/dev/null 2>&1 \
    && tcp_open 127.0.0.1 5672
}

# rabbitmqctl authenticates with the Erlang cookie. The Debian wrapper runs it as the
# rabbitmq user; other layouts read $HOME/.erlang.cookie, so copy the server's cookie.
fix_cookie() {
  local src=/var/lib/rabbitmq/.erlang.cookie dst="${HOME:-/root}/.erlang.cookie"
  [ "$(id -u)" -eq 0 ] && [ -f "$src" ] || return 0
  cmp -s "$src" "$dst" 2>/dev/null && return 0
  install -m 400 "$src" "$dst"
}

rabbit_start_local() {
  fix_cookie
  as_root rabbitmq-server -detached >>"$LOG" 2>&1 || true
  wait_for 60 rabbit_booted
}

ensure_rabbitmq() {
  local how="up"
  if ! rabbit_ok; then
    if tcp_open 127.0.0.1 5672; then
      # Something answers on 5672 already: never start a second broker next to it.
      if have rabbitmqctl; then
        fix_cookie
        rabbit_ok || die "rabbitmq: port 5672 answers but rabbitmqctl cannot reach the node (log: $LOG)"
      else
        how="up (no local rabbitmqctl)"
      fi
    elif have rabbitmq-server; then
      rabbit_start_local || die "rabbitmq: did not start within 60 s (see /var/log/rabbitmq, $LOG)"
      how="started"
    elif docker_ok; then
      compose_up rabbitmq || die "rabbitmq: docker compose up failed (log: $LOG)"
      wait_for 90 tcp_open 127.0.0.1 5672 || die "rabbitmq: container did not answer on 5672 within 90 s"
      how="started (docker)"
    else
      apt_install rabbitmq-server || die "rabbitmq: apt-get install rabbitmq-server failed (log: $LOG)"
      # The package may have started it already; otherwise start it ourselves.
      rabbit_ok || rabbit_start_local || die "rabbitmq: installed but did not start within 60 s (log: $LOG)"
      how="installed + started"
    fi
  fi
  # Quorum queues need every feature flag; harmless when they are already enabled.
  if have rabbitmqctl; then
    rmqctl -q enable_feature_flag all >>"$LOG" 2>&1 || true
  elif docker_ok; then
    compose exec -T rabbitmq rabbitmqctl -q enable_feature_flag all >>"$LOG" 2>&1 || true
  fi
  say rabbitmq "$how (127.0.0.1:5672)"
}

# ---------------------------------------------------------------- Redis
redis_ok() {
  if have redis-cli; then
    [ "$(timeout 5 redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]
  else
    tcp_open 127.0.0.1 6379
  fi
}

redis_start_local() {
  mkdir -p /var/lib/redis /var/log/redis
  local common=(--daemonize yes --port 6379 --save "" --appendonly no
                --dir /var/lib/redis --logfile /var/log/redis/ci.log)
  # redis daemonizes before binding, so a bind failure only shows as "never answers".
  redis-server "${common[@]}" --bind 127.0.0.1 -::1 >>"$LOG" 2>&1 || true
  wait_for 15 redis_ok && return 0
  redis-server "${common[@]}" --bind 127.0.0.1 >>"$LOG" 2>&1 || true
  wait_for 30 redis_ok
}

ensure_redis() {
  local how="up"
  if ! redis_ok; then
    if have redis-server; then
      redis_start_local || die "redis: did not start (see /var/log/redis/ci.log)"
      how="started"
    elif docker_ok; then
      compose_up redis || die "redis: docker compose up failed (log: $LOG)"
      wait_for 60 redis_ok || die "redis: container did not answer on 6379 within 60 s"
      how="started (docker)"
    else
      apt_install redis-server || die "redis: apt-get install redis-server failed (log: $LOG)"
      redis_ok || redis_start_local || die "redis: installed but did not start (see /var/log/redis/ci.log)"
      how="installed + started"
    fi
  fi
  say redis "$how (127.0.0.1:6379)"
}

# ---------------------------------------------------------------- PostgreSQL
pg_ok() {
  if have pg_isready; then timeout 5 pg_isready -q -h 127.0.0.1 -p 5432
  else tcp_open 127.0.0.1 5432
  fi
}
pg_installed() { have pg_ctlcluster && compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; }

pg_start_local() {
  local ver
  if [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    ver="$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -1)"
    as_root pg_createcluster "$ver" main >>"$LOG" 2>&1 || return 1
  fi
  ver="$(ls /etc/postgresql 2>/dev/null | head -1)"
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start >>"$LOG" 2>&1 || true
  wait_for 60 pg_ok
}

ensure_postgres() {
  if [ "${CHOREO_NEED_POSTGRES:-0}" != "1" ]; then
    say postgres "not needed (set CHOREO_NEED_POSTGRES=1)"
    return 0
  fi
  local how="up"
  if ! pg_ok; then
    if pg_installed; then
      pg_start_local || die "postgres: did not start within 60 s (log: $LOG)"
      how="started"
    elif docker_ok; then
      compose_up postgres || die "postgres: docker compose up failed (log: $LOG)"
      wait_for 60 tcp_open 127.0.0.1 5432 || die "postgres: container did not answer on 5432 within 60 s"
      how="started (docker)"
    else
      apt_install postgresql || die "postgres: apt-get install postgresql failed (log: $LOG)"
      pg_ok || pg_start_local || die "postgres: installed but did not start within 60 s (log: $LOG)"
      how="installed + started"
    fi
  fi
  # The tests connect as postgres/postgres over TCP. Trust auth (this machine kind) ignores
  # the password; a fresh Debian cluster asks for one, so set it through the local socket.
  if have psql && ! PGPASSWORD=postgres timeout 10 psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; then
    as_root runuser -u postgres -- psql -q -c "ALTER USER postgres PASSWORD 'postgres'" >>"$LOG" 2>&1 \
      || die "postgres: cannot log in as postgres over TCP, nor set its password (log: $LOG)"
  fi
  say postgres "$how (127.0.0.1:5432)"
}

# ---------------------------------------------------------------- Prometheus
# Only the binaries (prometheus, promtool): `choreo up` runs its own Prometheus on
# 127.0.0.1:9190 with its files under run/. The package's service is never started here.

# Debian starts a package's service on install unless /usr/sbin/policy-rc.d says no (101);
# invoke-rc.d and deb-systemd-invoke both ask it. Lay one down only for the install, and only
# when the machine has none of its own.
without_service_starts() {
  local policy=/usr/sbin/policy-rc.d made=0 rc=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# choreo ensure-services: no service starts during this install\nexit 101\n' >"$policy" \
      && chmod 755 "$policy" && made=1
  fi
  "$@" || rc=$?
  [ "$made" -eq 0 ] || rm -f "$policy"
  return "$rc"
}

prom_install() {
  without_service_starts env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends prometheus >>"$LOG" 2>&1
}

ensure_prometheus() {
  if have prometheus; then
    say prometheus "installed ($(command -v prometheus))"
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    say prometheus "not installed, and installing needs root: run this script as root, or apt-get install prometheus (choreo up runs without it)"
    return 0
  fi
  if ! have apt-get; then
    say prometheus "not installed and no apt-get here: install prometheus yourself (choreo up runs without it)"
    return 0
  fi
  # A stale package list is the usual failure: refresh it once and try again.
  if ! prom_install; then
    apt-get update -q >>"$LOG" 2>&1 || true
    APT_UPDATED=1
    if ! prom_install; then
      say prometheus "apt-get install prometheus failed (log: $LOG); choreo up runs without it"
      return 0
    fi
  fi
  have prometheus || { say prometheus "installed, but no prometheus binary on PATH (log: $LOG)"; return 0; }
  say prometheus "installed ($(command -v prometheus))"
}

ensure_rabbitmq
ensure_redis
ensure_postgres
ensure_prometheus
