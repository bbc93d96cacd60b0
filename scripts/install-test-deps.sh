#!/usr/bin/env bash
# Installs the Debian tools the test suite drives as a user would: tmux (the `flowlb top` terminal test) and
# Prometheus + promtool (the scrape test, via install-prometheus.sh). Idempotent: does nothing when they are there.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

if ! command -v tmux >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tmux >/dev/null
fi
bash "$here/install-prometheus.sh"
