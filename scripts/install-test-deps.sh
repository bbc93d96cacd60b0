#!/usr/bin/env bash
# Installs the Debian tools the test suite drives as a user would: tmux (the `flowlb top` terminal test), sockperf
# (the sockperf handler test) and
# Prometheus + promtool (the scrape test, via install-prometheus.sh), and a C compiler with libc headers (the
# flowgen test builds bench/native/flowgen.c). Idempotent: does nothing when they are there.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

if ! command -v tmux >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tmux >/dev/null
fi
# gcc alone does not pull the C library headers with --no-install-recommends: check for both.
if ! command -v cc >/dev/null 2>&1 || [ ! -f /usr/include/stdio.h ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null
fi
# sockperf: the sockperf handler's test drives the real client.
if ! command -v sockperf >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends sockperf >/dev/null
fi
bash "$here/install-prometheus.sh"
