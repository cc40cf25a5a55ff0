"""Record live vLLM V1 engines (engine side) and the RL loop around them (client side).

This package is the only part of tracesim that imports vllm, and only in the modules that need it
(``scheduler``, ``standalone``, ``workload``): ``import tracesim.record`` works without vllm installed.

Engine side::

    from tracesim.record import enable_engine_recording
    llm = LLM(model, **enable_engine_recording("traces/run1"))    # or AsyncEngineArgs(..., **kwargs)

Client side: ``RolloutRecorder`` (see ``rollout.py`` and docs/recording.md).
"""

from tracesim.record.config import SCHEDULER_CLS, RecorderConfig, enable_engine_recording
from tracesim.record.rollout import RolloutRecorder, merge_run

__all__ = ["SCHEDULER_CLS", "RecorderConfig", "RolloutRecorder", "enable_engine_recording", "merge_run"]
