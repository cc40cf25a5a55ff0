"""Recompute, with torch and the HF checkpoint, the logprobs a sample's tokens had under every candidate meaning.

The model's body runs once per sample (batched, right-padded: a causal model's earlier positions never see the
padding); the final projection (``lm_head``) runs twice on the same hidden states, once in the precision asked
for and once in the other one (bfloat16 <-> float32), because that one matmul's precision is what moved the
numbers in the migration this was built for. For each precision the candidates are: raw (log-softmax of the
logits), processed (vLLM's sampler, ``processing.py``), and untruncated (processed before min-p/top-k/top-p), plus
the probability mass outside the processed support. Only the values at the sampled tokens are kept.

transformers and torch are imported here, lazily: ``import tracesim`` works without them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from tracesim.inputs import InputError
from tracesim.parity import processing

DTYPES = ("float32", "bfloat16")
TOKENS_PER_BATCH = 8192  # prompt + output tokens in one forward batch: bounds activation memory, not accuracy


@dataclass
class Recomputed:
    """Per output position (from 0) of one sample, values at its sampled token (floats)."""

    raw: list
    processed: list
    untruncated: list
    raw_alt: list  # the same under the other lm_head precision
    processed_alt: list
    outside_mass: list  # probability outside the engine's support (0 without truncation)


@dataclass
class Model:
    body: object  # the decoder: input ids -> last hidden states
    head: object  # lm_head in the precision asked for
    head_alt: object  # lm_head in the other precision
    head_dtype: str
    alt_dtype: str
    vocab: int


def load_model(model_dir: str, dtype: str = "float32", lm_head_fp32: bool = False) -> Model:
    """The checkpoint in ``model_dir`` with its body in ``dtype`` and its lm_head in ``dtype`` (float32 with
    ``lm_head_fp32``). Raises InputError naming the directory when transformers cannot load it."""
    if dtype not in DTYPES:
        raise InputError(f"--dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as exc:
        raise InputError(f"tracesim parity needs torch and transformers installed ({exc})") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{model_dir}: cannot load the model with transformers: {str(exc).splitlines()[0]}") from None
    model.eval()
    head = model.get_output_embeddings()
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    body.to(getattr(torch, dtype))
    head_dtype = "float32" if lm_head_fp32 else dtype
    alt_dtype = "bfloat16" if head_dtype == "float32" else "float32"
    import copy

    head_alt = copy.deepcopy(head).to(getattr(torch, alt_dtype))
    head.to(getattr(torch, head_dtype))
    return Model(body, head, head_alt, head_dtype, alt_dtype, int(head.weight.shape[0]))


def _batches(samples: list) -> list:
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].prompt_ids) + len(samples[i].output_ids))
    batches, cur, longest = [], [], 0
    for i in order:
        n = len(samples[i].prompt_ids) + len(samples[i].output_ids)
        if cur and max(longest, n) * (len(cur) + 1) > TOKENS_PER_BATCH:
            batches.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        batches.append(cur)
    return batches


def recompute(model: Model, samples: list, progress: bool = True) -> list:
    """``Recomputed`` for each of ``samples`` (``samples.Sample``), in their order; a tqdm bar on stderr."""
    import torch

    results: list = [None] * len(samples)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(samples), desc="parity", unit=" sample", file=sys.stderr, leave=False)
    with torch.no_grad():
        for batch in _batches(samples):
            seqs = [samples[i].prompt_ids + samples[i].output_ids for i in batch]
            width = max(map(len, seqs))
            ids = torch.zeros(len(seqs), width, dtype=torch.long)
            mask = torch.zeros(len(seqs), width, dtype=torch.long)
            for row, seq in enumerate(seqs):
                ids[row, :len(seq)] = torch.as_tensor(seq, dtype=torch.long)
                mask[row, :len(seq)] = 1
            hidden = model.body(input_ids=ids, attention_mask=mask).last_hidden_state
            for row, i in enumerate(batch):
                results[i] = _one(torch, model, samples[i], hidden[row])
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    return results


def _one(torch, model: Model, sample, hidden) -> Recomputed:
    n_prompt, n_out = len(sample.prompt_ids), len(sample.output_ids)
    if n_out == 0:
        return Recomputed([], [], [], [], [], [])
    h = hidden[n_prompt - 1:n_prompt - 1 + n_out]  # position t's logits predict output token t
    tokens = torch.as_tensor(sample.output_ids, dtype=torch.long).clamp(0, model.vocab - 1)[:, None]
    values = {}
    for name, head in (("", model.head), ("_alt", model.head_alt)):
        # vLLM's logits come out of the projection in its dtype; the sampler then works in float32
        logits = head(h.to(head.weight.dtype)).float()
        raw = logits.log_softmax(-1)
        processed, untruncated, outside = processing.processed_logprobs(
            torch, logits, sample.settings, sample.prompt_ids, sample.output_ids)
        values["raw" + name] = raw.gather(1, tokens)[:, 0].tolist()
        values["processed" + name] = processed.gather(1, tokens)[:, 0].tolist()
        if not name:
            values["untruncated"] = untruncated.gather(1, tokens)[:, 0].tolist()
            values["outside_mass"] = outside.tolist()
    return Recomputed(**values)
