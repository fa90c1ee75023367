"""Text generation that matches the Hugging Face model token for token.

The bridge's own ``generate`` keeps an empty KV cache under transformers 5.x (transformers
passes ``cache=`` where the bridge reads ``past_key_values``) and its greedy text degenerates.
This loop keeps its own transformers ``DynamicCache``, passed as ``cache=`` (the keyword
transformers 5.x uses): one forward over the prompt, then one token at a time, and
:func:`repair_kv_cache` makes the bridge's attention components read that keyword.
``use_cache=False`` recomputes the whole sequence each step (slow, obviously correct, and the
path for models that are not transformers models, such as native toys).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interpkit.errors import TaskError

if TYPE_CHECKING:
    from interpkit.models._model import Model


def _next_token(logits: Any, temperature: float, top_k: int | None, generator: Any) -> Any:
    import torch

    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[..., 0]


def generate(
    model: Model,
    prompt: Any,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    seed: int | None,
    stop_at_eos: bool,
    use_cache: bool,
) -> Any:
    import torch

    as_text = isinstance(prompt, str)
    tokens = model.to_tokens(prompt) if as_text else model.check_tokens(prompt)
    if tokens.shape[0] != 1:
        raise TaskError(f"generate takes one prompt; got a batch of {tokens.shape[0]}")
    if max_new_tokens < 0:
        raise TaskError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=tokens.device).manual_seed(seed)
    eos = getattr(model.tokenizer, "eos_token_id", None) if model.tokenizer is not None else None
    out = tokens
    hf_config = getattr(getattr(model.bridge, "original_model", None), "config", None)
    cache = None
    if use_cache and hf_config is not None and hasattr(hf_config, "model_type"):
        from transformers import DynamicCache

        cache = DynamicCache(config=hf_config)
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            if out.shape[1] >= model.cfg.n_ctx:
                break
            if cache is not None:
                step_input = out if cache.get_seq_length() == 0 else out[:, -1:]
                logits = model.bridge(step_input, cache=cache, use_cache=True)
            else:
                logits = model.bridge(out)
            nxt = _next_token(logits[:, -1, :], temperature, top_k, generator)
            out = torch.cat([out, nxt[:, None].to(out.dtype)], dim=1)
            if stop_at_eos and eos is not None and int(nxt[0]) == eos:
                break
    if as_text:
        return model.tokenizer.decode(out[0].tolist())
    return out


def repair_kv_cache(bridge: Any) -> int:
    """Make the bridge's attention components read transformers 5.x's ``cache=`` keyword.

    The attention bridges look for ``past_key_values`` (or ``layer_past``); transformers 5.x
    passes the cache as ``cache``, so the cache is never extended and cached decoding attends to
    the newest token alone. Each attention component of *this* bridge gets an instance-level
    wrapper that forwards ``cache`` under the name the bridge reads; TransformerLens itself is
    left untouched. Returns the number of components repaired.
    """
    repaired = 0
    for module in bridge.modules():
        method = getattr(type(module), "_update_kv_cache", None)
        if method is None or "_update_kv_cache" in vars(module):
            continue

        def update(k: Any, v: Any, _module: Any = module, _method: Any = method, **kwargs: Any) -> Any:
            if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
                kwargs["past_key_values"] = kwargs["cache"]
            return _method(_module, k, v, **kwargs)

        module._update_kv_cache = update
        repaired += 1
    return repaired
