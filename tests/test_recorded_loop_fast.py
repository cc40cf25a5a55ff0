"""What ``infer_loop_policy`` reads from a recording's loop (tracesim/sim/recorded_loop.py), branch by branch, on
small handcrafted recordings: which label source fits (spans, finish, first_token, admission, several alike, none
exactly), labels read across a version change (kept, or read late), reward digests matched by id or by arrival,
no labels, and the ``Recorded`` look-ups the replay calls. Then the compiled and plain-Python builds give the same
policy, reasons and ``Recorded`` contents on the bundled recordings and simulated framework profiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracesim.format.records import (
    ConsumedSample, OutputDelivered, RequestAdded, RewardBound, TrainerConsumed, VersionSpan, WeightsUpdated,
)
from helpers import in_build
from tracesim.sim import _compiled
from tracesim.sim.recorded_loop import Recorded, infer_loop_policy, resolve_loop_policy

REPO = Path(__file__).resolve().parents[1]


def sample(rid, *, added=(0, 0), first=10, final=50, spans=(0,), digest="d", reward=None, consumed=None, label=0,
           reward_digest=None) -> list:
    """One sample's records: its client admission (t, version label), first and final frame (the final one with
    ``spans`` versions, one token each), its reward and its consumption (at those times, with ``label``)."""
    out = [RequestAdded(added[0], rid, side="client", version=added[1]), RequestAdded(added[0], rid)]
    out.append(OutputDelivered(first, rid, 0, 1))
    out.append(OutputDelivered(final, rid, 1, 1, finished=True, finish_reason="stop",
                               spans=tuple(VersionSpan(v, i, i + 1) for i, v in enumerate(spans)), digest=digest))
    if reward is not None:
        out.append(RewardBound(reward, rid, digest=digest if reward_digest is None else reward_digest, version=label))
    if consumed is not None:
        out.append(TrainerConsumed(consumed, 1, (ConsumedSample(rid, version=label),)))
    return out


def update(t, version) -> list:
    """A weight update that sets the engine's version label at ``t``."""
    return [WeightsUpdated(t - 5, t, version, set_ns=t)]


def recorded(*parts) -> Recorded:
    records = sorted((r for part in parts for r in part), key=lambda r: r.t_ns)
    return Recorded(records, 0)


# name -> the recording: each makes one branch of the inference fire
CASES = {
    # the labels equal the oldest span version only
    "spans": lambda: recorded(sample("a", spans=(-1, 3, 4), reward=60, consumed=70, label=3)),
    # ... the engine's version at the final frame only (an update between the first and the final frame)
    "finish": lambda: recorded(update(30, 1), sample("a", reward=60, consumed=70, label=1)),
    # ... at the first frame only (updates before the first and before the final frame)
    "first_token": lambda: recorded(update(30, 1), update(60, 2),
                                    sample("a", first=40, final=70, reward=80, consumed=90, label=1)),
    # ... the version the client recorded at admission only
    "admission": lambda: recorded(sample("a", added=(0, 7), reward=60, consumed=70, label=7)),
    # every source gives every label
    "ambiguous": lambda: recorded(sample("a", reward=60, consumed=70), sample("b", reward=65, consumed=70)),
    # the version changed between the final frame and the reward: the label kept the older one
    "read_once": lambda: recorded(update(55, 1), sample("a", reward=70, consumed=80, label=0)),
    # ... the label took the newer one (read late); another sample, not read across a change, shows the source
    "read_late": lambda: recorded(update(55, 1), sample("a", reward=70, consumed=80, label=1),
                                  sample("b", added=(0, 1), first=60, final=65, reward=70, consumed=80, label=1)),
    # ... the newer one, which the admission gave too
    "read_either": lambda: recorded(update(55, 1), sample("a", added=(0, 1), reward=70, consumed=80, label=1)),
    # no source gives every label: the one giving most
    "best": lambda: recorded(sample("a", reward=60, consumed=70, label=0),
                             sample("b", added=(0, 3), reward=61, consumed=70, label=3),
                             sample("c", reward=62, consumed=70, label=8)),
    # no labels at all, no digests on the rewards
    "unlabelled": lambda: recorded(sample("a", reward=60, consumed=70, label=None, digest=None)),
    # rewards bound to the other sample's tokens (results paired by completion order)
    "arrival": lambda: recorded(sample("a", digest="da", reward=60, reward_digest="db"),
                                sample("b", digest="db", reward=61, reward_digest="da"),
                                sample("c", digest="dc", reward=62)),
    # a reward before its sample's final frame, a sample consumed unrewarded, one never seen: only the admission
    # is known of them
    "unfinished": lambda: recorded(sample("a", added=(0, 2), reward=30, consumed=70, label=2),
                                   sample("b", added=(0, 2), consumed=70, label=2),
                                   [TrainerConsumed(75, 2, (ConsumedSample("ghost", version=2),))]),
}

EXPECTED = {  # (version_label, version_read, reward_match), reasons
    'spans': (('spans', 'once', 'id'), [
        'version_label = spans: the 2 recorded labels (1 on rewards, 1 on consumed samples) all equal the oldest '
        "version of the final frame's spans (other sources match: admission 0/2, first_token 0/2, finish 0/2)",
        "version_read = once: no label was read after the version changed since the sample's final delivery; assumed "
        'once',
        'reward_match = id: every one of the 1 reward digests equals the final delivered digest of the request it '
        'names',
    ]),
    'finish': (('finish', 'once', 'id'), [
        "version_label = finish: the 2 recorded labels (1 on rewards, 1 on consumed samples) all equal the engine's "
        'version when the final frame was delivered (other sources match: admission 0/2, first_token 0/2, spans 0/2)',
        "version_read = once: no label was read after the version changed since the sample's final delivery; assumed "
        'once',
        'reward_match = id: every one of the 1 reward digests equals the final delivered digest of the request it '
        'names',
    ]),
    'first_token': (('first_token', 'once', 'id'), [
        'version_label = first_token: the 2 recorded labels (1 on rewards, 1 on consumed samples) all equal the '
        "engine's version when the first frame was delivered (other sources match: admission 0/2, finish 0/2, spans "
        '0/2)',
        "version_read = once: no label was read after the version changed since the sample's final delivery; assumed "
        'once',
        'reward_match = id: every one of the 1 reward digests equals the final delivered digest of the request it '
        'names',
    ]),
    'admission': (('admission', 'once', 'id'), [
        'version_label = admission: the 2 recorded labels (1 on rewards, 1 on consumed samples) all equal the '
        'version the client recorded at admission (other sources match: first_token 0/2, finish 0/2, spans 0/2)',
        "version_read = once: no label was read after the version changed since the sample's final delivery; assumed "
        'once',
        'reward_match = id: every one of the 1 reward digests equals the final delivered digest of the request it '
        'names',
    ]),
    'ambiguous': (('spans', 'once', 'id'), [
        'version_label = spans: ambiguous, assumed spans: the 4 recorded labels (2 on rewards, 2 on consumed '
        'samples) fit admission, first_token, finish, spans alike',
        "version_read = once: no label was read after the version changed since the sample's final delivery; assumed "
        'once',
        'reward_match = id: every one of the 2 reward digests equals the final delivered digest of the request it '
        'names',
    ]),
    'read_once': (('spans', 'once', 'id'), [
        'version_label = spans: ambiguous, assumed spans: the 2 recorded labels (1 on rewards, 1 on consumed '
        'samples) fit admission, first_token, finish, spans alike',
        'version_read = once: 2 label(s) were read after the version changed since the final delivery; 2 of them '
        'kept the older value',
        'reward_match = id: every one of the 1 reward digests equals the final delivered digest of the request it '
        'names',
    ]),
    'read_late': (('admission', 'late', 'id'), [
        'version_label = admission: the labels not read across a version change fit admission, first_token, finish; '
        'assumed admission',
        "version_read = late: 2 label(s) equal the version at reward time, which had changed since the sample's "
        'final delivery',
        'reward_match = id: every one of the 2 reward digests equals the final delivered digest of the request it '
        'names',
    ]),
    'read_either': (('admission', 'once', 'id'), [
        'version_label = admission: the 2 recorded labels (1 on rewards, 1 on consumed samples) all equal the '
        'version the client recorded at admission (other sources match: first_token 0/2, finish 0/2, spans 0/2)',
        'version_read = once: 2 label(s) read after a version change fit both; assumed once',
        'reward_match = id: every one of the 1 reward digests equals the final delivered digest of the request it '
        'names',
    ]),
    'best': (('admission', 'once', 'id'), [
        'version_label = admission: no source fits every one of the 6 recorded labels (3 on rewards, 3 on consumed '
        'samples); best admission (4 of 6: admission 4/6, first_token 2/6, finish 2/6, spans 2/6)',
        'version_read = once: the version at reward time does not explain the labels either; assumed once',
        'reward_match = id: every one of the 3 reward digests equals the final delivered digest of the request it '
        'names',
    ]),
    'unlabelled': (('spans', 'once', 'id'), [
        'version_label = spans: no version labels on recorded rewards or consumed samples; assumed spans',
        'version_read = once: no labels recorded; assumed once',
        'reward_match = id: no reward digests to compare with delivered outputs; assumed id',
    ]),
    'arrival': (('spans', 'once', 'arrival'), [
        'version_label = spans: ambiguous, assumed spans: the 3 recorded labels (3 on rewards, 0 on consumed '
        'samples) fit admission, first_token, finish, spans alike',
        "version_read = once: no label was read after the version changed since the sample's final delivery; assumed "
        'once',
        'reward_match = arrival: 2 of 3 reward digests differ from the final delivered digest of the request they '
        'name (e.g. a): results paired by completion order',
    ]),
    'unfinished': (('admission', 'once', 'arrival'), [
        'version_label = admission: the 4 recorded labels (1 on rewards, 3 on consumed samples) all equal the '
        'version the client recorded at admission (other sources match: first_token 0/2, finish 0/2, spans 0/2)',
        "version_read = once: no label was read after the version changed since the sample's final delivery; assumed "
        'once',
        'reward_match = arrival: 1 of 1 reward digests differ from the final delivered digest of the request they '
        'name (e.g. a): results paired by completion order',
    ]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_inference_branch(name):
    policy, reasons = infer_loop_policy(CASES[name]())
    assert ((policy.version_label, policy.version_read, policy.reward_match), reasons) == EXPECTED[name]


def test_lookups_follow_each_incarnation_of_a_retried_request():
    # "r" finished, was admitted again under the same id after an update, and finished again
    rec = recorded(update(55, 1),
                   sample("r", added=(0, 0), first=10, final=50, spans=(0,), digest="d0", reward=52, label=0),
                   [RequestAdded(60, "r", side="client", version=1),
                    OutputDelivered(70, "r", 0, 1),
                    OutputDelivered(90, "r", 1, 1, finished=True, spans=(VersionSpan(1, 0, 2),), digest="d1"),
                    RewardBound(95, "r", digest="d1", version=1), RewardBound(96, "x", digest="d0", version=1),
                    TrainerConsumed(99, 1, (ConsumedSample("r", version=1),))])
    fin0, fin1 = rec.finals["r"]
    assert (fin0.digest, fin1.digest) == ("d0", "d1") and rec.firsts == {"r": [10, 70]}
    assert [a.version for a in rec.adds["r"]] == [0, 1] and list(rec.adds) == ["r"]
    assert rec.final_before("r", 49) == (None, None)
    assert rec.final_before("r", 60) == (0, fin0) and rec.final_before("r", 95) == (1, fin1)
    assert rec.final_before("x", 99) == (None, None)
    assert rec.admission("r", 59).version == 0 and rec.admission("r").version == 1
    assert rec.admission("r", -1).version == 0  # none that early: the first
    assert rec.admission("x") is None
    assert [rec.version_at(t) for t in (54, 55, 56)] == [0, 1, 1]
    assert rec.sources("r", 0, fin0) == {"admission": 0, "first_token": 0, "finish": 0, "spans": 0}
    assert rec.sources("r", 1, fin1) == {"admission": 1, "first_token": 1, "finish": 1, "spans": 1}
    assert rec.sources("x", None, None) == {"admission": None, "first_token": None, "finish": None, "spans": None}
    assert [rec.rewards_before("r", t) for t in (51, 52, 95, 99)] == [0, 1, 2, 2]
    assert [rec.last_reward_before("r", t) for t in (51, 60, 99)] == [None, 52, 95]
    assert rec.rewards_before("x", 99) == 1 and rec.last_reward_before("nope", 99) is None
    # "x" names no delivered request: its digest is the one "r" delivered first
    assert [rec.scored(r) for r in rec.rewards] == ["r", "r", "r"]
    assert rec.reward_finals() == [(0, 2), (1, 5), (None, None)]  # from each named request's final frame
    assert rec.has_loop and not recorded(sample("a")).has_loop
    policy, reasons = infer_loop_policy(rec)
    assert (policy.version_label, policy.version_read, policy.reward_match) == ("spans", "once", "arrival")
    assert reasons[2].startswith("reward_match = arrival: 1 of 3 reward digests differ")


def test_resolve_says_when_there_is_no_loop():
    assert resolve_loop_policy(recorded(sample("a"))) == (
        None, ["no rewards or trainer consumption recorded: the replay has no RL loop"])


def _plain_recorded(records) -> dict:
    """What Recorded gathers of ``records``, the plain way: a loop over every record."""
    finals, firsts, adds, open_ = {}, {}, {}, set()
    for r in records:
        if type(r) is RequestAdded and r.side == "client":
            adds.setdefault(r.req_id, []).append(r)
        elif type(r) is OutputDelivered:
            if r.req_id not in open_:
                open_.add(r.req_id)
                firsts.setdefault(r.req_id, []).append(r.t_ns)
            if r.finished:
                open_.discard(r.req_id)
                finals.setdefault(r.req_id, []).append(r)
    return {"finals": finals, "firsts": firsts, "adds": adds}


@pytest.mark.parametrize("name", ["vllm-abort.msgpack", "vllm-keep.msgpack"])
def test_recorded_gathers_what_a_loop_over_the_records_finds(name):
    from tracesim.format import read_trace

    trace = read_trace(REPO / "traces" / name)
    rec = Recorded(trace.records, 0, trace._kinds())
    plain = _plain_recorded(trace.records)
    for attr, want in plain.items():
        got = getattr(rec, attr)
        assert got == want and list(got) == list(want), attr  # same contents, same order
    assert rec.rewards == [r for r in trace.records if type(r) is RewardBound]
    named = [rec.final_before(r.req_id, r.t_ns) for r in rec.rewards]
    assert rec.reward_finals() == [(k, r.t_ns - fin.t_ns) if fin is not None else (None, None)
                                   for r, (k, fin) in zip(rec.rewards, named)]


# the compiled and the plain-Python build infer the same from the same recordings (a process imports one build)
SUMMARIES = r"""
import glob, json, os, sys
from tracesim.format import read_trace
from tracesim.sim import _compiled
from tracesim.sim.recorded_loop import Recorded, infer_loop_policy
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import load_scenario

def summary(trace):
    rec = Recorded(trace.records, trace.index().start_ns, trace._kinds())
    policy, reasons = infer_loop_policy(rec)
    probes = [(rec.final_before(r.req_id, r.t_ns)[0], rec.scored(r), rec.rewards_before(r.req_id, r.t_ns),
               rec.sources(r.req_id, *rec.final_before(r.req_id, r.t_ns))) for r in rec.rewards]
    return repr((policy, reasons, rec.finals, rec.firsts, rec.adds, probes))

out = {"compiled": _compiled.STATUS.compiled}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "traces", "*.msgpack"))):
    out[os.path.basename(path)] = summary(read_trace(path))
for name in ("verl", "verl-label-at-finish", "prime-rl-admission-label", "slime"):
    scenario = load_scenario(os.path.join(sys.argv[1], "scenarios", "profiles", name + ".toml"))
    out[name] = summary(simulate(RunInputs(scenario, seed=1)))
print(json.dumps(out))
"""


def _summaries(pure: bool) -> dict:
    return in_build(SUMMARIES, pure)


@pytest.mark.skipif(not _compiled.STATUS.compiled,
                    reason=f"the compiled simulator is not in use: {_compiled.STATUS.reason}")
def test_compiled_and_plain_builds_infer_the_same():
    compiled, plain = _summaries(pure=False), _summaries(pure=True)
    assert compiled.pop("compiled") is True and plain.pop("compiled") is False
    assert len(compiled) >= 10
    assert compiled == plain
