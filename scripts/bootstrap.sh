#!/usr/bin/env bash
# Create the Python environment idempotently:
#   .venv-tools/  a venv holding the pinned uv
#   .venv/        the project environment, synced from uv.lock (uv sync --frozen; bytecode compiled once so every worker starts fast)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
UV_VERSION="0.13.9"

die() { echo "bootstrap: ERROR: $*" >&2; exit 1; }

# Print the real path of a Python 3.11 interpreter (resolves pyenv shims).
is_py311() {
  "$1" -c 'import sys; assert sys.version_info[:2] == (3, 11); print(sys.executable)' 2>/dev/null
}
find_python() {
  local cand home=""
  # Prefer the interpreter an existing .venv was built with: switching interpreters
  # would make uv delete and rebuild .venv.
  [ -f .venv/pyvenv.cfg ] && home="$(sed -n 's/^home *= *//p' .venv/pyvenv.cfg)"
  for cand in ${home:+"$home/python3.11"} python3.11 python3 \
              "$(pyenv root 2>/dev/null || echo "${HOME:-/root}/.pyenv")"/versions/3.11*/bin/python3.11 \
              /usr/local/bin/python3.11 /usr/bin/python3.11; do
    if command -v "$cand" >/dev/null 2>&1 || [ -x "$cand" ]; then
      is_py311 "$cand" && return 0
    fi
  done
  return 1
}
PY="$(find_python)" || die "no Python 3.11 found (tried python3.11, python3, pyenv, /usr/bin)"

UV="$ROOT/.venv-tools/bin/uv"
if ! { [ -x "$UV" ] && "$UV" --version 2>/dev/null | grep -qx "uv $UV_VERSION.*"; }; then
  "$PY" -m venv --clear .venv-tools || die "could not create .venv-tools"
  .venv-tools/bin/python -m pip install -q --disable-pip-version-check "uv==$UV_VERSION" \
    || die "pip install uv==$UV_VERSION failed"
fi

# Never let uv download an interpreter: use the system 3.11 found above.
export UV_PYTHON_DOWNLOADS=never
# Trust the system CA bundle (TLS-intercepting proxies) even in a bare environment.
if [ -z "${SSL_CERT_FILE:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
fi
"$UV" sync --frozen --quiet --compile-bytecode --python "$PY" || die "uv sync --frozen failed"

echo "bootstrap: .venv ready ($("$ROOT/.venv/bin/python" -V 2>&1), uv $UV_VERSION, python $PY)"
