"""vLLM's sampler, step by step, on one sample's logits: what "processed" logprobs are (vllm/v1/sample/sampler.py).

Order, as vLLM 0.32's ``Sampler.forward`` applies it: raw logprobs are the log-softmax of the model's logits (in
float32); then the logits go to float32, penalties apply (repetition over prompt and earlier output tokens, then
frequency and presence over earlier output tokens, OpenAI's definitions), then temperature (a greedy request,
temperature < 1e-5, skips it and every later step), then min-p, then top-k, then top-p; the processed logprobs are
the log-softmax of what is left (masked tokens at -inf). Logit bias, bad words, allowed ids and min-tokens are not
recorded, so they are not applied (docs/parity.md says so).

Every function takes the logits of one sample's output positions, ``[positions, vocab]`` float32, and returns new
tensors; torch is imported by the caller (``recompute.py``), never at tracesim's import.
"""

from __future__ import annotations

SAMPLING_EPS = 1e-5  # vLLM's _SAMPLING_EPS: below it a temperature means greedy


def is_greedy(settings) -> bool:
    return settings.temperature < SAMPLING_EPS


def truncates(settings) -> bool:
    """Whether the settings cut the processed distribution's support (min-p, top-k, top-p)."""
    return not is_greedy(settings) and (settings.min_p > 0 or settings.top_k > 0 or settings.top_p < 1.0)


def changes_distribution(settings) -> bool:
    """Whether processed logprobs can differ from raw ones under these settings."""
    return (abs(settings.temperature - 1.0) > SAMPLING_EPS and not is_greedy(settings)) or truncates(settings) \
        or settings.presence_penalty != 0 or settings.frequency_penalty != 0 or settings.repetition_penalty != 1.0


def penalised(torch, logits, settings, prompt_ids, output_ids):
    """Logits after vLLM's penalties; row ``t`` sees the prompt and the output tokens before position ``t``."""
    rep, freq, pres = settings.repetition_penalty, settings.frequency_penalty, settings.presence_penalty
    if rep == 1.0 and freq == 0 and pres == 0:
        return logits
    n, vocab = logits.shape
    onehot = torch.zeros(n, vocab, dtype=torch.float32)
    if n > 1:
        onehot[torch.arange(1, n), torch.as_tensor(output_ids[:n - 1], dtype=torch.long)] = 1.0
    counts = onehot.cumsum(0)  # output tokens before each position
    out_mask = counts > 0
    logits = logits.clone()
    if rep != 1.0:
        prompt_mask = torch.zeros(vocab, dtype=torch.bool)
        prompt_mask[torch.as_tensor([t for t in prompt_ids if 0 <= t < vocab], dtype=torch.long)] = True
        hit = out_mask | prompt_mask
        scale = torch.where(logits > 0, 1.0 / rep, rep)
        logits = torch.where(hit, logits * scale, logits)
    return logits - freq * counts - pres * out_mask.float()


def support_mask(torch, scaled, settings):
    """Tokens the engine may sample from ``scaled`` (logits after temperature): min-p, then top-k, then top-p,
    as vLLM masks them (ties at the k-th value are kept; top-p keeps at least the most likely token)."""
    keep = torch.ones_like(scaled, dtype=torch.bool)
    logits = scaled
    if settings.min_p > 0:
        probs = logits.softmax(-1)
        keep &= probs >= probs.amax(-1, keepdim=True) * settings.min_p
        logits = logits.masked_fill(~keep, float("-inf"))
    vocab = logits.shape[-1]
    if 0 < settings.top_k < vocab:
        kth = logits.topk(settings.top_k, dim=-1).values[:, -1:]
        keep &= logits >= kth
        logits = logits.masked_fill(~keep, float("-inf"))
    if settings.top_p < 1.0:
        sorted_logits, idx = logits.sort(dim=-1, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum <= 1 - settings.top_p
        drop[:, -1] = False
        keep &= ~torch.zeros_like(drop).scatter(-1, idx, drop)
    return keep


def processed_logprobs(torch, logits, settings, prompt_ids, output_ids):
    """``(processed, untruncated, outside_mass)`` for each position's full vocabulary.

    ``processed``: vLLM's processed logprobs. ``untruncated``: the same distribution before min-p/top-k/top-p
    (penalties and temperature only), what a trainer computing full-vocabulary logprobs at the sampling
    temperature holds. ``outside_mass``: per position, the probability of ``untruncated`` outside the engine's
    support (0 without truncation); for a token in the support ``processed = untruncated - log(1 - mass)``."""
    logits = penalised(torch, logits.float(), settings, prompt_ids, output_ids)
    if is_greedy(settings):  # vLLM's all-greedy path: penalties only
        lp = logits.log_softmax(-1)
        return lp, lp, torch.zeros(logits.shape[0])
    scaled = logits / settings.temperature
    untruncated = scaled.log_softmax(-1)
    if not truncates(settings):
        return untruncated, untruncated, torch.zeros(logits.shape[0])
    keep = support_mask(torch, scaled, settings)
    processed = scaled.masked_fill(~keep, float("-inf")).log_softmax(-1)
    outside = (untruncated.exp() * (~keep)).sum(-1).clamp(0.0, 1.0)
    return processed, untruncated, outside
