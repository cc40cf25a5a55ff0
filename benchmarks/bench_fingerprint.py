"""Cost of the slices-v1 weight fingerprint on a real model size.

Builds, in memory, random tensors with the names and shapes of Qwen2-1.5B (28 layers, hidden 1536, MLP 8960,
12 query and 2 key/value heads of 128, vocabulary 151,936, tied embeddings: 1.54 B parameters) in bfloat16,
then times in the same run:

* ``fingerprint`` (``tracesim/record/fingerprint.py``) of all of them;
* the baseline: a full-content hash (BLAKE2b over every byte of every tensor), what a fingerprint that sees
  every element costs; and ``torch.save`` of the state dict into memory (what a trainer already pays to
  publish a checkpoint).

Each is the best of ``--repeat`` runs. ``--layers`` shrinks the model (memory: 2 bytes per parameter).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_fingerprint.py [--layers 28] [--repeat 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import time


def qwen2_1p5b_shapes(layers: int) -> dict:
    h, mlp, heads, kv_heads, head_dim, vocab = 1536, 8960, 12, 2, 128, 151936
    shapes = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (heads * head_dim, h), p + "self_attn.q_proj.bias": (heads * head_dim,),
            p + "self_attn.k_proj.weight": (kv_heads * head_dim, h), p + "self_attn.k_proj.bias": (kv_heads * head_dim,),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, h), p + "self_attn.v_proj.bias": (kv_heads * head_dim,),
            p + "self_attn.o_proj.weight": (h, heads * head_dim),
            p + "mlp.gate_proj.weight": (mlp, h), p + "mlp.up_proj.weight": (mlp, h), p + "mlp.down_proj.weight": (h, mlp),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
        })
    return shapes


def full_hash(named) -> str:
    import torch

    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(named.items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy().data)
    return h.hexdigest()


def torch_save(named) -> int:
    import torch

    buf = io.BytesIO()
    torch.save(named, buf)
    return buf.tell()


def best_ms(fn, arg, repeat: int, sync) -> float:
    best = float("inf")
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn(arg)
        sync()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main(argv=None) -> None:
    import torch

    from tracesim.record.fingerprint import fingerprint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-save", action="store_true", help="skip the torch.save baseline (needs 2x the memory)")
    args = ap.parse_args(argv)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    g = torch.Generator(device=args.device).manual_seed(0)
    named = {n: torch.empty(s, dtype=torch.bfloat16, device=args.device).uniform_(-0.05, 0.05, generator=g)
             for n, s in qwen2_1p5b_shapes(args.layers).items()}
    params = sum(t.numel() for t in named.values())
    print(f"{len(named)} tensors, {params / 1e9:.3f} B parameters, {params * 2 / 2**30:.2f} GiB bf16 on {args.device}")
    fp_ms = best_ms(fingerprint, named, args.repeat, sync)
    full_ms = best_ms(full_hash, named, args.repeat, sync)
    print(f"  fingerprint (slices-v1)      {fp_ms:10.1f} ms")
    print(f"  full-content BLAKE2b         {full_ms:10.1f} ms   fingerprint = {fp_ms / full_ms:.4f}x")
    if not args.no_save:
        save_ms = best_ms(torch_save, named, args.repeat, sync)
        print(f"  torch.save to memory         {save_ms:10.1f} ms   fingerprint = {fp_ms / save_ms:.4f}x")


if __name__ == "__main__":
    main()
