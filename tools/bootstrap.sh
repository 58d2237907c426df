#!/usr/bin/env bash
# Set up what the project needs on a fresh machine: Debian's venv support and the
# redis-server binary the tests start privately (installed only when missing and we are
# root), then the project's virtual environment. Usage: tools/bootstrap.sh PYTHON VENV_DIR
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}

missing=()
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    missing+=(python3-venv)
fi
command -v redis-server >/dev/null || missing+=(redis-server)
command -v pg_config >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
        # Debian starts services on install where it can; the tests use private servers.
    else
        echo "missing Debian packages: ${missing[*]} (apt-get install them as root)" >&2
        exit 1
    fi
fi

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
