#!/usr/bin/env bash
# Build a ComfyUI tree and its venv for the real-ComfyUI suites, outside the project.
#
#   tools/comfyui_venv.sh GIT_DIR REV DEST
#
# GIT_DIR is a fetched snapshot (DEVELOPERS.md: the search tool's `fetch`), REV its ref (HEAD, main,
# master ...). Writes DEST/ComfyUI (the tree) and DEST/venv (torch 2.14.1 CPU/GPU wheel as pip picks,
# the tree's requirements.txt without its torch lines, plus requests), then prints the one command
# that runs the suite against it. Never run inside the project: ComfyUI's code must not be committed.
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: tools/comfyui_venv.sh GIT_DIR REV DEST" >&2; exit 2; }
git_dir=$1; rev=$2; dest=$(realpath -m "$3")
here=$(cd "$(dirname "$0")/.." && pwd)
case "$dest/" in "$here"/*) echo "comfyui_venv: DEST must be outside the project ($here)" >&2; exit 2;; esac
extract=${EXTRACT_SNAPSHOT:-$here/../shared/tools/extract-snapshot}

[ -f "$dest/ComfyUI/comfy/model_patcher.py" ] || "$extract" "$git_dir" "$dest/ComfyUI" "$rev"
[ -x "$dest/venv/bin/python" ] || python3 -m venv "$dest/venv"
pip="$dest/venv/bin/python -m pip install -q"
torch_extra=""
grep -qx "torchaudio" "$dest/ComfyUI/requirements.txt" && torch_extra="torchaudio"
$pip torch==2.14.1 torchvision==0.29.1 $torch_extra
grep -vE '^(torch|torchvision|torchaudio)([<>=~ ].*)?$' "$dest/ComfyUI/requirements.txt" > "$dest/requirements-no-torch.txt"
$pip -r "$dest/requirements-no-torch.txt" requests
$pip -r "$here/requirements.txt" pytest  # as ComfyUI-Manager installs the pack, plus the test runner
version=$("$dest/venv/bin/python" -c "import sys; sys.path.insert(0, '$dest/ComfyUI'); import comfyui_version; print(comfyui_version.__version__)")
echo "ComfyUI $version ready. Run its suites with:"
echo "  make test-comfyui COMFYUI_PATH=$dest/ComfyUI COMFY_PYTHON=$dest/venv/bin/python"
