"""tracesim: record, replay, perturb and check vLLM V1 rollout traces for RL post-training."""

__version__ = "0.1.0"
