"""The header's engine configuration (format/engine_settings.py): one key vocabulary for every source, typed
when read, unknown keys kept, a map on disk."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import pickle

import msgpack
import pytest

from tracesim.cli.main import main
from tracesim.format import read_trace, write_trace
from tracesim.format.engine_settings import RENAMED, SETTINGS, EngineSettings
from tracesim.format.errors import FieldError
from tracesim.format.summary import format_summary, summarize
from tracesim.format.synthetic import synthetic_trace
from tracesim.sim.replay import engine_config_from, replay
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import EngineConfig, Scenario, Workload

from conftest import TRACES
from helpers import header

# The three vocabularies as each source wrote them before issue 15 (recorded, simulated, synthetic).
RECORDED = {"scheduler": "Scheduler", "async_scheduling": False, "max_num_seqs": 16, "max_num_batched_tokens": 128,
            "chunked_prefill": True, "enable_prefix_caching": True, "block_size": 128, "num_gpu_blocks": 4096,
            "model": "/tmp/m", "max_model_len": 512, "max_concurrent_batches": 1, "data_parallel_size": 1,
            "scheduler_reserve_full_isl": True, "watermark": 0.0, "long_prefill_token_threshold": 0,
            "vllm_version": "0.32.0"}
SIMULATED = {"max_num_batched_tokens": 256, "max_num_seqs": 8, "block_size": 16, "num_gpu_blocks": 40,
             "enable_chunked_prefill": False, "enable_prefix_caching": False, "long_prefill_token_threshold": 64,
             "reserve_full_sequence": False, "watermark": 0.05, "async_scheduling": True,
             "discard_stale_frames": True, "sched_us": 150, "update_us": 100, "step_gap_us": 50,
             "output_latency_us": 400, "add_latency_us": 200, "scheduler_backend": "native"}
SYNTHETIC = {"async_scheduling": False, "token_budget": 512, "pause_mode": "abort", "clear_cache": True}


def _file_with_settings(path, settings: dict) -> None:
    """A trace whose header frame carries ``settings`` as they are, packed by msgpack-python."""
    hdr = list(header())
    hdr[5] = settings
    path.write_bytes(msgpack.packb(("header", hdr), use_bin_type=True))


def _settings_on_disk(path) -> dict:
    with open(path, "rb") as f:
        return next(iter(msgpack.Unpacker(f, raw=False)))[1][5]


@pytest.mark.parametrize("old", [RECORDED, SIMULATED, SYNTHETIC], ids=["recorded", "simulated", "synthetic"])
def test_each_old_vocabulary_reads_under_the_current_names(old, tmp_path):
    path = tmp_path / "old.msgpack"
    _file_with_settings(path, old)
    settings = read_trace(path).header.engine_config
    assert type(settings) is EngineSettings
    assert not RENAMED.keys() & settings.keys()
    assert settings == {RENAMED.get(k, k): v for k, v in old.items()}
    assert list(settings) == [RENAMED.get(k, k) for k in old]  # renamed in place: the order is the source's
    assert settings.extras() == {}
    for key, value in settings.items():
        assert getattr(settings, key) == value


def test_old_names_map_to_the_current_ones_and_replay_reads_them():
    assert RENAMED == {"chunked_prefill": "enable_chunked_prefill", "token_budget": "max_num_batched_tokens",
                       "reserve_full_sequence": "scheduler_reserve_full_isl"}
    cfg = engine_config_from(header(engine_config=SIMULATED))
    assert (cfg.max_num_batched_tokens, cfg.enable_chunked_prefill, cfg.reserve_full_sequence, cfg.watermark) == \
        (256, False, False, 0.05)
    rec = engine_config_from(header(engine_config=RECORDED))
    assert (rec.enable_chunked_prefill, rec.reserve_full_sequence, rec.num_gpu_blocks) == (True, True, 4096)
    assert engine_config_from(header(engine_config=SYNTHETIC)).max_num_batched_tokens == 512


def test_bundled_traces_read_with_the_current_names():
    for path in sorted(TRACES.glob("*.msgpack")):
        settings = read_trace(path).header.engine_config
        assert not RENAMED.keys() & settings.keys(), path
        assert settings.extras() == {}, path
        if path.name.startswith("vllm"):
            assert settings.enable_chunked_prefill is True and settings.scheduler_reserve_full_isl is True
            assert type(settings.max_num_batched_tokens) is int and type(settings.watermark) is float
        else:
            assert settings.max_num_batched_tokens == 512 and settings.pause_mode == "abort"


def test_every_writer_writes_the_current_names(tmp_path):
    sim = simulate(RunInputs(Scenario(workload=Workload(num_prompts=2, group_size=1, concurrency=1),
                                      engine=EngineConfig(reserve_full_sequence=False)), seed=1))
    assert sim.header.engine_config.scheduler_reserve_full_isl is False
    assert "reserve_full_sequence" not in sim.header.engine_config
    synthetic = synthetic_trace(waves=1, seed=1, token_budget=300)
    assert synthetic.header.engine_config.max_num_batched_tokens == 300
    for trace in (sim, synthetic, replay(sim)):
        out = tmp_path / "t.msgpack"
        write_trace(out, trace)
        on_disk = _settings_on_disk(out)
        assert type(on_disk) is dict and not RENAMED.keys() & on_disk.keys()
        assert set(on_disk) <= set(SETTINGS)


def test_a_simulated_header_replays_into_the_same_engine():
    cfg = EngineConfig(max_num_batched_tokens=300, reserve_full_sequence=False, watermark=0.1,
                       enable_chunked_prefill=False, long_prefill_token_threshold=32)
    sim = simulate(RunInputs(Scenario(workload=Workload(num_prompts=2, group_size=1, concurrency=1), engine=cfg)))
    assert engine_config_from(sim.header) == cfg


@pytest.mark.parametrize("key, value, expected", [
    ("max_num_seqs", "16", "expected int or null, got str"),
    ("max_num_seqs", True, "expected int or null, got bool"),  # exact types: a bool is not an int
    ("enable_chunked_prefill", 1, "expected bool or null, got int"),
    ("chunked_prefill", "yes", "expected bool or null, got str"),  # an old name: the error names it as found
    ("watermark", "0.1", "expected float or null, got str"),
    ("weight_version", 1.5, "expected int or str or null, got float"),
    ("workload", [1], "expected dict or null, got tuple"),  # arrays are read as tuples
])
def test_a_wrong_type_is_one_clear_error_naming_the_file_and_key(key, value, expected, tmp_path):
    path = tmp_path / "bad.msgpack"
    _file_with_settings(path, {"block_size": 16, key: value})
    name = RENAMED.get(key, key)
    with pytest.raises(FieldError) as exc:
        EngineSettings({key: value})
    assert exc.value.field == f"engine_config.{name}"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["info", str(path)])
    assert code == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0], lines
    assert f"header.engine_config.{name}" in lines[0] and expected in lines[0], lines[0]


def test_an_old_and_a_current_name_that_disagree_are_an_error(tmp_path):
    path = tmp_path / "both.msgpack"
    _file_with_settings(path, {"chunked_prefill": True, "enable_chunked_prefill": False})
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert main(["info", str(path)]) == 2
    assert "header.engine_config.enable_chunked_prefill" in err.getvalue()
    # agreeing ones are one setting
    assert EngineSettings({"token_budget": 5, "max_num_batched_tokens": 5}) == {"max_num_batched_tokens": 5}


def test_unknown_keys_and_nulls_survive_a_read_write_round_trip(tmp_path):
    settings = {"max_num_seqs": 4, "a_newer_setting": [1, 2], "users_own": {"x": "y"}, "num_gpu_blocks": None}
    path, again = tmp_path / "a.msgpack", tmp_path / "b.msgpack"
    _file_with_settings(path, settings)
    trace = read_trace(path)
    assert trace.header.engine_config.extras() == {"a_newer_setting": (1, 2), "users_own": {"x": "y"}}
    assert trace.header.engine_config.num_gpu_blocks is None and trace.header.engine_config.scheduler is None
    write_trace(again, trace)
    assert _settings_on_disk(again) == settings
    assert read_trace(again).header == trace.header


def test_an_int_where_a_float_belongs_is_that_float():
    settings = EngineSettings({"watermark": 0})
    assert settings.watermark == 0.0 and type(settings.watermark) is float


def test_settings_are_immutable_and_copy_pickle_and_print_as_the_map():
    settings = EngineSettings(SIMULATED)
    for change in (lambda s: s.__setitem__("max_num_seqs", 1), lambda s: s.update(max_num_seqs=1),
                   lambda s: s.pop("max_num_seqs"), lambda s: s.clear(), lambda s: s.__delitem__("block_size"),
                   lambda s: s.setdefault("x", 1)):
        with pytest.raises(TypeError, match="immutable"):
            change(settings)
    with pytest.raises(AttributeError):
        settings.max_num_seqs = 1
    for clone in (pickle.loads(pickle.dumps(settings)), copy.deepcopy(settings), copy.copy(settings)):
        assert type(clone) is EngineSettings and clone == settings
    assert json.loads(json.dumps(settings)) == dict(settings)
    assert EngineSettings({**settings, "max_num_seqs": 2}).max_num_seqs == 2


def test_info_lists_known_settings_in_their_declared_order_then_unknown_ones(tmp_path):
    path = tmp_path / "i.msgpack"
    _file_with_settings(path, {"zz_own": 1, "watermark": 0.5, "chunked_prefill": True, "scheduler": "Scheduler"})
    summary = summarize(read_trace(path))
    assert list(summary["engine_config"]) == ["scheduler", "enable_chunked_prefill", "watermark", "zz_own"]
    assert "engine     scheduler=Scheduler, enable_chunked_prefill=True, watermark=0.5, zz_own=1" \
        in format_summary(summary)


def test_a_merge_keeps_the_engine_cores_settings_and_what_only_the_client_states():
    from tracesim.format.merge import merge_traces
    from tracesim.format.records import ProcessInfo
    from tracesim.format.header import make_header
    from tracesim.format.trace import Trace

    client = Trace(make_header("vllm", (ProcessInfo("client", "h", 1),),
                               engine_config={"workload": {"groups": 2}, "max_num_seqs": 99}), [])
    engine = Trace(make_header("vllm", (ProcessInfo("engine-core", "h", 2),), engine_config=RECORDED), [])
    merged = merge_traces([client, engine]).header.engine_config
    assert type(merged) is EngineSettings
    assert merged.max_num_seqs == 16 and merged.enable_chunked_prefill is True  # the engine core's
    assert merged.workload == {"groups": 2}
    assert list(merged)[-1] == "workload"
