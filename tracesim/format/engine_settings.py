"""The header's engine configuration: one key vocabulary for recorded, simulated and synthetic traces.

``Header.engine_config`` is an ``EngineSettings``: an immutable mapping (a ``dict`` that refuses changes, so it
packs, prints and compares as one) whose known keys have types, checked when a trace is read or a header is
made, and a named attribute each (``settings.enable_chunked_prefill``; None when the trace does not say).
Keys are vLLM's names where the setting is vLLM's; the simulator's own settings carry their units.

Older traces used other names for three settings; they are read under the names below (``ALIASES``).
Keys this version does not know (a newer tracesim's, a user's own) are kept as they are.
"""

from __future__ import annotations

import numbers

from tracesim.format.errors import FieldError

_INT, _BOOL, _STR, _FLOAT = (int,), (bool,), (str,), (float, int)

# key -> (accepted types, meaning). The order is the order `tracesim info` prints them in.
FIELDS: dict = {
    # the engine (vLLM's names; recorded from the running engine, or the simulated engine's equivalents)
    "scheduler": (_STR, 'vLLM scheduler class: "Scheduler" or "AsyncScheduler"'),
    "async_scheduling": (_BOOL, "async scheduling: output placeholders, steps scheduled ahead of their update"),
    "max_num_seqs": (_INT, "running requests at most"),
    "max_num_batched_tokens": (_INT, "token budget per step"),
    "enable_chunked_prefill": (_BOOL, "prompts may be prefilled over several steps"),
    "enable_prefix_caching": (_BOOL, "prefix caching of full prompt blocks"),
    "block_size": (_INT, "tokens per KV block"),
    "num_gpu_blocks": (_INT, "KV blocks (vLLM's null block included)"),
    "scheduler_reserve_full_isl": (_BOOL, "admit only when the whole sequence fits in KV"),
    "watermark": (_FLOAT, "fraction of KV blocks kept free when admitting while others run"),
    "long_prefill_token_threshold": (_INT, "cap on one request's prefill chunk (0: none)"),
    "max_concurrent_batches": (_INT, "batches in flight in the engine core (2: step_with_batch_queue)"),
    "data_parallel_size": (_INT, "data-parallel engine cores"),
    "model": (_STR, "model name or path"),
    "max_model_len": (_INT, "context length limit in tokens"),
    "vllm_version": (_STR, "version of the recorded vLLM"),
    "weight_version": ((int, str, type(None)), "policy version of the weights loaded at start"),
    # the simulated engine (tracesim.sim.scenario.EngineConfig)
    "scheduler_backend": (_STR, 'simulator scheduler: "native" or "vllm" (vLLM\'s own, in virtual time)'),
    "discard_stale_frames": (_BOOL, "a stale output frame is discarded (false: applied to the new incarnation)"),
    "sched_us": (_INT, "schedule() cost"),
    "update_us": (_INT, "update_from_output() cost"),
    "step_gap_us": (_INT, "engine-core overhead between an update and the next schedule"),
    "output_latency_us": (_INT, "engine core -> client transport of one output frame"),
    "add_latency_us": (_INT, "client -> engine core transport of one request"),
    # the RL loop around the engine, where a source states it
    "pause_mode": (_STR, 'weight-update pause mode: "abort", "wait" or "keep"'),
    "clear_cache": (_BOOL, "the weight-update pause clears the prefix cache"),
    "workload": ((dict,), "the built-in recording workload's settings"),
}

# Names older traces used -> the name above (recorded: chunked_prefill; simulated: reserve_full_sequence;
# synthetic: token_budget).
ALIASES: dict = {
    "chunked_prefill": "enable_chunked_prefill",
    "reserve_full_sequence": "scheduler_reserve_full_isl",
    "token_budget": "max_num_batched_tokens",
}


def _refuse(*_args, **_kw):
    raise TypeError("EngineSettings is immutable: build a new one (EngineSettings({**old, key: value}))")


class EngineSettings(dict):
    """The engine configuration of a trace (see the module docstring); ``EngineSettings(mapping)`` maps old
    key names and checks the known keys' types, raising ``FieldError`` (``engine_config.KEY``)."""

    __slots__ = ()

    def __init__(self, mapping=(), path: str = "engine_config", *, coerce: bool = False):
        """``coerce``: take numbers of other types (numpy, IntEnum) as the int or float a known key wants, as
        a writer does with what an engine reports; a reader checks exact types."""
        items = dict(mapping)
        canonical: dict = {}
        for key, value in items.items():
            name = ALIASES.get(key, key)
            if name in canonical and canonical[name] != value:
                raise FieldError(f"{path}.{key}", f"{key!r} and {name!r} give different values ({value!r}, "
                                 f"{canonical[name]!r})")
            canonical[name] = value
        for key, value in canonical.items():
            spec = FIELDS.get(key)
            if spec is None or value is None:  # unknown keys are kept as they are; None: the source did not know
                continue
            if coerce and type(value) not in spec[0] and isinstance(value, numbers.Number) \
                    and not isinstance(value, bool):
                value = canonical[key] = (int if spec[0] is _INT else float if spec[0] is _FLOAT else type(value))(value)
            if type(value) not in spec[0]:
                raise FieldError(f"{path}.{key}", f"expected {_names(spec[0])}, got {type(value).__name__}")
            if spec[0] is _FLOAT and type(value) is int:
                canonical[key] = float(value)
        dict.__init__(self, canonical)

    def __getattr__(self, name: str):
        if name in FIELDS:
            return dict.get(self, name)
        raise AttributeError(f"EngineSettings has no setting {name!r} (known: {', '.join(FIELDS)})")

    def __reduce__(self):  # pickle / copy build it anew (item assignment is refused)
        return (EngineSettings, (dict(self),))

    def __repr__(self) -> str:
        return f"EngineSettings({dict.__repr__(self)})"

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def extras(self) -> dict:
        """The keys this version does not know, kept as they were."""
        return {k: v for k, v in self.items() if k not in FIELDS}


def _names(types: tuple) -> str:
    return " or ".join(sorted({"null" if t is type(None) else t.__name__ for t in types}))


__all__ = ["ALIASES", "FIELDS", "EngineSettings"]
