#!/usr/bin/env bash
# Set up the comparison (python -m bench.compare): wrk and h2load, the bench extra in .venv,
# and one virtual environment per peer server under bench/.venvs/<peer>, so the peers' pins
# never touch the project's .venv. Idempotent: a venv whose package list is unchanged is kept.
#
#   bash bench/setup_peers.sh            # or: make bench-setup
#   bash bench/setup_peers.sh --force    # rebuild every peer venv
#
# The frameworks (tensorflow-cpu, torch 2.13.0 CPU, transformers, keras) are not installed
# again five times: each peer venv gets a .pth file naming .venv's site-packages. A .pth
# entry goes on sys.path after the venv's own site-packages, so the peer's own packages
# (its fastapi, numpy, protobuf, ...) win and .venv only fills in what the peer lacks. The
# peer's packages are installed before the .pth exists, so pip resolves them on their own;
# then an import check of the peer together with the frameworks proves the mix works.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENVS="$ROOT/bench/.venvs"
MAIN="$ROOT/.venv"
FORCE="${1:-}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 TF_CPP_MIN_LOG_LEVEL=2

if [[ ! -x "$MAIN/bin/python" ]]; then
  echo "setup_peers: $MAIN is missing; run 'make install' first" >&2
  exit 1
fi

# 1. The load generators (Debian packages): wrk for HTTP, h2load (nghttp2-client) for gRPC.
# apt_install COMMAND PACKAGE: install PACKAGE unless COMMAND is already on PATH.
apt_install() {
  local command="$1" package="$2"
  if command -v "$command" >/dev/null; then
    return
  fi
  if [[ "$(id -u)" == 0 ]]; then
    apt-get update -qq && apt-get install -y -qq "$package"
  elif command -v sudo >/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq "$package"
  else
    echo "setup_peers: $command is missing and this user cannot apt-get install $package" >&2
    exit 1
  fi
}
apt_install wrk wrk
{ wrk --version 2>&1 || true; } | head -n 1
apt_install h2load nghttp2-client
{ h2load --version 2>&1 || true; } | head -n 1

# 2. The orchestrator's own needs in .venv: the project's bench extra (matplotlib, psutil).
if ! "$MAIN/bin/python" -c "import matplotlib, psutil" 2>/dev/null; then
  "$MAIN/bin/pip" install --quiet -e "$ROOT[bench]"
fi

MAIN_SITE="$("$MAIN/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PYENV_PY="$("$MAIN/bin/python" -c 'import sys; print(sys._base_executable)')"
DEBIAN_PY=/usr/bin/python3
CHECK_FRAMEWORKS="import numpy, tensorflow, keras, torch, transformers"

# make_venv NAME PYTHON IMPORT_CHECK PACKAGE...
make_venv() {
  local name="$1" python="$2" check="$3"
  shift 3
  local dir="$VENVS/$name" spec="$python $*"
  if [[ "$FORCE" != "--force" && -f "$dir/.bench-ready" && "$(cat "$dir/.bench-ready")" == "$spec" ]]; then
    echo "$name: kept ($dir)"
    return
  fi
  echo "$name: creating $dir with $python: $*"
  rm -rf "$dir"
  "$python" -m venv "$dir"
  "$dir/bin/pip" install --quiet "$@"
  local site
  site="$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$MAIN_SITE" > "$site/zz-serve-app-main-venv.pth"
  local log="$dir/import-check.log"
  if ! (cd "$ROOT" && PYTHONPATH="$ROOT" "$dir/bin/python" -c "$CHECK_FRAMEWORKS; $check; import bench.models") >"$log" 2>&1; then
    echo "$name: import check failed (the peer's packages clash with .venv's?):" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
  echo "$spec" > "$dir/.bench-ready"
  echo "$name: ready"
}

mkdir -p "$VENVS"
make_venv flask "$PYENV_PY" "import flask, gunicorn" "flask==3.1.3" "gunicorn==27.0.1"
make_venv litserve "$PYENV_PY" "import litserve" "litserve==0.2.19"
make_venv kserve "$PYENV_PY" "import kserve" "kserve==0.21.0"
# uvloop 0.22+ crashes MLServer's inference workers ("There is no current event loop").
make_venv mlserver "$PYENV_PY" "import mlserver, uvloop" "mlserver==1.7.1" "uvloop<0.22"
# PyTriton fails on the pyenv Python (pytriton issue #51); Debian's 3.11.2 runs it. It pins
# numpy<2 in its venv; torch and TensorFlow from .venv (built against numpy 2) load with it.
if [[ -x "$DEBIAN_PY" ]]; then
  make_venv pytriton "$DEBIAN_PY" "import pytriton.triton" "nvidia-pytriton==0.7.0"
else
  echo "pytriton: skipped: $DEBIAN_PY is missing (PyTriton needs Debian's Python here)" >&2
fi
# `transformers serve` (bench/generate.py) is .venv's transformers; it needs accelerate, whose
# dependencies (torch among them: the CUDA build on the public index) are all in .venv.
make_venv transformers-serve "$PYENV_PY" "import accelerate" "--no-deps" "accelerate==1.16.0"
echo "peer venvs ready under $VENVS"
