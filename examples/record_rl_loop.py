"""Record an RL loop around vLLM's AsyncLLM: the lines to add are marked `# tracesim`.

Runs on the CPU build of vLLM with a tiny dummy-weight model (a GPU user passes their own model instead):

    python examples/record_rl_loop.py out/run.msgpack
"""

import argparse
import asyncio
import os
import tempfile

from tracesim.record import RolloutRecorder, enable_engine_recording, merge_run  # tracesim
from tracesim.record.tinymodel import write_tiny_model


async def rl_loop(engine, rec: RolloutRecorder) -> None:
    from vllm import SamplingParams

    await rec.set_version_async(engine, 0)  # tracesim: vLLM labels weights str(0)
    prompt = [11, 12, 13, 14, 15, 16, 17, 18]
    for train_step in range(2):
        samples = []
        for g in range(2):
            rid = f"s{train_step}-g{g}"
            rec.submitted(rid, prompt, n=2, max_tokens=8)  # tracesim
            params = SamplingParams(n=2, max_tokens=8, detokenize=False)
            async for out in engine.generate({"prompt_token_ids": prompt}, params, request_id=rid):
                for sample_id, tokens in rec.output(out):  # tracesim: returns finished samples
                    reward = float(len(tokens))
                    rec.reward(sample_id, tokens, reward, version=rec.version, group_id=rid)  # tracesim
                    samples.append((sample_id, rid, rec.version, tokens, reward))
        rec.consumed(train_step, samples, trainer_version=rec.version)  # tracesim
        await rec.pause_async(engine, mode="abort", clear_cache=True)  # tracesim: was engine.pause_generation
        async with rec.weight_update(engine, rec.version + 1):  # tracesim: write weights inside
            await asyncio.sleep(0.01)
        await rec.resume_async(engine)  # tracesim: was engine.resume_generation


async def main(out_path: str) -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    work = tempfile.mkdtemp()
    kwargs = enable_engine_recording(os.path.join(work, "engine"))  # tracesim: before the engine starts
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(
        model=write_tiny_model(os.path.join(work, "model")), load_format="dummy", skip_tokenizer_init=True,
        dtype="float32", max_model_len=256, enforce_eager=True, **kwargs))
    client_path = os.path.join(work, "client.msgpack")
    try:
        with RolloutRecorder(client_path) as rec:  # tracesim
            await rl_loop(engine, rec)
        await asyncio.sleep(1.0)  # let the engine's recorder write its last flush window
    finally:
        engine.shutdown()
        del engine  # else AsyncLLM.__del__ shuts down again at interpreter exit and prints a TypeError
    trace = merge_run(client_path, os.path.join(work, "engine"), out_path)  # tracesim: one timeline
    print(f"wrote {out_path}: {trace.counts()}")


if __name__ == "__main__":  # vLLM spawns its engine core: keep the script import-safe
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    parser = argparse.ArgumentParser(description="Record a small RL loop around vLLM's AsyncLLM (CPU build).")
    parser.add_argument("out", nargs="?", default="run.msgpack", help="trace file to write (default: run.msgpack)")
    asyncio.run(main(parser.parse_args().out))
