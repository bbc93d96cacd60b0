#!/usr/bin/env bash
# Installs the Debian tools the test suite drives as a user would: tmux (the `flowlb top` terminal test) and
# prometheus + promtool (the scrape test). Idempotent; does nothing when they are already there.
set -euo pipefail

need=()
command -v tmux >/dev/null 2>&1 || need+=(tmux)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || need+=(prometheus)
[ ${#need[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
# Packaged services must not start on install (they would take ports the tests use).
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
