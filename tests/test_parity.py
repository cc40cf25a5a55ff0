"""Behaviour-logprob parity on a real vLLM engine (the CPU build) serving a tiny random Llama with real weights.

Two engines, one per ``logprobs_mode`` (an engine-wide setting), each records a few samples with the engine
recorder (``record_tokens``: SampleSettings and OutReq logprobs) and the client recorder (``record_logprobs``);
a "trainer" records behaviour logprobs. Then ``tracesim parity`` recomputes them from the checkpoint with
transformers and must name the right finding: (a) raw logprobs at temperature != 1, (b) a trainer whose lm_head
ran in bfloat16, (d) the mass a top-k support leaves out; and ``tracesim check`` flags the trainer's use of raw
numbers and the bf16 recompute from the trace alone.
"""

import gc
import json
import os
import time

import pytest

pytest.importorskip("vllm")
pytest.importorskip("transformers")

from tracesim.format import read_trace  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROMPTS = {"t07": [5, 6, 7, 8, 9], "t1": [11, 12, 13], "topk": [21, 22, 23, 24]}
MAX_TOKENS = 12
ENGINE_FLUSH_S = 0.25
LM_HEAD_SCALE = 30.0  # logits of tens of nats: a bf16 projection moves them by ~0.02 nats, far above fp32 noise


def _save_model(directory) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=1, num_key_value_heads=1,
                      head_dim=64, num_hidden_layers=2, vocab_size=512, max_position_embeddings=256,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, torch_dtype="float32")
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(LM_HEAD_SCALE)
    model.save_pretrained(directory, safe_serialization=True)
    return str(directory)


def _bf16_head_logprobs(model_dir, prompt, tokens) -> list:
    """What a trainer with an fp32 body and a bf16 lm_head computes for ``tokens`` (temperature 0.7)."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        hidden = model.model(torch.tensor([prompt + tokens])).last_hidden_state[0, len(prompt) - 1:-1]
        logits = model.lm_head.to(torch.bfloat16)(hidden.to(torch.bfloat16)).float() / 0.7
    return logits.log_softmax(-1).gather(1, torch.tensor(tokens)[:, None])[:, 0].tolist()


def _record(tmp, model_dir, mode: str, params_of: dict) -> tuple:
    """Run one engine with ``logprobs_mode=mode`` on ``params_of`` (name -> SamplingParams); return the merged
    trace path and the request ids, in ``params_of`` order. The trainer uses the returned logprobs as behaviour logprobs, except that sample ``t07`` of the
    processed run gets a bf16-lm_head recompute instead."""
    from vllm import LLM

    from tracesim.record import enable_engine_recording
    from tracesim.record.rollout import RolloutRecorder, merge_run

    engine_dir = tmp / f"engine-{mode}"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    try:
        llm = LLM(model=model_dir, skip_tokenizer_init=True, dtype="float32", max_model_len=128, max_num_seqs=4,
                  enforce_eager=True, logprobs_mode=mode,
                  **enable_engine_recording(engine_dir, record_tokens=True, flush_interval_s=ENGINE_FLUSH_S))
        names = list(params_of)
        outs = llm.generate([{"prompt_token_ids": PROMPTS[n]} for n in names], [params_of[n] for n in names])
        # Shutdown kills the engine core after a short timeout: let its recorder write its last window first
        time.sleep(0.3 + 2 * ENGINE_FLUSH_S)
        del llm
        gc.collect()
    finally:
        del os.environ["TRACESIM_RECORD_DIR"]
    client = tmp / f"client-{mode}.msgpack"
    with RolloutRecorder(client, record_logprobs=True, logprobs_mode=mode) as rec:
        for name, out in zip(names, outs):
            rec.submitted(out.request_id, PROMPTS[name], sampling_params=params_of[name])
            [(sid, tokens)] = rec.output(out)
            returned = [row[t].logprob for row, t in zip(out.outputs[0].logprobs, tokens)]
            behaviour = _bf16_head_logprobs(model_dir, PROMPTS[name], tokens) \
                if (mode, name) == ("processed_logprobs", "t07") else returned
            rec.trainer_logprobs(sid, tokens, behaviour, role="behaviour")
    merged = tmp / f"{mode}.msgpack"
    merge_run(client, engine_dir, merged)
    return str(merged), [o.request_id for o in outs]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from vllm import SamplingParams

    tmp = tmp_path_factory.mktemp("parity")
    model_dir = _save_model(tmp / "model")

    def params(**kw):
        return SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=0, detokenize=False, seed=None, **kw)

    raw, raw_ids = _record(tmp, model_dir, "raw_logprobs", {"t07": params(temperature=0.7), "t1": params()})
    processed, proc_ids = _record(tmp, model_dir, "processed_logprobs",
                                  {"t07": params(temperature=0.7), "topk": params(top_k=5)})
    return {"model": model_dir, "raw": raw, "processed": processed, "raw_ids": raw_ids, "proc_ids": proc_ids}


def _parity(capsys, *args) -> tuple:
    from tracesim.cli.main import main

    code = main(["parity", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def _findings(result) -> dict:
    out: dict = {}
    for v in result["violations"]:
        out.setdefault(v["req_id"], set()).add(v["invariant"])
    return out


def test_engine_and_client_record_settings_and_logprobs(run):
    from tracesim.format import SampleLogprobs, SampleSettings

    trace = read_trace(run["raw"])
    settings = {(s.side, s.req_id): s for s in trace.of(SampleSettings)}
    t07, t1 = run["raw_ids"]
    for side in ("engine", "client"):
        assert settings[(side, t07)].temperature == pytest.approx(0.7)
        assert settings[(side, t07)].logprobs_mode == "raw_logprobs"
        assert settings[(side, t1)].prompt_ids == tuple(PROMPTS["t1"])
    returned = [r for r in trace.of(SampleLogprobs) if r.role == "returned"]
    assert {r.req_id for r in returned} == {t07, t1}
    assert sum(len(r.token_ids) for r in returned if r.req_id == t07) == MAX_TOKENS


def test_parity_flags_raw_logprobs_at_temperature_07_and_passes_temperature_1(run, capsys):
    code, result = _parity(capsys, run["raw"], "--model", run["model"])
    t07, t1 = run["raw_ids"]
    assert code == 1
    found = _findings(result)
    assert found[t07] == {"parity_logprobs_processed"}  # (a), for the returned and the behaviour series
    assert t1 not in found  # temperature 1, no penalties/top-k/p: raw == processed
    by = {(s["req_id"], s["role"], s["source"]): s for s in result["series"]}
    assert by[(t07, "returned", "client")]["candidates"]["raw"] < 1e-3  # matches the raw recompute ...
    assert by[(t07, "returned", "client")]["mean_abs"] > 0.05  # ... and not the processed one
    assert by[(t1, "returned", "client")]["mean_abs"] < 1e-3


def test_parity_passes_processed_logprobs_and_flags_a_bf16_lm_head_trainer(run, capsys):
    code, result = _parity(capsys, run["processed"], "--model", run["model"])
    t07, topk = run["proc_ids"]
    assert code == 1
    by = {(s["req_id"], s["role"], s["source"]): s for s in result["series"]}
    for rid in (t07, topk):
        assert by[(rid, "returned", "client")]["mean_abs"] < 1e-3, rid  # the engine's processed numbers
        assert by[(rid, "returned", "engine")]["mean_abs"] < 1e-3, rid
    assert by[(t07, "behaviour", "trainer")]["finding"] == "parity_lm_head_precision"  # (b)
    assert by[(t07, "behaviour", "trainer")]["candidates"]["processed_alt"] < 1e-4
    assert "parity_logprobs_processed" not in {v["invariant"] for v in result["violations"]}


def test_parity_reports_mass_outside_a_top_k_support(run, capsys):
    _, result = _parity(capsys, run["processed"], "--model", run["model"])
    t07, topk = run["proc_ids"]
    found = _findings(result)
    assert "parity_truncated_support" in found[topk]  # (d): the numbers match, the support is truncated
    assert "parity_truncated_support" not in found.get(t07, set())
    by = {(s["req_id"], s["role"], s["source"]): s for s in result["series"]}
    assert by[(topk, "returned", "client")]["outside_mass_max"] > 0.01
    assert by[(t07, "returned", "client")]["outside_mass_max"] == 0


def test_flags_change_the_output(run, capsys):
    t07, _ = run["raw_ids"]
    code, loose = _parity(capsys, run["raw"], "--model", run["model"], "--tolerance", "5")
    assert code == 0 and not loose["violations"]
    _, version = _parity(capsys, run["raw"], "--model", run["model"], "--model-version", "7")
    # the engine never got a numeric version: its spans say -1, so every mismatch belongs to other weights
    assert _findings(version)[t07] == {"parity_tokens_from_model_version"}
    _, bf16 = _parity(capsys, run["processed"], "--model", run["model"], "--dtype", "bfloat16")
    _, bf16_head32 = _parity(capsys, run["processed"], "--model", run["model"], "--dtype", "bfloat16",
                             "--lm-head-fp32")
    assert (bf16["lm_head_dtype"], bf16_head32["lm_head_dtype"]) == ("bfloat16", "float32")
    assert bf16["tolerance"] == 0.05
    assert [s["mean_abs"] for s in bf16["series"]] != [s["mean_abs"] for s in bf16_head32["series"]]


def test_text_report_names_findings_like_check(run, capsys):
    from tracesim.cli.main import main

    assert main(["parity", run["raw"], "--model", run["model"]]) == 1
    text = capsys.readouterr().out
    assert "parity_logprobs_processed: " in text and "cause (" not in text.splitlines()[0]
    assert "overall" in text and "mean|Δ|" in text


def test_check_flags_raw_behaviour_logprobs_and_a_recomputing_trainer_from_the_trace_alone(run):
    from tracesim.check import check_trace

    raw = check_trace(read_trace(run["raw"]))
    t07, t1 = run["raw_ids"]
    assert [v.req_id for v in raw.violations if v.invariant == "logprobs_processed_as_trained"] == [t07]
    assert "behaviour_logprobs_match_returned" in raw.checked
    processed = check_trace(read_trace(run["processed"]))
    assert [v.req_id for v in processed.violations if v.invariant == "behaviour_logprobs_match_returned"] == \
        [run["proc_ids"][0]]
    assert "logprobs_processed_as_trained" in processed.checked
    assert not [v for v in processed.violations if v.invariant == "logprobs_processed_as_trained"]


def test_parity_without_logprobs_records_is_a_one_line_error(tmp_path, capsys):
    from pathlib import Path

    from tracesim.cli.main import main

    trace = Path(__file__).parent.parent / "traces" / "synthetic-small.msgpack"  # no logprobs records
    assert main(["parity", str(trace), "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no sample to compare" in err and str(trace) in err
