"""A tiny Llama model directory (``config.json`` only) that vLLM runs with ``load_format="dummy"``."""

from __future__ import annotations

import json
import os

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
    "intermediate_size": 256, "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 64,
    "num_hidden_layers": 2, "vocab_size": 512, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
    "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
}


def write_tiny_model(directory) -> str:
    """Write ``config.json`` of a 2-layer Llama (head size 64, vocab 512) into ``directory``; return its path."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(TINY_LLAMA, f, indent=1)
    return str(directory)
