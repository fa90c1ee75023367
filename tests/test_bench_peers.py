"""``benchmarks/bench_peers.py`` on a tiny random Llama: every peer recipe agrees with interpkit.

The peers (nnsight, captum, pyvene) are benchmark-only dependencies (``pip install -e '.[bench]'``),
so without them this module is skipped. With them, each job runs once at the smallest sizes and
its own agreement check (which stops the job on a disagreement) must pass.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peer_recipes

pytestmark = pytest.mark.skipif(
    bool(peer_recipes.missing_peers()),
    reason=f"peer packages not installed ({', '.join(peer_recipes.missing_peers())}): pip install -e '.[bench]'",
)


@pytest.fixture(scope="module")
def bench():
    import bench_peers
    from transformers import LlamaConfig, LlamaForCausalLM

    import interpkit as ik
    from interpkit.models._load import wrap_hf_model
    from test_probing import word_tokenizer

    tokenizer = word_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4},
        tie_word_embeddings=True,
        architectures=["LlamaForCausalLM"],
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    hf = LlamaForCausalLM(config).eval()
    peer_hf = copy.deepcopy(hf)  # the bridge rewrites the model it wraps; the peers get the plain one
    model = wrap_hf_model(hf, tokenizer, spec="tiny-peers")
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(3, len(tokenizer), (4, 7), generator=gen)
    corrupt = clean.clone()
    corrupt[:, 2] = torch.randint(3, len(tokenizer), (4,), generator=gen)
    answer, wrong = torch.randint(3, len(tokenizer), (2, 4), generator=gen)
    task = ik.tasks.from_token_lists("tiny", model, clean.tolist(), corrupt.tolist(), answer.tolist(), wrong.tolist())
    args = bench_peers.parse(["--quick", "--layers", "0,1", "--das-layer", "1", "--das-steps", "2"])
    return bench_peers.Bench(model, peer_hf, task, args)


@pytest.mark.parametrize("job", ["resid", "heads", "atp", "ig", "das"])
def test_job_agrees_with_its_peer(bench, job, capsys):
    import bench_peers
    import bench_peers_das

    run = bench_peers_das.job_das if job == "das" else getattr(bench_peers, f"job_{job}")
    run(bench)  # raises SystemExit when interpkit and the peer disagree
    out = capsys.readouterr().out
    assert '"ok": true' in out and '"ok": false' not in out
    assert bench.table, "the job added no row to the table"


def test_agree_stops_on_a_disagreement():
    import bench_peers

    with pytest.raises(SystemExit, match="disagree"):
        bench_peers.agree("x", torch.zeros(3), torch.tensor([0.0, 0.0, 1e-3]), 5e-6)
