#!/usr/bin/env bash
# Set up everything the project needs on a fresh machine, idempotently:
# Debian tools used by tests and benches (when run as root), and .venv with the pinned packages.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v jbig2dec >/dev/null || missing+=(jbig2dec)
command -v pbmtojbg >/dev/null || missing+=(jbigkit-bin)
command -v tesseract >/dev/null || missing+=(tesseract-ocr)
command -v node >/dev/null || missing+=(nodejs)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)  # words drawn in tests/test_detect.py
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: please install the Debian packages: sudo apt-get install ${missing[*]}" >&2
  fi
fi

# The environment is rebuilt whenever constraints.txt changes.
if ! cmp -s constraints.txt .venv/.constraints 2>/dev/null; then
  rm -rf .venv
  python3 -m venv .venv
  pip=(.venv/bin/python -m pip install -q -c constraints.txt)
  "${pip[@]}" torch torchvision
  "${pip[@]}" -e ".[all,test]"
  # groundingdino-py pins old dependencies; install it alone (its code is pure Python), and
  # beside it the packages its inference code imports.
  "${pip[@]}" addict yapf timm
  "${pip[@]}" --no-deps --no-build-isolation groundingdino-py
  cp constraints.txt .venv/.constraints
fi
