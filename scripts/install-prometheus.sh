#!/usr/bin/env bash
# Installs Prometheus and promtool from Debian's `prometheus` package if either is missing, for the metrics
# tests (test/prometheus.test.ts) and for trying deploy/prometheus.yml locally.
#
# The package ships a service that would listen on :9090 and :9100 (node exporter); it is
# stopped and disabled afterwards. Without systemd running (containers, CI) there is nothing to stop: the
# package's own scripts start nothing then, and the stop/disable steps below are allowed to fail.
#
# Needs root (or sudo without a password). Safe to run repeatedly: it does nothing once both tools exist.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  echo "install-prometheus: $(prometheus --version 2>&1 | head -n1)"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
  else
    echo "install-prometheus: need root (or sudo) to install Debian's prometheus package" >&2
    exit 1
  fi
fi

# policy-rc.d exit 101 tells invoke-rc.d (used by the package's postinst) not to start the service.
source "$(dirname "${BASH_SOURCE[0]}")/lib/no-service-start.sh"

$SUDO apt-get update
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus

# Keep the packaged service from holding ports. Neither step matters (nor works) without systemd.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
if command -v service >/dev/null 2>&1; then
  $SUDO service prometheus stop >/dev/null 2>&1 || true
fi

command -v prometheus >/dev/null 2>&1 || { echo "install-prometheus: prometheus still missing after install" >&2; exit 1; }
command -v promtool >/dev/null 2>&1 || { echo "install-prometheus: promtool still missing after install" >&2; exit 1; }
echo "install-prometheus: $(prometheus --version 2>&1 | head -n1)"
