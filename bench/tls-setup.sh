#!/usr/bin/env bash
# tls-setup.sh — install what tls-bench.sh needs; safe to run any number of times, from any directory.
#   nginx (upstream + TLS proxy under comparison), wrk (HTTPS load), curl (checks), openssl (the
#   certificate, the TLS checks), nghttp2-client (h2load, the HTTP/2 load), iproute2 (ss),
#   util-linux (taskset, setsid), procps (ps), coreutils (timeout, nproc), gcc + libc6-dev (the
#   small handshake-counter library the script compiles for wrk).
# The example gateway is built by tls-bench.sh itself (cargo build --release --example gateway).
# The Debian nginx package may try to start the system nginx on :80; the benchmark never uses it
# (it runs its own instances with configs under a temp dir on ports 18281-18283).
set -euo pipefail

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v ss >/dev/null || need+=(iproute2)
command -v taskset >/dev/null || need+=(util-linux)
command -v ps >/dev/null || need+=(procps)
command -v cc >/dev/null || need+=(gcc libc6-dev)
if ((${#need[@]})); then
  SUDO=""
  [[ $EUID -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

command -v cargo >/dev/null || echo "tls-setup.sh: cargo not found: tls-bench.sh then needs GATEWAY_BIN=/path/to/gateway" >&2

echo "nginx: $(nginx -v 2>&1 | sed 's/.*: //')  wrk: $(wrk -v 2>&1 | awk 'NR==1 {print $2}')  h2load: $(h2load --version 2>&1 | awk '{print $2; exit}')  $(openssl version)"
