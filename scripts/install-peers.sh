#!/usr/bin/env bash
# Installs the peers the comparison benchmarks run flowlb against, and their load tools, from Debian:
#   nginx + libnginx-mod-stream  (stream UDP proxy)        bench/peers.ts, bench/cpu-per-query.ts
#   dnsdist                      (DNS load balancer)        bench/peers.ts, bench/cpu-per-query.ts
#   nsd                          (authoritative DNS backends)
#   dnsperf                      (DNS load generator)
#   sockperf                     (UDP ping-pong latency)
#   sip-tester                   (sipp: SIP UAC/UAS)        bench/sip.ts
#
# Idempotent and non-interactive: it does nothing when every tool is already there. Packaged services (nginx on
# :80, nsd on :53, dnsdist on :53) must not start: a policy-rc.d returning 101 stops invoke-rc.d from starting
# them during the install, and they are stopped/disabled afterwards where a service manager runs. The benchmarks
# start their own instances with their own configs on loopback ports.
#
# Needs root (or sudo without a password).
set -euo pipefail

declare -A tool_pkg=(
  [nginx]=nginx
  [dnsdist]=dnsdist
  [nsd]=nsd
  [dnsperf]=dnsperf
  [sockperf]=sockperf
  [sipp]=sip-tester
)
need=()
for tool in "${!tool_pkg[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || need+=("${tool_pkg[$tool]}")
done
# The stream module is a separate package; nginx starts without it, the UDP proxy config does not.
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)

if [ ${#need[@]} -eq 0 ]; then
  echo "install-peers: all present (nginx, libnginx-mod-stream, dnsdist, nsd, dnsperf, sockperf, sipp)"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "install-peers: need root (or sudo) to install: ${need[*]}" >&2
    exit 1
  fi
fi

source "$(dirname "${BASH_SOURCE[0]}")/lib/no-service-start.sh"

echo "install-peers: installing ${need[*]}"
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${need[@]}" >/dev/null

# Belt and braces: where a service manager runs, make sure the packaged daemons hold no ports.
for svc in nginx nsd dnsdist; do
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now "$svc.service" >/dev/null 2>&1 || true
  fi
  if command -v service >/dev/null 2>&1; then $SUDO service "$svc" stop >/dev/null 2>&1 || true; fi
done

missing=()
for tool in "${!tool_pkg[@]}"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(ngx_stream_module.so)
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-peers: still missing after install: ${missing[*]}" >&2
  exit 1
fi
dpkg-query -W -f='install-peers: ${Package} ${Version}\n' nginx libnginx-mod-stream dnsdist nsd dnsperf sockperf sip-tester
