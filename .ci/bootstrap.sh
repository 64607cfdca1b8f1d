#!/usr/bin/env bash
# Installs the Debian packages wfpr needs, only those missing. Called by
# every make target, so `make demo` and `make test` work on a fresh machine.
set -euo pipefail

# Arguments name more packages (make bench: the peers it measures against).
packages=(build-essential cmake pkg-config clang llvm libclang-rt-14-dev libbpf-dev libelf-dev bpftool libssl-dev liblua5.4-dev lua5.4 swig curl
	python3 python3-venv iproute2 apache2-utils redis-server redis-tools dnsmasq-base bind9-dnsutils nginx-light wrk dnsperf haproxy "$@")

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "bootstrap: installing ${missing[*]}"
as_root=()
if [ "$(id -u)" -ne 0 ]; then
	command -v sudo >/dev/null || { echo "bootstrap: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
	as_root=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
