#!/usr/bin/env bash
# Set up the project on a fresh machine, idempotently, into .venv with the pinned versions.
#   bash scripts/setup.sh core   the codec only (numpy, pillow, opencv, numba): what scripts/demo.sh needs
#   bash scripts/setup.sh        everything: the core, then torch, diffusers, the optional packages,
#                                pytest, and the Debian tools the tests and benches run (when root)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-full}
case $mode in core | full) ;; *) echo "usage: scripts/setup.sh [core|full]" >&2; exit 2 ;; esac

if [ "$mode" = full ]; then
  missing=()
  command -v jbig2dec >/dev/null || missing+=(jbig2dec)
  command -v pbmtojbg >/dev/null || missing+=(jbigkit-bin)
  command -v tesseract >/dev/null || missing+=(tesseract-ocr)
  command -v node >/dev/null || missing+=(nodejs)
  command -v chromium >/dev/null || missing+=(chromium)  # opens plic eval's HTML report in tests
  [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)  # words drawn in tests/test_detect.py
  if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "setup: please install the Debian packages: sudo apt-get install ${missing[*]}" >&2
    fi
  fi
fi

pip=(.venv/bin/python -m pip install -q -c constraints.txt)
# The environment is rebuilt whenever constraints.txt changes; the core goes in first.
if ! cmp -s constraints.txt .venv/.constraints 2>/dev/null; then
  rm -rf .venv
  python3 -m venv .venv
  "${pip[@]}" -e .
  cp constraints.txt .venv/.constraints
fi
if [ "$mode" = full ] && [ ! -e .venv/.full ]; then
  "${pip[@]}" torch torchvision
  "${pip[@]}" -e ".[all,test]"
  # groundingdino-py pins old dependencies; install it alone (its code is pure Python), and
  # beside it the packages its inference code imports.
  "${pip[@]}" addict yapf timm pycocotools
  "${pip[@]}" --no-deps --no-build-isolation groundingdino-py
  # BRISQUE reads only the trained SVR the brisque package ships; its code and pins are not used.
  "${pip[@]}" --no-deps brisque
  # ComfyUI's own requirements, for the tests that run the pack inside a real ComfyUI.
  "${pip[@]}" -r tests/comfyui-requirements.txt
  # comfy-cli, for `comfy node validate` (tests/test_registry.py): its pins agree with ours.
  "${pip[@]}" comfy-cli
  touch .venv/.full
fi
