"""Weight fingerprints on a real vLLM engine (the CPU build): a tiny random Llama with real weights is served,
the trainer publishes new versions and pushes them into the engine as RL frameworks' weight sync does
(``collective_rpc`` loading the tensors into the model); the engine fingerprints what it serves.

A correct sync is clean; a sync that forgets to load, and weights reloaded from disk after a sync, break
``served_weights_match_published``. One engine start (tens of seconds on the CPU) serves the module.
"""

import os

import pytest

pytest.importorskip("vllm")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tracesim.check import check_trace  # noqa: E402
from tracesim.check.fingerprint import SERVED  # noqa: E402
from tracesim.format import WeightsFingerprint, read_trace  # noqa: E402
from tracesim.record import RolloutRecorder  # noqa: E402
from tracesim.record.fingerprint import METHOD, fingerprint  # noqa: E402
from tracesim.record.weights_rpc import EXTENSION, served_named_tensors  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

# vocabulary 500: vLLM pads the embedding and LM head to 512 rows, which the engine's fingerprint cuts off
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
            num_hidden_layers=2, vocab_size=500, max_position_embeddings=512, rms_norm_eps=1e-5,
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)


def _load_file(worker, path):
    """Runs in the worker: load a safetensors payload into the served model (vLLM maps the checkpoint's
    names onto its fused parameters)."""
    from safetensors.torch import load_file

    worker.get_model().load_weights(iter(load_file(path).items()))


def _unpack_cpu_linears(worker, path) -> None:
    """Runs in the worker. vLLM's CPU build repacks every linear layer's weight into a oneDNN kernel after
    loading and leaves an empty parameter behind (``dispatch_cpu_unquantized_gemm``), so its weights can
    neither be read nor loaded again (its own ``reload_weights`` fails on them). Give each layer back a plain
    weight, computed with ``F.linear`` as vLLM's own fallback does, and load the checkpoint into it: the engine
    then serves readable, updatable weights as it does on a GPU."""
    import torch.nn.functional as F
    from safetensors.torch import load_file
    from vllm.model_executor.layers.linear import LinearBase
    from vllm.model_executor.utils import set_weight_attrs

    model = worker.get_model()
    for mod in model.modules():
        if isinstance(mod, LinearBase) and mod.weight.numel() == 0:
            w = torch.nn.Parameter(torch.empty(mod.output_size_per_partition, mod.input_size_per_partition,
                                               dtype=mod.weight.dtype), requires_grad=False)
            set_weight_attrs(w, {"input_dim": 1, "output_dim": 0, "weight_loader": mod.weight_loader})
            mod.weight = w
            mod.cpu_linear = F.linear
    model.load_weights(iter(load_file(path).items()))


def _served_names(model) -> list:
    return sorted(n for n, _t in served_named_tensors(model))


def _perturbed(model, scale: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _n, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def _greedy(llm, n: int = 8) -> list:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    out = llm.generate([TokensPrompt(prompt_token_ids=[5, 6, 7, 8])], SamplingParams(max_tokens=n, temperature=0.0,
                                                                                      ignore_eos=True),
                       use_tqdm=False)
    return list(out[0].outputs[0].token_ids)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM
    from vllm import LLM

    root = tmp_path_factory.mktemp("fp")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY)).float()
    model.save_pretrained(root / "ckpt", safe_serialization=True)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # the weight push below sends a function to the workers: vLLM pickles it only when allowed
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    llm = LLM(model=str(root / "ckpt"), skip_tokenizer_init=True, dtype="float32", max_model_len=128,
              max_num_seqs=2, enforce_eager=True, seed=0, worker_extension_cls=EXTENSION)
    try:  # before: the linear weights are unreadable
        packed = llm.collective_rpc("tracesim_weights_fingerprint")
    except Exception as e:  # vLLM re-raises the worker's error in its own type
        packed = e
    llm.collective_rpc(_unpack_cpu_linears, args=(str(root / "ckpt" / "model.safetensors"),))

    def push(state: dict, name: str) -> None:
        path = root / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        llm.collective_rpc(_load_file, args=(str(path),))

    yield llm, model, push, packed
    del llm


def test_weights_repacked_for_the_cpu_are_reported_not_fingerprinted(engine):
    packed = engine[3]
    assert isinstance(packed, Exception) and "repacked" in str(packed)


def test_engine_layout_is_brought_back_to_the_checkpoints(engine):
    llm, model, _push, _root = engine
    names = llm.apply_model(_served_names)[0]
    assert names == sorted(n for n, _p in model.named_parameters())  # q/k/v and gate/up split back, no extras


def test_a_correct_sync_is_clean_and_a_forgotten_or_undone_one_is_caught(engine, tmp_path):
    llm, model, push, _packed = engine
    base = {k: v.clone() for k, v in model.state_dict().items()}
    before = _greedy(llm)
    with RolloutRecorder(tmp_path / "good.msgpack") as rec:
        assert rec.weights_published(0, model) == rec.weights_served(llm, 0)[0][1]  # the checkpoint as served
        _perturbed(model, 0.5, seed=1)
        rec.weights_published(1, model)
        push(model.state_dict(), "v1")
        rec.set_version(llm, 1)
        rec.weights_served(llm)
    assert _greedy(llm) != before  # the push reached the served weights
    good = check_trace(read_trace(tmp_path / "good.msgpack"), only=[SERVED])
    assert SERVED in good.checked and good.violations == []

    with RolloutRecorder(tmp_path / "bad.msgpack", version=1) as rec:
        rec.weights_published(1, model)
        _perturbed(model, 0.5, seed=2)
        rec.weights_published(2, model)  # published, never loaded
        rec.set_version(llm, 2)
        rec.weights_served(llm)
        _perturbed(model, 0.5, seed=3)
        rec.weights_published(3, model)
        push(model.state_dict(), "v3")
        push(base, "reloaded")  # the checkpoint reloaded from disk after the sync
        rec.set_version(llm, 3)
        rec.weights_served(llm)
    trace = read_trace(tmp_path / "bad.msgpack")
    fps = trace.of(WeightsFingerprint)
    assert {f.method for f in fps} == {METHOD} and {f.side for f in fps} == {"trainer", "engine"}
    report = check_trace(trace, only=[SERVED])
    msgs = [v.message for v in report.violations]
    assert len(msgs) == 2, msgs
    assert "rank 0 serves version 2" in msgs[0] and "published as version 1" in msgs[0]  # still v1's weights
    # the checkpoint from disk: this trainer published no version of it
    assert "rank 0 serves version 3" in msgs[1] and "these are the weights" not in msgs[1]
    assert "never published" in report.violations[1].cause
    model.load_state_dict(base)


def test_engine_fingerprint_equals_the_trainers_for_equal_weights(engine):
    llm, model, push, _root = engine
    push(model.state_dict(), "same")
    served = llm.collective_rpc("tracesim_weights_fingerprint")
    assert len(served) == 1 and served[0][0] == 0
    assert served[0][1] == fingerprint(model)
