#!/usr/bin/env bash
# One-command setup of the mega-fairseq environment (called by `make install`).
#
# Creates .venv with the machine's python3, installs torch==2.13.0 (CPU), builds fairseq 0.12.2
# from the official sdist with our compatibility patch set (tools/fairseq_compat/patches.py),
# installs the pinned requirements and mega_fairseq itself (editable).
#
# Idempotent: a stamp file records what was installed; a re-run with nothing changed returns
# in about a second. The built fairseq wheel is cached in $MEGA_FAIRSEQ_CACHE
# (default ~/.cache/mega-fairseq), keyed by the patch set's contents, so a fresh clone on the same
# machine does not rebuild it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
CACHE="${MEGA_FAIRSEQ_CACHE:-$HOME/.cache/mega-fairseq}"
CONSTRAINTS="$ROOT/requirements/constraints.txt"
STAMP="$VENV/.mega-install-ok"
SDIST="$CACHE/sdist/fairseq-0.12.2.tar.gz"
# sha256 of fairseq-0.12.2.tar.gz as published on PyPI (the file every patch anchor was written against)
SDIST_SHA256="34f1b18426bf3844714534162f065ab733e049597476daa35fffb4d06a92b524"

die() { echo "" >&2; echo "install error: $*" >&2; exit 1; }
step() { echo "==> $*"; }

# --- 0. a supported Python ---------------------------------------------------------------------
command -v "$PY" >/dev/null 2>&1 || die "'$PY' not found. Install Python 3.11 (or set PYTHON=/path/to/python3.11)."
PYVER="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
case "$PYVER" in
  3.11) ;;
  *) die "Python $PYVER is not supported by this installer (it pins torch 2.13.0 for Python 3.11).
Use Python 3.11 (PYTHON=/path/to/python3.11 make install), or, on Python <= 3.10, use an existing
stock fairseq 0.12.2 and install only the plugin: pip install --no-deps -e . (see README)." ;;
esac

# --- the cached fairseq sdist, if any, must be the one published on PyPI ------------------------
check_sdist() {
  local got
  got="$(sha256sum "$SDIST" | cut -d' ' -f1)"
  if [ "$got" != "$SDIST_SHA256" ]; then
    rm -f "$SDIST"
    die "$SDIST has sha256 $got, expected $SDIST_SHA256 (fairseq-0.12.2.tar.gz on PyPI).
The file was deleted; re-run make install to download it again."
  fi
}
if [ -f "$SDIST" ]; then check_sdist; fi

# --- fast path: nothing changed since the last successful install ---------------------------
KEY="$(cat "$CONSTRAINTS" "$ROOT/requirements/requirements.txt" "$ROOT/tools/fairseq_compat/patches.py" \
        "$ROOT/setup.py" "$ROOT/mega_fairseq/csrc/"*.cpp "$ROOT/mega_fairseq/csrc/"*.h "$0" | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ] && [ -x "$VENV/bin/python" ]; then
  echo "mega-fairseq environment is up to date ($VENV)."
  exit 0
fi
rm -f "$STAMP"

# --- 1. virtual environment --------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV with $PY ($PYVER)"
  "$PY" -m venv "$VENV" || die "could not create a virtual environment (on Debian: apt-get install python3-venv)."
fi
PIP=(pip_filtered "$VENV/bin/python" -m pip --disable-pip-version-check)
# Some machines list extra local package indexes that lack most packages; pip warns once per
# package about them. Drop that noise, keep every other message.
pip_filtered() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
export PIP_CONSTRAINT="$CONSTRAINTS"   # also applies inside fairseq's isolated build environment

# --- 2. torch (the local CPU wheel; pinned so nothing pulls CUDA builds) -----------------------
if ! "$VENV/bin/python" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  step "installing torch==2.13.0 (CPU)"
  "${PIP[@]}" install -q "torch==2.13.0" \
    || die "pip could not install torch==2.13.0. Is the package registry reachable (or the local CPU wheel present)?"
fi

# --- 3. the rest of the stack, from the pinned constraints -------------------------------------
step "installing pinned requirements"
"${PIP[@]}" install -q -r "$ROOT/requirements/requirements.txt" \
  || die "pip could not install requirements/requirements.txt. Is the package registry reachable?"

# --- 4. fairseq 0.12.2 from the official sdist + our compatibility patches ---------------------
PATCH_HASH="$(sha256sum "$ROOT/tools/fairseq_compat/patches.py" | cut -c1-12)"
WHEEL_DIR="$CACHE/fairseq-wheel-$PATCH_HASH"
WHEEL="$(ls "$WHEEL_DIR"/fairseq-0.12.2+mega*.whl 2>/dev/null | head -n1 || true)"
if [ -z "$WHEEL" ]; then
  step "building fairseq 0.12.2 with the compatibility patch set (first time only, ~3 min)"
  mkdir -p "$CACHE/sdist"
  if [ ! -f "$SDIST" ]; then
    # --no-deps: only the sdist itself. Its metadata step runs in an isolated build env that the
    # constraints keep on the local torch wheel.
    "${PIP[@]}" download -q --no-deps --no-binary fairseq "fairseq==0.12.2" -d "$CACHE/sdist" \
      || die "could not download the fairseq 0.12.2 sdist from the package registry.
Check your network/registry access (pip config list), then re-run: make install"
  fi
  [ -f "$SDIST" ] || die "the fairseq 0.12.2 sdist was not found in $CACHE/sdist after download."
  check_sdist
  BUILD="$(mktemp -d)"
  trap 'rm -rf "$BUILD"' EXIT
  tar -xzf "$SDIST" -C "$BUILD" || die "could not unpack $SDIST (delete it and re-run make install)."
  "$VENV/bin/python" "$ROOT/tools/fairseq_compat/patches.py" "$BUILD/fairseq-0.12.2" \
    || die "the fairseq compatibility patch set did not apply (see the message above)."
  # Build WITH isolation: inside it torch is absent, so setup.py skips the optional C++ extensions
  # (one of them has a source file missing from the sdist); the cython/C++ helpers that fairseq
  # needs are built against the pinned numpy.
  mkdir -p "$WHEEL_DIR.tmp"
  "${PIP[@]}" wheel -q --no-deps "$BUILD/fairseq-0.12.2" -w "$WHEEL_DIR.tmp" \
    || die "building the patched fairseq wheel failed (see above). Re-run make install after fixing."
  rm -rf "$WHEEL_DIR" && mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"
  WHEEL="$(ls "$WHEEL_DIR"/fairseq-0.12.2+mega*.whl | head -n1)"
fi
step "installing $(basename "$WHEEL")"
"${PIP[@]}" install -q --no-deps --force-reinstall "$WHEEL" || die "could not install $WHEEL"

# --- 5. the plugin itself, editable ------------------------------------------------------------
step "installing mega_fairseq (editable)"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT" || die "could not install mega_fairseq from $ROOT"
# the compiled CPU kernels (the EMA recurrence and the gates' element-wise work), next to the
# sources the editable install points at, two at a time (about a minute each; optional: without
# a C++ compiler the EMA runs its blocked scan and the gates torch ops, and setup.py says so)
step "building the CPU kernels (mega_fairseq/csrc)"
(cd "$ROOT" && "$VENV/bin/python" setup.py -q build_ext --inplace -j 2 2>&1 | grep "^mega_fairseq:" >&2 || true)

# --- 6. smoke check ------------------------------------------------------------------------------
"$VENV/bin/python" - <<'PYCHECK' || die "the installed stack does not import (see the traceback above)."
import fairseq, torch, mega_fairseq
assert fairseq.__version__.startswith("0.12.2+mega"), fairseq.__version__
from mega_fairseq.modules import ema_recurrence, silu_gate_kernels
print(f"fairseq {fairseq.__version__}, torch {torch.__version__}, mega_fairseq {mega_fairseq.__version__}, "
      f"EMA kernel {'built' if ema_recurrence.available() else 'not built (blocked scan)'}, "
      f"gate kernel {'built' if silu_gate_kernels.available() else 'not built (torch ops)'}")
PYCHECK
echo "$KEY" > "$STAMP"
echo "mega-fairseq environment ready: $VENV"
