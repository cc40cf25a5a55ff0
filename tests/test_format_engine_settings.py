"""The header's engine configuration: one key vocabulary for recorded, simulated and synthetic traces, typed
and checked when read, old names mapped, unknown keys kept (issue 15)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import msgpack
import numpy as np
import pytest

from tracesim.format import read_trace, write_trace
from tracesim.format.engine_settings import ALIASES, FIELDS, EngineSettings
from tracesim.format.errors import FieldError
from tracesim.sim.replay import engine_config_from
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import EngineConfig, Scenario, Workload

from conftest import TRACES
from helpers import header


def _raw_header(path) -> dict:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(path.read_bytes())
    return unpacker.unpack()[1][5]


def test_bundled_traces_of_every_source_read_in_one_vocabulary():
    recorded = TRACES / "vllm-keep.msgpack"
    assert "chunked_prefill" in _raw_header(recorded)  # written before the vocabulary was unified
    settings = read_trace(recorded).header.engine_config
    assert isinstance(settings, EngineSettings) and "chunked_prefill" not in settings
    assert settings.enable_chunked_prefill is True and settings.scheduler == "Scheduler"
    assert settings.block_size == settings["block_size"] and settings.max_num_batched_tokens > 0
    synthetic = read_trace(TRACES / "synthetic-small.msgpack").header.engine_config
    assert "token_budget" in _raw_header(TRACES / "synthetic-small.msgpack")
    assert synthetic.max_num_batched_tokens == _raw_header(TRACES / "synthetic-small.msgpack")["token_budget"]
    # Every key any bundled trace carries is one the vocabulary names (nothing left under an old name).
    for path in TRACES.glob("*.msgpack"):
        keys = set(read_trace(path).header.engine_config)
        assert keys <= set(FIELDS), (path.name, keys - set(FIELDS))


def test_a_simulated_header_uses_the_vocabulary_and_replays_as_an_old_one_did(tmp_path):
    trace = simulate(RunInputs(Scenario(workload=Workload(num_prompts=2, group_size=2),
                                        engine=EngineConfig(reserve_full_sequence=False, watermark=0.1)), seed=1))
    settings = trace.header.engine_config
    assert settings.scheduler_reserve_full_isl is False and "reserve_full_sequence" not in settings
    path = tmp_path / "sim.msgpack"
    write_trace(path, trace)
    assert set(_raw_header(path)) <= set(FIELDS)
    old = trace.header._replace(engine_config={**{k: v for k, v in settings.items()
                                                  if k != "scheduler_reserve_full_isl"},
                                               "reserve_full_sequence": False})
    assert engine_config_from(old) == engine_config_from(trace.header)
    assert engine_config_from(trace.header).reserve_full_sequence is False
    assert engine_config_from(trace.header).watermark == 0.1


@pytest.mark.parametrize("old, new", sorted(ALIASES.items()))
def test_each_old_name_reads_as_the_new_one(old, new):
    value = FIELDS[new][0][0](1)
    assert EngineSettings({old: value}) == {new: value}
    assert getattr(EngineSettings({old: value}), new) == value
    assert EngineSettings({old: value, new: value}) == {new: value}
    with pytest.raises(FieldError, match="give different values") as info:
        EngineSettings({new: value, old: FIELDS[new][0][0](2) if FIELDS[new][0][0] is not bool else False})
    assert info.value.field == f"engine_config.{old}"


def test_wrong_types_are_refused_and_writers_coerce_numbers():
    with pytest.raises(FieldError, match="expected int, got str") as info:
        EngineSettings({"block_size": "16"})
    assert info.value.field == "engine_config.block_size"
    with pytest.raises(FieldError, match="expected bool, got int") as info:
        EngineSettings({"async_scheduling": 1}, "header.engine_config")
    assert info.value.field == "header.engine_config.async_scheduling"
    assert EngineSettings({"watermark": 0}).watermark == 0.0 and type(EngineSettings({"watermark": 0})["watermark"]) is float
    coerced = EngineSettings({"num_gpu_blocks": np.int64(100), "watermark": np.float32(0.5)}, coerce=True)
    assert type(coerced["num_gpu_blocks"]) is int and coerced.num_gpu_blocks == 100 and coerced.watermark == 0.5
    assert EngineSettings({"block_size": None}).block_size is None  # a source that did not know
    assert EngineSettings().model is None
    with pytest.raises(AttributeError, match="no setting 'blocksize'"):
        EngineSettings().blocksize


def test_a_bad_setting_in_a_file_is_one_clear_error_exit_2(tmp_path):
    h = header(engine_config={"block_size": 16})
    path = tmp_path / "bad.msgpack"
    fields = list(h)
    fields[5] = {"block_size": "sixteen"}
    path.write_bytes(msgpack.packb(("header", fields), use_bin_type=True))
    run = subprocess.run([sys.executable, "-m", "tracesim", "info", str(path)], capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert "header.engine_config.block_size: expected int, got str" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_unknown_keys_survive_a_round_trip_and_the_value_is_immutable(tmp_path):
    h = header(engine_config={"block_size": 32, "my_framework_knob": [1, 2], "newer_setting": {"a": 1}})
    path = tmp_path / "t.msgpack"
    write_trace(path, read_trace_with(h, tmp_path))
    settings = read_trace(path).header.engine_config
    assert settings.extras() == {"my_framework_knob": (1, 2), "newer_setting": {"a": 1}}  # arrays read as tuples
    assert settings.block_size == 32
    for change in (lambda s: s.__setitem__("block_size", 1), lambda s: s.update(block_size=1),
                   lambda s: s.pop("block_size"), lambda s: s.clear()):
        with pytest.raises(TypeError, match="immutable"):
            change(settings)
    assert pickle.loads(pickle.dumps(settings)) == settings
    assert json.loads(json.dumps(settings)) == {**settings, "my_framework_knob": [1, 2]}


def read_trace_with(h, tmp_path):
    from tracesim.format.trace import Trace

    return Trace(h, [], [], None)
