"""What defines a sample's processed sampling distribution, read off a vLLM ``SamplingParams`` by attribute.

One reader for both sides (the engine recorder's ``capture.py`` and the client's ``rollout.py``), so the engine's
and the client's ``SampleSettings`` of one request can only differ where the parameters did. Nothing here
imports vllm; an attribute a vLLM lacks (or sets to None) takes vLLM's default, under which it is a no-op.
"""

from __future__ import annotations

# SampleSettings' numeric fields, in its order, with vLLM's no-op defaults and their types.
FIELDS = (("temperature", 1.0, float), ("top_k", 0, int), ("top_p", 1.0, float), ("min_p", 0.0, float),
          ("presence_penalty", 0.0, float), ("frequency_penalty", 0.0, float), ("repetition_penalty", 1.0, float))


def sampling_values(params) -> list:
    """``[temperature, top_k, top_p, min_p, presence, frequency, repetition]`` of ``params`` as plain numbers."""
    out = []
    for name, default, cast in FIELDS:
        value = getattr(params, name, None)
        out.append(default if value is None else cast(value))
    return out
