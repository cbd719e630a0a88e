# Shared by run.sh and test.sh: find or start what Chronicle needs on this machine.
# Sourced, not executed. Every function prints what it does on stderr.

say() { printf 'chronicle: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# host and port of a postgres:// URL
url_host() { sed -E 's#^[a-z]+://([^@/]*@)?(\[[^]]+\]|[^:/?]+).*#\2#' <<<"$1"; }
url_port() {
  local p
  p=$(sed -nE 's#^[a-z]+://([^@/]*@)?(\[[^]]+\]|[^:/?]+):([0-9]+).*#\3#p' <<<"$1")
  echo "${p:-5432}"
}

tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# Can we log in with this URL? (psql when present; otherwise an open port will do)
pg_login_ok() {
  if command -v psql >/dev/null 2>&1; then
    psql "$(sed -E 's#/[^/?]*(\?|$)#/postgres\1#' <<<"$1")" -Atqc 'select 1' >/dev/null 2>&1
  else
    tcp_open "$(url_host "$1")" "$(url_port "$1")"
  fi
}

start_local_cluster() {
  command -v pg_ctlcluster >/dev/null 2>&1 || return 1
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  [ -n "$version" ] || return 1
  say "starting the local PostgreSQL $version cluster"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
  for _ in $(seq 1 30); do tcp_open 127.0.0.1 5432 && return 0; sleep 1; done
  return 1
}

install_postgres() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 1
  say "installing PostgreSQL from the distribution's packages"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib >/dev/null
}

# apt_install WHAT PACKAGE... — installs Debian packages (as root), updating the package
# lists only when the first try fails.
apt_install() {
  local what="$1"; shift
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 ||
    die "$what needs Debian's $* (apt-get install $*, as root)"
  say "installing $* from the distribution's packages ($what)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 || {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  } || die "could not install $*"
}

# libfaketime, for the fault suite's clock row (Debian's package `faketime`).
install_faketime() {
  [ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ] && return 0
  apt_install "the fault suite's clock row" faketime
}

# Debian's chromium and chromedriver, for the console's browser tests (WebDriver).
install_chromium() {
  command -v chromedriver >/dev/null 2>&1 && [ -x /usr/bin/chromium ] && return 0
  apt_install "the console's browser tests" chromium chromium-driver
}

# A superuser login for local development when the server refuses the defaults
# (a fresh Debian cluster asks TCP clients for a password).
create_dev_role() {
  [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1 || return 1
  say "creating the local development role 'chronicle'"
  su postgres -c "psql -qc \"DO \\\$\\\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'chronicle') THEN CREATE ROLE chronicle LOGIN SUPERUSER PASSWORD 'chronicle'; END IF; END \\\$\\\$\"" >/dev/null
}

# Sets CHRONICLE_DATABASE_URL to a server we can log in to, starting or installing a
# local one when none answers. An explicit CHRONICLE_DATABASE_URL is only checked.
ensure_postgres() {
  local candidates url
  if [ -n "${CHRONICLE_DATABASE_URL:-}" ]; then
    candidates=("$CHRONICLE_DATABASE_URL")
  else
    candidates=("postgres://postgres@127.0.0.1:5432/chronicle" "postgres://chronicle:chronicle@127.0.0.1:5432/chronicle")
  fi
  local host port
  host=$(url_host "${candidates[0]}")
  port=$(url_port "${candidates[0]}")
  if ! tcp_open "$host" "$port"; then
    case "$host" in
      127.0.0.1|localhost|::1)
        start_local_cluster || { install_postgres && start_local_cluster; } ||
          die "no PostgreSQL answers on $host:$port and none could be started here. Install PostgreSQL 13 or newer (Debian/Ubuntu: sudo apt-get install postgresql), start it, and set CHRONICLE_DATABASE_URL=postgres://USER:PASSWORD@HOST:PORT/chronicle" ;;
      *) die "no PostgreSQL answers at $host:$port (CHRONICLE_DATABASE_URL)" ;;
    esac
  fi
  for url in "${candidates[@]}"; do
    if pg_login_ok "$url"; then export CHRONICLE_DATABASE_URL="$url"; return 0; fi
  done
  if [ -z "${CHRONICLE_DATABASE_URL:-}" ] && create_dev_role && pg_login_ok "${candidates[1]}"; then
    export CHRONICLE_DATABASE_URL="${candidates[1]}"
    return 0
  fi
  die "PostgreSQL answers on $host:$port but refuses the login; set CHRONICLE_DATABASE_URL=postgres://USER:PASSWORD@$host:$port/chronicle"
}

# ---------------------------------------------------------------------------------------
# Kafka: CHRONICLE_KAFKA_BROKERS when set; otherwise tansu 0.6.0 (Apache-licensed,
# Kafka-compatible), installed once into a cache and started on loopback with durable
# SQLite storage.
# ---------------------------------------------------------------------------------------

TANSU_VERSION=0.6.0
TANSU_ROOT="${CHRONICLE_TOOLS_DIR:-$HOME/.cache/chronicle}/tansu-$TANSU_VERSION"
TANSU_BIN="$TANSU_ROOT/bin/tansu"

install_tansu() {
  [ -x "$TANSU_BIN" ] && return 0
  command -v cargo >/dev/null 2>&1 || die "cargo is needed to install the local broker (tansu)"
  say "installing tansu $TANSU_VERSION into $TANSU_ROOT (once; takes several minutes)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features libsql,dynostore \
    --root "$TANSU_ROOT" --quiet || die "could not install tansu"
}

# start_tansu HOST:PORT DIR — starts a broker storing into DIR unless one answers there.
# Sets TANSU_PID when it started one.
start_tansu() {
  local addr="$1" dir="$2" host port
  host="${addr%:*}"; port="${addr##*:}"
  if tcp_open "$host" "$port"; then
    say "a broker already answers on $addr; using it"
    return 0
  fi
  install_tansu
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  say "starting tansu on $addr (storage: $dir/tansu.db)"
  (cd "$dir" && exec "$TANSU_BIN" broker \
      --listener-url "tcp://$addr" --advertised-listener-url "tcp://$addr" \
      --storage-engine "sqlite://tansu.db" >>"$dir/tansu.log" 2>&1) &
  TANSU_PID=$!
  for _ in $(seq 1 100); do
    tcp_open "$host" "$port" && return 0
    kill -0 "$TANSU_PID" 2>/dev/null || die "tansu exited; see $dir/tansu.log"
    sleep 0.1
  done
  die "tansu did not start listening on $addr; see $dir/tansu.log"
}

stop_tansu() {
  if [ -n "${TANSU_PID:-}" ] && kill -0 "$TANSU_PID" 2>/dev/null; then
    kill "$TANSU_PID" 2>/dev/null || true
    wait "$TANSU_PID" 2>/dev/null || true
  fi
}

# ensure_kafka DEFAULT_ADDR DIR — exports CHRONICLE_KAFKA_BROKERS.
ensure_kafka() {
  if [ -n "${CHRONICLE_KAFKA_BROKERS:-}" ]; then
    local first="${CHRONICLE_KAFKA_BROKERS%%,*}"
    tcp_open "${first%:*}" "${first##*:}" || die "no Kafka broker answers at $first (CHRONICLE_KAFKA_BROKERS)"
    return 0
  fi
  start_tansu "$1" "$2"
  export CHRONICLE_KAFKA_BROKERS="$1"
}
