#!/usr/bin/env bash
# Set up the light core environment (scripts/setup.sh core), then compress the built-in example image and show what was stored.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh core
out=${1:-out/demo}
.venv/bin/plic encode plic/data/example.png -o "$out" --prompt "portrait of a smiling female astronaut in a white spacesuit, american flag behind her" --overwrite
.venv/bin/plic info "$out/example.plic"
.venv/bin/plic export "$out/example.plic" -o "$out/example" --overwrite
.venv/bin/plic preview "$out/example.plic" -o "$out/example_preview.png" --overwrite
echo "demo: parts in $out/example/, overview in $out/example_preview.png"
