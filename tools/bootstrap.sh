#!/usr/bin/env bash
# Create the project's virtual environment, installing Debian's venv support first when
# it is missing and we are root. Usage: tools/bootstrap.sh PYTHON VENV_DIR
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}

if [ -x "$venv/bin/python" ]; then
    exit 0
fi
if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    else
        echo "python3-venv is missing; install it (apt-get install python3-venv)" >&2
        exit 1
    fi
fi
"$python" -m venv "$venv"
