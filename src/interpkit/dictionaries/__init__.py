"""Sparse dictionaries: SAEs, transcoders and skip-transcoders on TransformerLens 4 models.

* :func:`train` fits a TopK / BatchTopK SAE, a transcoder or a skip-transcoder from a tensor or
  an activation store (:mod:`interpkit.cache`), streaming in bounded memory, resumable after a
  kill, data-parallel under torchrun;
* :class:`Dictionary` holds the weights (``encode``, ``decode``, ``W_enc``, ``W_dec``, ...) and
  :func:`load` / :meth:`Dictionary.save` read and write interpkit's, SAELens's, sparsify's and
  circuit-tracer's layouts; :func:`load_transcoders` reads a folder of per-layer transcoders;
* :func:`spliced` runs a model with dictionaries in place of the activations they reconstruct;
  their latents are sites for every engine (``ik.patch(model, task, "L12.mlp.latents")``,
  ``ik.attribute``, ``ik.cache.run``, probing) and, for dictionaries on MLP outputs, nodes of
  the edge graph (``build_graph(model, senders=splice.senders())``: :class:`LatentSenders`);
* :func:`evaluate` measures them (L0, FVU, dead and dense latents, CE loss recovered, KL, delta
  LM loss, shrinkage); :func:`dashboard` writes feature dashboards;
* :func:`build_corpus` builds an offline text corpus (Shakespeare, Milton, Python's stdlib).

    >>> import torch, interpkit as ik
    >>> d = ik.dictionaries.Dictionary.random(d_in=16, n_latents=64, k=4)
    >>> d.encode(torch.randn(2, 16)).shape
    torch.Size([2, 64])
"""

from interpkit.dictionaries._dashboard import dashboard as dashboard
from interpkit.dictionaries._dictionary import Dictionary as Dictionary
from interpkit.dictionaries._errors import DictionaryError as DictionaryError
from interpkit.dictionaries._evaluate import evaluate as evaluate
from interpkit.dictionaries._evaluate import report as report
from interpkit.dictionaries._formats import load as load
from interpkit.dictionaries._graph_kinds import LatentSenders as LatentSenders
from interpkit.dictionaries._graph_kinds import RestSenders as RestSenders
from interpkit.dictionaries._splice import Splice as Splice
from interpkit.dictionaries._splice import spliced as spliced
from interpkit.dictionaries._train import train as train
from interpkit.dictionaries._transcoders import load_transcoders as load_transcoders
from interpkit.dictionaries._transcoders import save_transcoders as save_transcoders
from interpkit.dictionaries.corpus import build_corpus as build_corpus

__all__ = [
    "Dictionary",
    "DictionaryError",
    "LatentSenders",
    "RestSenders",
    "Splice",
    "build_corpus",
    "dashboard",
    "evaluate",
    "load",
    "load_transcoders",
    "report",
    "save_transcoders",
    "spliced",
    "train",
]
