"""The fingerprint of the weights a vLLM engine actually serves, computed by each worker where the weights live.

vLLM keeps weights in its own layout: the attention's q/k/v projections and the MLP's gate/up projections are
fused into one tensor each (``qkv_proj``, ``gate_up_proj``: the model's ``packed_modules_mapping``), and the
embedding and LM head are padded to a multiple of 64 rows. ``served_named_tensors`` undoes both (views, no
copy), so the engine's fingerprint compares with the trainer's, computed on the Hugging Face names and shapes it
sends. Not readable: the linear weights of vLLM's CPU build, which repacks them into oneDNN kernels after
loading and leaves empty parameters (``served_named_tensors`` raises rather than fingerprint nothing). Not
undone: tensor-parallel shards (each rank holds a part; its fingerprint matches a trainer that
fingerprints the same part), quantised weights, models whose engine names differ from the checkpoint's (a
``hf_to_vllm_mapper``).

Two ways to reach the workers from an offline ``LLM``:

* ``LLM(..., worker_extension_cls=EXTENSION)`` adds ``tracesim_weights_fingerprint`` to every worker, called
  by name through ``llm.collective_rpc`` (no pickled code crosses the process boundary);
* without it, ``llm.apply_model(served_fingerprint)``, which vLLM allows only with
  ``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` (the function is pickled).

``engine_fingerprints(llm)`` tries the first, then the second.
"""

from __future__ import annotations

from tracesim.record.fingerprint import fingerprint

EXTENSION = "tracesim.record.weights_rpc.FingerprintWorker"
RPC = "tracesim_weights_fingerprint"


def served_named_tensors(model) -> list:
    """``[(name, tensor)]`` of a vLLM model's parameters in the checkpoint's layout: fused projections split
    back into their parts (by the layer's ``output_sizes``), padded vocabulary rows cut off."""
    packed = getattr(model, "packed_modules_mapping", None) or {}
    out = []
    for mod_name, module in model.named_modules():
        leaf = mod_name.rsplit(".", 1)[-1]
        prefix = mod_name[: len(mod_name) - len(leaf)]
        for pname, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{pname}" if mod_name else pname
            if p.numel() == 0 and hasattr(module, "cpu_linear"):
                raise RuntimeError(f"cannot fingerprint {full}: vLLM's CPU build repacked it into a CPU GEMM kernel "
                                   "after loading and kept no readable copy of the weights")
            parts = packed.get(leaf)
            sizes = _split_sizes(module, p, parts)
            if sizes is not None:
                at = 0
                for sub, size in zip(parts, sizes):
                    out.append((f"{prefix}{sub}.{pname}", p.narrow(0, at, size)))
                    at += size
                continue
            org = getattr(module, "org_vocab_size", None)  # a vocabulary-parallel embedding or LM head
            if org is not None and p.dim() >= 1 and org < p.shape[0] == getattr(module, "num_embeddings_padded", -1):
                p = p.narrow(0, 0, org)  # whole (not sharded) and padded: the rows past the vocabulary are zeros
            out.append((full, p))
    return out


def _split_sizes(module, p, parts):
    """The row counts of a fused parameter's parts, or None when it is not one (or is split otherwise)."""
    if not parts or p.dim() < 1:
        return None
    for attr in ("output_partition_sizes", "output_sizes"):
        sizes = getattr(module, attr, None)
        if sizes and len(sizes) == len(parts) and sum(sizes) == p.shape[0]:
            return list(sizes)
    return None


def served_fingerprint(model) -> str:
    """The fingerprint of a vLLM model's weights as served (for ``llm.apply_model``)."""
    return fingerprint(served_named_tensors(model))


class FingerprintWorker:
    """A vLLM worker extension (``worker_extension_cls=EXTENSION``): each worker fingerprints its own
    weights and says which rank it is."""

    def tracesim_weights_fingerprint(self) -> list:
        return [int(getattr(self, "rank", 0)), served_fingerprint(self.get_model())]


def engine_fingerprints(llm) -> list:
    """``[(rank, fingerprint)]`` of the weights every worker of the offline ``LLM`` serves now.

    Raises RuntimeError when neither way to reach the workers is available (see the module docstring)."""
    try:
        return [(int(r), str(fp)) for r, fp in llm.collective_rpc(RPC)]
    except Exception as by_name:  # the extension is not installed: vLLM answers with its own error types
        try:
            return list(enumerate(llm.apply_model(served_fingerprint)))
        except Exception as by_code:
            raise RuntimeError(
                f"cannot fingerprint the engine's weights: start the LLM with worker_extension_cls={EXTENSION!r} "
                f"({type(by_name).__name__}: {by_name}), or set VLLM_ALLOW_INSECURE_SERIALIZATION=1 for "
                f"apply_model ({type(by_code).__name__}: {by_code})") from None
