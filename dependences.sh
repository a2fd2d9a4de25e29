#!/usr/bin/env bash
# Prepare this machine to run RESTfulSwarm (idempotent; run as root on Debian 12).
#
#   bash dependences.sh            everything one machine needs to run the whole system
#   bash dependences.sh test       the same, plus what the test suite needs
#   bash dependences.sh Worker     only what a worker host needs (engine, venv, images)
#
# Installs Debian packages, creates .venv with the pinned Python dependencies, starts dockerd when
# none answers, initialises a single-node Swarm when inactive, and builds the local images
# (nothing is ever pulled from a registry).
#
# Environment (all optional):
#   DOCKER_HOST                          the engine to use (default: the local socket; a worker host's own)
#   RSWARM_GLOBALMANAGER_ADVERTISE_ADDR  the address a new Swarm advertises (default 127.0.0.1: one machine
#                                        only; give the address other hosts reach for a multi-host Swarm)
#   RSWARM_WHEELHOUSE                    install the pinned wheels from this directory, without any index
#   RSWARM_BUILD_IMAGES=0                build no image (`up --inventory` ships them from the control machine)
# Role Worker never initialises, joins or leaves a Swarm: `Management.py up --inventory` joins the host.
set -euo pipefail

ROLE="${1:-all}"
case "$ROLE" in all|test|Worker) ;; *) echo "usage: $0 [all|test|Worker]" >&2; exit 2 ;; esac
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"
RUN_DIR="${RSWARM_RUN_DIR:-$HERE/run}"
TASK_IMAGE="rswarm/task:1"
EPM_BASE_IMAGE="rswarm/epm-base:1"
export DEBIAN_FRONTEND=noninteractive

log() { printf '[dependences] %s\n' "$*"; }
die() { printf '[dependences] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts dockerd)"
[ -r /etc/debian_version ] || die "this script supports Debian 12"

# ---- Debian packages ----------------------------------------------------------------------------
PACKAGES=(docker.io busybox-static debootstrap iproute2 iptables ca-certificates)
[ "$ROLE" = "Worker" ] || PACKAGES+=(openssh-server)
# Headless Chromium for the browser tests (driven by Python playwright, never `playwright install`)
[ "$ROLE" = "test" ] && PACKAGES+=(chromium chromium-driver openssl)  # openssl: the MongoDB TLS test's certificates
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then missing+=(python3-venv); fi
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- Python virtualenv -------------------------------------------------------------------------
LOCK="requirements.lock"
[ "$ROLE" = "test" ] && LOCK_TEST="requirements-test.lock" || LOCK_TEST=""
stamp_want="$(cat "$LOCK" ${LOCK_TEST:+"$LOCK_TEST"} | sha256sum | cut -c1-16)"
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.rswarm-stamp 2>/dev/null)" != "$stamp_want" ]; then
  log "creating .venv with the pinned dependencies ($LOCK${LOCK_TEST:+ + $LOCK_TEST})"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  PIP_SOURCE=()
  if [ -n "${RSWARM_WHEELHOUSE:-}" ]; then PIP_SOURCE=(--no-index --find-links "$RSWARM_WHEELHOUSE"); fi
  .venv/bin/python -m pip install -q --disable-pip-version-check ${PIP_SOURCE[@]+"${PIP_SOURCE[@]}"} \
    -r "$LOCK" ${LOCK_TEST:+-r "$LOCK_TEST"}
  echo "$stamp_want" > .venv/.rswarm-stamp
fi

debian_mirror() {
  local url
  url="$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
         | grep -v security | grep -oE 'https?://[^ ]+' | head -n1 || true)"
  echo "${url:-http://deb.debian.org/debian}"
}
debian_mirror_pool() { debian_mirror | sed 's:/*$::'; }

# ---- CRIU (checkpoint/restore) -----------------------------------------------------------------
# Debian 12's criu 3.17 fails on this kernel ("Unexpected rt vDSO area bounds"); CRIU 4.1.1 built from
# Debian's own upstream tarball (verified by its sha256) works. It lives in its own directory, put first
# in the PATH of the dockerd this project starts (with --experimental, which `docker checkpoint` needs).
CRIU_DIR=/usr/local/lib/rswarm-criu
CRIU_SHA256=f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe
if [ "$ROLE" != "Worker" ] || [ -n "${RSWARM_WITH_CRIU:-}" ]; then
  if ! "$CRIU_DIR/criu" --version 2>/dev/null | grep -q "Version: 4.1.1"; then
    log "building CRIU 4.1.1 from Debian's upstream tarball (about a minute)"
    CRIU_DEPS=(build-essential pkgconf libbsd-dev libcap-dev libgnutls28-dev libnet1-dev libnftables-dev libnl-3-dev
               libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler protobuf-compiler python3-protobuf uuid-dev curl xz-utils)
    apt-get install -y -qq --no-install-recommends "${CRIU_DEPS[@]}" >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${CRIU_DEPS[@]}" >/dev/null; }
    build="$(mktemp -d)"
    curl -sSf -o "$build/criu.tar.xz" "$(debian_mirror_pool)/pool/main/c/criu/criu_4.1.1.orig.tar.xz"
    echo "$CRIU_SHA256  $build/criu.tar.xz" | sha256sum -c --quiet - || die "criu tarball checksum mismatch"
    tar -C "$build" -xf "$build/criu.tar.xz"
    make -C "$build/criu-4.1.1" -j"$(nproc)" criu >"$build/build.log" 2>&1 || { tail -20 "$build/build.log"; die "building CRIU failed"; }
    install -D -m 755 "$build/criu-4.1.1/criu/criu" "$CRIU_DIR/criu"
    rm -rf "$build"
  fi
  "$CRIU_DIR/criu" check >/dev/null 2>&1 || log "warning: criu check fails on this kernel; checkpoints will not work"
fi

# ---- Docker engine and Swarm ------------------------------------------------------------------
DOCKER=/usr/bin/docker   # Debian's client, matched to its engine (API 1.41)
if ! "$DOCKER" version >/dev/null 2>&1; then
  case "${DOCKER_HOST:-unix:///var/run/docker.sock}" in
    unix:///var/run/docker.sock|unix:///run/docker.sock) ;;
    *) die "the engine at DOCKER_HOST=$DOCKER_HOST does not answer (this script starts only the local default engine)" ;;
  esac
  log "starting dockerd (experimental, with CRIU on its PATH)"
  mkdir -p "$RUN_DIR/logs"
  PATH="$CRIU_DIR:$PATH" nohup dockerd --experimental >>"$RUN_DIR/logs/dockerd-bootstrap.log" 2>&1 &
  for _ in $(seq 1 120); do "$DOCKER" version >/dev/null 2>&1 && break; sleep 0.5; done
  "$DOCKER" version >/dev/null 2>&1 || die "dockerd did not come up; see $RUN_DIR/logs/dockerd-bootstrap.log"
fi
if [ "$ROLE" != "Worker" ] && [ "$("$DOCKER" info --format '{{.Swarm.LocalNodeState}}')" = "inactive" ]; then
  ADVERTISE="${RSWARM_GLOBALMANAGER_ADVERTISE_ADDR:-127.0.0.1}"
  log "initialising a Swarm advertising $ADVERTISE"
  "$DOCKER" swarm init --advertise-addr "$ADVERTISE" --default-addr-pool 10.90.0.0/16 >/dev/null
fi

# ---- local images (no registry) -----------------------------------------------------------------
if [ "${RSWARM_BUILD_IMAGES:-1}" = 0 ]; then
  log "ready (role $ROLE, images not built here): $("$DOCKER" version --format 'engine {{.Server.Version}}'), swarm $("$DOCKER" info --format '{{.Swarm.LocalNodeState}}')"
  exit 0
fi

if ! "$DOCKER" image inspect "$TASK_IMAGE" >/dev/null 2>&1; then
  log "building $TASK_IMAGE (static busybox)"
  tmp="$(mktemp -d)"
  mkdir -p "$tmp/bin" "$tmp/tmp" "$tmp/etc"
  cp /bin/busybox "$tmp/bin/busybox"
  for applet in $("$tmp/bin/busybox" --list); do [ -e "$tmp/bin/$applet" ] || ln -s busybox "$tmp/bin/$applet"; done
  echo "root:x:0:0:root:/:/bin/sh" > "$tmp/etc/passwd"
  tar -C "$tmp" -c . | "$DOCKER" import -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/bin' - "$TASK_IMAGE" >/dev/null
  rm -rf "$tmp"
fi

if ! "$DOCKER" image inspect "$EPM_BASE_IMAGE" >/dev/null 2>&1; then
  mirror="$(debian_mirror)"
  log "building $EPM_BASE_IMAGE (debootstrap bookworm from $mirror; about a minute)"
  rootfs="$(mktemp -d)"
  debootstrap --variant=minbase --include=python3,python3-pyroute2,iproute2 bookworm "$rootfs" "$mirror" >/dev/null
  rm -rf "$rootfs"/usr/share/{doc,man,info,locale}/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
  tar -C "$rootfs" --numeric-owner -c . | "$DOCKER" import -c 'CMD ["/usr/bin/python3"]' - "$EPM_BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
fi

log "ready (role $ROLE): $("$DOCKER" version --format 'engine {{.Server.Version}}'), swarm $("$DOCKER" info --format '{{.Swarm.LocalNodeState}}'), images $TASK_IMAGE $EPM_BASE_IMAGE"
