"""The runtime: rows of patched forwards in memory-sized chunks, the primitive every engine runs on.

Activation patching, path patching, exact edges, circuits, the honesty checks and the probing
interventions all do the same thing: many forwards of the task's examples, each under a few
hooks, read at the answer position. This package is that thing, public so that engines of your
own get the same batching, memory handling and distribution:

* **chunks** (:mod:`._batch`): :func:`auto_rows` sizes a chunk from free memory and a token budget
  (``INTERPKIT_TOKENS_PER_FORWARD``); :class:`Batcher` halves a chunk that runs out of memory and
  keeps finished ones; :func:`sweep` runs segments of rows in chunks, shared between ranks under
  ``torchrun`` (bit-identical to one process);
* **forwards** (:mod:`._forward`): :func:`capture` (one forward, activations kept),
  :func:`forward_final` (from tokens or from the residual entering block k, to the answer
  position's logits; blocks below k are not computed), :func:`capture_from`;
* **rows** (:mod:`._rows`, :mod:`._baseline`): :class:`Rows` and :func:`metric_rows` (the metric of
  every row into a table), :func:`baseline` (the clean and corrupt runs, activations captured on the way);
* **the suffix forward** (:mod:`._suffix`, :mod:`._suffix_sweep`): :class:`SuffixRunner`, a
  functional forward that starts after a patched site (and, per position, at the patched
  position), checked once per model against the bridge; :func:`suffix_values` runs a plan's
  sweep on it where :func:`suffix_applies`, and :func:`entering` gives the stream a site's new
  value sends on (differentiable: ``SuffixRunner.run(..., grad=True)``);
* **patches** (:mod:`._plan`, :mod:`._sources`): :class:`Plan` / :func:`make_plan` / :func:`patch_mask`
  (which rows patch what), :func:`masked_patch_hook`, and the ablation sources (``zero``,
  ``mean``, ``resample``, ``counterfactual``) with :data:`DIRECTIONS`.

A custom engine: one segment of rows per layer, the patch as a hook.

    >>> import interpkit as ik, torch
    >>> from interpkit.runtime import Rows, baseline, metric_rows
    >>> model = ik.load_model("toy-induction")
    >>> task = ik.tasks.load("induction", model, n=4)
    >>> base = baseline(model, task, "logit_diff", clean_hooks=["blocks.1.hook_resid_pre"])
    >>> start = base["clean_acts"]["blocks.1.hook_resid_pre"]
    >>> def zero_head(h):                  # hooks for a chunk of rows: zero head h of layer 1
    ...     def hooks(a, b, ex):
    ...         def fn(act, hook):
    ...             act = act.clone()
    ...             act[:, :, h] = 0
    ...             return act
    ...         return [("blocks.1.attn.hook_z", fn)]
    ...     return hooks
    >>> out = torch.zeros(4, len(task))    # (head, example)
    >>> segments = [Rows(1, [h] * len(task), range(len(task)), start, zero_head(h)) for h in range(4)]
    >>> _ = metric_rows(model, task, segments, out, clean_logprobs=base["clean_logprobs"])
    >>> out.shape
    torch.Size([4, 4])
"""

from interpkit.batching import Batcher as Batcher
from interpkit.batching import auto_rows as auto_rows
from interpkit.batching import check_batch_size as check_batch_size
from interpkit.batching import free_memory_bytes as free_memory_bytes
from interpkit.batching import grad_rows as grad_rows
from interpkit.batching import is_oom as is_oom
from interpkit.batching import run_chunked as run_chunked
from interpkit.batching import sweep as sweep
from interpkit.errors import PatchingError as PatchingError
from interpkit.runtime._baseline import baseline as baseline
from interpkit.runtime._baseline import capture_final as capture_final
from interpkit.runtime._baseline import str_tokens as str_tokens
from interpkit.runtime._forward import StopForward as StopForward
from interpkit.runtime._forward import capture as capture
from interpkit.runtime._forward import capture_from as capture_from
from interpkit.runtime._forward import final_hook as final_hook
from interpkit.runtime._forward import forward_final as forward_final
from interpkit.runtime._forward import skipping_blocks as skipping_blocks
from interpkit.runtime._forward import skips_blocks as skips_blocks
from interpkit.runtime._forward import tail_is_exact as tail_is_exact
from interpkit.runtime._plan import HEAD_KINDS as HEAD_KINDS
from interpkit.runtime._plan import PATCH_SITES as PATCH_SITES
from interpkit.runtime._plan import Plan as Plan
from interpkit.runtime._plan import component_mask as component_mask
from interpkit.runtime._plan import latent_point as latent_point
from interpkit.runtime._plan import make_plan as make_plan
from interpkit.runtime._plan import masked_patch_hook as masked_patch_hook
from interpkit.runtime._plan import patch_mask as patch_mask
from interpkit.runtime._rows import Rows as Rows
from interpkit.runtime._rows import grid_rows as grid_rows
from interpkit.runtime._rows import metric_rows as metric_rows
from interpkit.runtime._sources import ABLATIONS as ABLATIONS
from interpkit.runtime._sources import DEFAULT_ABLATION as DEFAULT_ABLATION
from interpkit.runtime._sources import DEFAULT_DIRECTION as DEFAULT_DIRECTION
from interpkit.runtime._sources import DIRECTIONS as DIRECTIONS
from interpkit.runtime._sources import ablation_source as ablation_source
from interpkit.runtime._sources import check_mode as check_mode
from interpkit.runtime._sources import default_ablation as default_ablation
from interpkit.runtime._sources import default_direction as default_direction
from interpkit.runtime._sources import derangement as derangement
from interpkit.runtime._sources import mean_activation as mean_activation
from interpkit.runtime._suffix import SuffixRunner as SuffixRunner
from interpkit.runtime._suffix_parts import SuffixUnsupported as SuffixUnsupported
from interpkit.runtime._suffix_sweep import answer_columns as answer_columns
from interpkit.runtime._suffix_sweep import entering as entering
from interpkit.runtime._suffix_sweep import first_block as first_block
from interpkit.runtime._suffix_sweep import metric_of as metric_of
from interpkit.runtime._suffix_sweep import suffix_applies as suffix_applies
from interpkit.runtime._suffix_sweep import suffix_hooks as suffix_hooks
from interpkit.runtime._suffix_sweep import suffix_site as suffix_site
from interpkit.runtime._suffix_sweep import suffix_values as suffix_values

__all__ = [
    "ABLATIONS",
    "DEFAULT_ABLATION",
    "DEFAULT_DIRECTION",
    "DIRECTIONS",
    "HEAD_KINDS",
    "PATCH_SITES",
    "Batcher",
    "PatchingError",
    "Plan",
    "Rows",
    "StopForward",
    "SuffixRunner",
    "SuffixUnsupported",
    "ablation_source",
    "answer_columns",
    "auto_rows",
    "baseline",
    "capture",
    "capture_final",
    "capture_from",
    "check_batch_size",
    "check_mode",
    "component_mask",
    "default_ablation",
    "default_direction",
    "derangement",
    "entering",
    "final_hook",
    "first_block",
    "forward_final",
    "free_memory_bytes",
    "grad_rows",
    "grid_rows",
    "is_oom",
    "latent_point",
    "make_plan",
    "masked_patch_hook",
    "mean_activation",
    "metric_of",
    "metric_rows",
    "patch_mask",
    "run_chunked",
    "skipping_blocks",
    "skips_blocks",
    "str_tokens",
    "suffix_applies",
    "suffix_hooks",
    "suffix_site",
    "suffix_values",
    "sweep",
    "tail_is_exact",
]
