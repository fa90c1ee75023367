"""Oracle: sparsify's own ``SparseCoder`` on the same weights gives the same latents and outputs (1e-6).

sparsify (``eai-sparsify``, EleutherAI) installs without TransformerLens; it is a test-only
dependency (the ``dev`` and ``oracle`` extras). Without it these tests skip and say so.
"""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

from interpkit.dictionaries import Dictionary, load

with contextlib.redirect_stdout(io.StringIO()):  # it prints which sparse decoder it uses
    sparsify = pytest.importorskip(
        "sparsify", reason="sparsify (eai-sparsify) is not installed: pip install -e '.[oracle]'"
    )


def _ours(kind: str, seed: int = 0) -> Dictionary:
    d = Dictionary.random(d_in=24, n_latents=96, k=7, kind=kind, d_out=24, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    fields = {"b_enc": torch.randn(96, generator=g) * 0.2, "b_dec": torch.randn(24, generator=g)}
    if kind == "skip_transcoder":
        fields["W_skip"] = torch.randn(24, 24, generator=g) * 0.1
    return d.replace(**fields)


@pytest.mark.parametrize("kind", ["sae", "transcoder", "skip_transcoder"])
def test_forward_equals_sparsify_sparse_coder(tmp_path, kind):
    ours = _ours(kind)
    ours.save(tmp_path / "coder", format="sparsify")
    theirs = sparsify.SparseCoder.load_from_disk(tmp_path / "coder")
    x = torch.randn(50, 24)
    with torch.no_grad():
        top_acts, top_indices, _ = theirs.encode(x)
        dense = torch.zeros(50, 96).scatter(-1, top_indices, top_acts)
        torch.testing.assert_close(ours.encode(x), dense, rtol=0, atol=1e-6)
        out = theirs.decode(top_acts, top_indices)
        if theirs.W_skip is not None:
            out = out + x @ theirs.W_skip.mT
        torch.testing.assert_close(ours(x), out, rtol=0, atol=1e-6)
        torch.testing.assert_close(ours(x), theirs(x).sae_out, rtol=0, atol=1e-6)


def test_sparsify_saved_coder_loads_and_agrees(tmp_path):
    cfg = sparsify.SparseCoderConfig(num_latents=64, k=5, transcode=False)
    torch.manual_seed(0)
    theirs = sparsify.SparseCoder(16, cfg)
    with torch.no_grad():
        theirs.b_dec.normal_()
        theirs.encoder.bias.normal_()
    theirs.save_to_disk(tmp_path / "layers.3")
    ours = load(tmp_path / "layers.3")
    assert (ours.kind, ours.k, ours.input_site, ours.center_input) == ("sae", 5, "L3.resid_post", True)
    x = torch.randn(30, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x).sae_out, rtol=0, atol=1e-6)
