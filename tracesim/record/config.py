"""Where and what the engine-side recorder writes, read from the environment of the engine-core process.

vLLM spawns the engine core, so configuration travels through environment variables set before the engine
starts (``enable_engine_recording`` sets them for you):

``TRACESIM_RECORD_DIR``       output directory; recording is off when unset or empty
``TRACESIM_RECORD_TOKENS``    ``1``: also record sampled token ids and their logprobs in ``StepUpdated``, and one
                              ``SampleSettings`` per request (sampling parameters, ``logprobs_mode``, prompt ids)
                              at its admission, which ``tracesim parity`` recomputes from
``TRACESIM_RECORD_FLUSH_S``   seconds between writes (default 0.5): what a killed engine can lose at most
``TRACESIM_RECORD_RAW_IDS``   ``1``: keep vLLM's internal request ids (``<id>-<8 random chars>``) instead of
                              the ids the client passed, which the client-side records use
``TRACESIM_RECORD_CONVERT``   ``process`` (default): build and write records in a converter process
                              (``sidecar.py``), off the engine's GIL; ``thread``: on a thread of the engine
``TRACESIM_RECORD_REDUCE``    ``compact`` (default): per step only what changed, the update pass compiled
                              (``reduce.py``), msgspec on the pipe; ``legacy``: the reduction before issue 16
                              (``capture.plain``, msgpack's Packer), for comparison. Same trace either way
``TRACESIM_RECORD_CONVERTER_NICE``  niceness the converter process runs at above the engine's (default 10, 0 to
                              19): on contended cores it yields to the engine and catches up later, its backlog
                              bounded (``sidecar.py``); 0 runs it at the engine's priority
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SCHEDULER_CLS = "tracesim.record.scheduler.RecordingScheduler"

ENV_DIR = "TRACESIM_RECORD_DIR"
ENV_TOKENS = "TRACESIM_RECORD_TOKENS"
ENV_FLUSH_S = "TRACESIM_RECORD_FLUSH_S"
ENV_RAW_IDS = "TRACESIM_RECORD_RAW_IDS"
ENV_CONVERT = "TRACESIM_RECORD_CONVERT"
CONVERT_MODES = ("process", "thread")
ENV_REDUCE = "TRACESIM_RECORD_REDUCE"
REDUCE_MODES = ("compact", "legacy")
ENV_CONVERTER_NICE = "TRACESIM_RECORD_CONVERTER_NICE"
DEFAULT_CONVERTER_NICE = 10  # yields to the engine on contended cores, still gets ~10% of one against it


@dataclass(frozen=True)
class RecorderConfig:
    out_dir: str | None = None  # None: recording is off
    record_tokens: bool = False
    flush_interval_s: float = 0.5
    raw_ids: bool = False
    convert_in: str = "process"  # where records are built: "process" (converter process) or "thread"
    reduce: str = "compact"  # the engine side's per-step reduction: "compact" (reduce.py) or "legacy"
    converter_nice: int = DEFAULT_CONVERTER_NICE  # the converter process's niceness above the engine's

    @classmethod
    def from_env(cls, environ=None) -> "RecorderConfig":
        """Read the ``TRACESIM_RECORD_*`` variables; malformed values fall back to the defaults."""
        env = os.environ if environ is None else environ
        try:
            flush_s = float(env.get(ENV_FLUSH_S, "0.5"))
        except ValueError:
            flush_s = 0.5
        convert_in = env.get(ENV_CONVERT, "process")
        reduce = env.get(ENV_REDUCE, "compact")
        try:
            nice = int(env.get(ENV_CONVERTER_NICE, str(DEFAULT_CONVERTER_NICE)))
        except ValueError:
            nice = DEFAULT_CONVERTER_NICE
        return cls(out_dir=env.get(ENV_DIR) or None, record_tokens=env.get(ENV_TOKENS, "") == "1",
                   flush_interval_s=flush_s if flush_s > 0 else 0.5, raw_ids=env.get(ENV_RAW_IDS, "") == "1",
                   convert_in=convert_in if convert_in in CONVERT_MODES else "process",
                   reduce=reduce if reduce in REDUCE_MODES else "compact",
                   converter_nice=nice if 0 <= nice <= 19 else DEFAULT_CONVERTER_NICE)

    def engine_path(self, pid: int, dp_rank: int = 0) -> Path:
        """One file per engine-core process: ``engine-<pid>-dp<rank>.msgpack``."""
        return Path(self.out_dir or ".") / f"engine-{pid}-dp{dp_rank}.msgpack"


def enable_engine_recording(out_dir, *, record_tokens: bool = False, flush_interval_s: float = 0.5) -> dict:
    """Turn on engine-side recording for engines started after this call, in this process and its children.

    Creates ``out_dir``, sets the environment the spawned engine core reads, and returns the engine keyword
    arguments to pass on (``LLM(**kwargs)``, ``AsyncEngineArgs(**kwargs)``): ``{"scheduler_cls": ...}``.
    Never raises: if ``out_dir`` cannot be created the engine recorder warns once and generation goes on.
    """
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError:
        pass  # the engine-side sink reports it once, where it matters
    os.environ[ENV_DIR] = os.path.abspath(out_dir)
    os.environ[ENV_TOKENS] = "1" if record_tokens else "0"
    os.environ[ENV_FLUSH_S] = str(flush_interval_s)
    return {"scheduler_cls": SCHEDULER_CLS}
