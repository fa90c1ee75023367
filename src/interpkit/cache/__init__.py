"""Activation caching: selective in-memory caches and a streaming, resumable on-disk store.

* :func:`run` keeps only the activations asked for (sites, positions, dtype, device), with
  gradients of a metric on request, in an :class:`ActivationCache` whose residual-stream
  analyses (decomposition, stacked head results, logit lens, direct logit attribution) are
  correct on raw TransformerBridges.
* :func:`harvest` streams activations over a dataset to sharded safetensors files with a JSON
  manifest: bounded memory, atomic shards, resumable after a kill, data-parallel under torchrun.
* :class:`ActivationStore` reads such a store back, memory-mapped.

    >>> import interpkit as ik
    >>> model = ik.load_model("toy-induction")
    >>> cache = ik.cache.run(model, [[1, 2, 3, 1, 2]], sites=["L1.resid_pre"])
    >>> cache["L1.resid_pre"].shape
    torch.Size([1, 5, 128])
"""

from interpkit.cache._activation_cache import ActivationCache as ActivationCache
from interpkit.cache._errors import CacheError as CacheError
from interpkit.cache._errors import CacheWarning as CacheWarning
from interpkit.cache._harvest import harvest as harvest
from interpkit.cache._run import run as run
from interpkit.cache._store import ActivationStore as ActivationStore

__all__ = ["ActivationCache", "ActivationStore", "CacheError", "CacheWarning", "harvest", "run"]
