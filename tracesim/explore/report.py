"""Counterexamples as users read and rerun them: text report, JSON, repro files, failing traces, plots.

A repro file is a small TOML file (``cex-N.toml``)::

    # tracesim counterexample: `tracesim repro cex-1.toml` exits 1 while it still fails
    invariant = "tokens_from_labelled_version"
    signature = ["deliver", "reward", "upd"]
    base = "scenario"                      # or "trace" (exact replay of a recording)
    path = "scenarios/late-read.toml"
    scheduler = "native"                   # optional
    policy = "policies/strict.toml"        # optional
    loop = "my-loop.toml"                  # optional, base "trace": [loop] settings of the replayed loop
    seed = 0
    perturbations = ["reward_delay(req=g5-s2,ms=4)"]

``path``, ``policy`` and ``loop`` are kept as the user named them; ``load_repro`` looks for them relative to the
current directory first, then relative to the repro file.
"""

from __future__ import annotations

import json
import os
import re
import shlex

from tracesim.explore.runner import Base, RunSpec, Signature
from tracesim.inputs import InputError, read_toml
from tracesim.sim.perturb import PerturbationError, format_list, parse


class ReproError(InputError):
    """A repro file is unusable; the message names the file and the field."""


def repro_command(spec: RunSpec, invariant: str | None = None) -> str:
    """One line that reproduces ``spec`` from a shell (exit 1 while it still fails)."""
    b = spec.base
    parts = ["tracesim", "repro", "--scenario" if b.kind == "scenario" else "--trace", b.path,
             "--seed", str(spec.seed)]
    if b.scheduler:
        parts += ["--scheduler", b.scheduler]
    if b.policy:
        parts += ["--policy", b.policy]
    if b.loop:
        parts += ["--loop", b.loop]
    if spec.perturbations:
        parts += ["--perturb", format_list(spec.perturbations)]
    if invariant:
        parts += ["--expect", invariant]
    return " ".join(shlex.quote(p) for p in parts)


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string of printable text is a TOML basic string


def repro_toml(spec: RunSpec, signature: Signature | None) -> str:
    b = spec.base
    lines = ["# tracesim counterexample: `tracesim repro THIS_FILE` exits 1 while it still fails, 0 once it no "
             "longer does"]
    if signature is not None:
        lines.append(f"invariant = {_toml_str(signature.invariant)}")
        lines.append(f"signature = [{', '.join(_toml_str(k) for k in signature.kinds)}]")
    lines.append(f"base = {_toml_str(b.kind)}")
    lines.append(f"path = {_toml_str(b.path)}")
    if b.scheduler:
        lines.append(f"scheduler = {_toml_str(b.scheduler)}")
    if b.policy:
        lines.append(f"policy = {_toml_str(b.policy)}")
    if b.loop:
        lines.append(f"loop = {_toml_str(b.loop)}")
    lines.append(f"seed = {spec.seed}")
    lines.append("perturbations = [" + ", ".join(_toml_str(str(p)) for p in spec.perturbations) + "]")
    return "\n".join(lines) + "\n"


def load_repro(path: str) -> tuple:
    """(RunSpec, Signature or None) from a repro file; raise ReproError naming the file and field."""
    data = read_toml(path, "repro", ReproError)
    where = str(path)

    def get(key, kind, required=True):
        if key not in data:
            if required:
                raise ReproError(f"{where}: missing field {key!r}")
            return None
        v = data[key]
        if not isinstance(v, kind) or isinstance(v, bool) and kind is int:
            raise ReproError(f"{where}: field {key!r}: expected {kind.__name__}, got {str(v)[:80]!r}")
        return v

    kind = get("base", str)
    if kind not in ("scenario", "trace"):
        raise ReproError(f"{where}: field 'base': expected \"scenario\" or \"trace\", got {kind[:80]!r}")
    here = os.path.dirname(os.path.abspath(path))
    base_path = _locate(get("path", str), here)
    policy = get("policy", str, False)
    loop = get("loop", str, False)
    base = Base(kind, base_path, get("scheduler", str, False), _locate(policy, here) if policy else None,
                _locate(loop, here) if loop else None)
    texts = get("perturbations", list)
    perts = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ReproError(f"{where}: perturbations[{i}]: expected a string")
        try:
            perts.append(parse(t))
        except PerturbationError as exc:
            raise ReproError(f"{where}: perturbations[{i}]: {exc}") from None
    sig = None
    inv = get("invariant", str, False)
    if inv is not None:
        kinds = get("signature", list, False) or []
        sig = Signature(inv, tuple(str(k) for k in kinds))
    return RunSpec(base, get("seed", int), tuple(perts)), sig


def _locate(p: str, here: str) -> str:
    if os.path.exists(p) or os.path.isabs(p):
        return p
    alt = os.path.join(here, p)
    return alt if os.path.exists(alt) else p


# --- saving and printing ------------------------------------------------------------------------------------


def save(finding, out_dir: str, n: int, plot: bool = True) -> dict:
    """Write ``cex-N.toml`` (repro), ``cex-N.msgpack`` (the failing trace) and ``cex-N.png`` (its timeline
    around the violation) into ``out_dir``; return their paths."""
    from tracesim.explore.runner import check_spec_trace, run_trace
    from tracesim.format import write_trace

    os.makedirs(out_dir, exist_ok=True)
    spec = finding.minimal or finding.first
    files = {"repro": os.path.join(out_dir, f"cex-{n}.toml"), "trace": os.path.join(out_dir, f"cex-{n}.msgpack")}
    with open(files["repro"], "w") as f:
        f.write(repro_toml(spec, finding.signature))
    trace = run_trace(spec)[0]  # a run that hung: its records up to the hang
    write_trace(files["trace"], trace)
    if plot:
        files["plot"] = os.path.join(out_dir, f"cex-{n}.png")
        _plot(trace, check_spec_trace(spec, trace).violations, finding.signature, files["plot"])
    finding.files = files
    return files


def clear(out_dir: str) -> None:
    """Remove the ``cex-N.*`` files an earlier search left in ``out_dir`` (a new search's replace them)."""
    if os.path.isdir(out_dir):
        for name in os.listdir(out_dir):
            if re.fullmatch(r"cex-\d+\.(toml|msgpack|png)", name):
                os.remove(os.path.join(out_dir, name))


def _plot(trace, violations, signature, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tracesim.explore.runner import signature_of
    from tracesim.viz import plot_timeline, violation_window

    mine = [v for v in violations if signature_of(v) == signature] or list(violations)
    window = None
    if mine:
        try:
            window = violation_window(trace, mine[0])
        except ValueError:
            window = None
    fig = plot_timeline(trace, window_ns=window, violations=mine[:1], title=f"counterexample: {signature.invariant}")
    fig.savefig(path)
    plt.close(fig)


def finding_json(f) -> dict:
    spec = f.minimal or f.first
    v = f.violation
    return {
        "invariant": f.signature.invariant,
        "signature": list(f.signature.kinds),
        "perturbations": [str(p) for p in spec.perturbations],
        "seed": spec.seed,
        "found_at_run": f.found_at,
        "first_perturbations": [str(p) for p in f.first.perturbations],
        "shrink_runs": f.shrink_runs,
        "deterministic": f.deterministic,
        "violation": v.to_json() if v is not None else None,
        "violations": f.count,
        "repro": repro_command(spec, f.signature.invariant),
        "files": dict(f.files),
    }


def result_json(result) -> dict:
    b = result.base
    return {
        "base": {"kind": b.kind, "path": b.path, "scheduler": b.scheduler or "native", "policy": b.policy,
                 "loop": b.loop},
        "seed": result.seed, "runs": result.runs, "elapsed_s": round(result.elapsed_s, 3),
        "stopped": result.stopped, "errors": [{"run": i, "error": e} for i, e in result.errors],
        "counterexamples": [finding_json(f) for f in result.findings],
    }


def _ms(t_ns, t0) -> str:
    return f"{(t_ns - t0) / 1e6:.3f} ms"


def format_result(result, t0_of=None) -> str:
    """The report a user reads: per finding, the invariant, the minimal perturbations, the records involved
    and the command that reproduces it."""
    lines = [f"explored {result.runs} runs of {result.base.describe()} (seed {result.seed}) in "
             f"{result.elapsed_s:.1f} s: {len(result.findings)} distinct failure(s)"]
    for i, (idx, err) in enumerate(result.errors[:3]):
        lines.append(f"  run {idx} could not complete: {err[:200]}")
    if len(result.errors) > 3:
        lines.append(f"  ... and {len(result.errors) - 3} more runs that could not complete")
    for n, f in enumerate(result.findings, 1):
        spec = f.minimal or f.first
        lines.append("")
        lines.append(f"[{n}] {f.signature.invariant}  (first seen at run {f.found_at}; "
                     f"shrunk in {f.shrink_runs} runs)")
        if spec.perturbations:
            lines.append("    minimal perturbations:")
            lines.extend(f"      {p}" for p in spec.perturbations)
        else:
            lines.append(f"    fails with no perturbation (seed {spec.seed}): the base run itself breaks it")
        if f.violation is not None:
            lines.append(f"    {f.violation.message}")
            if f.violation.cause:
                lines.append(f"    cause: {f.violation.cause}")
            t0 = t0_of(spec) if t0_of is not None else 0
            for e in f.violation.events[:6]:
                where = " ".join(x for x in (f"step {e.step}" if e.step is not None else "",
                                             e.req_id or "") if x)
                lines.append(f"      {e.kind:8s} at {_ms(e.t_ns, t0)}  {where}".rstrip())
            if f.count > 1:
                lines.append(f"    ({f.count} violations of this kind in the run)")
        if f.deterministic is False:
            lines.append("    NOT REPRODUCIBLE: the minimal run did not fail the same way twice (nondeterminism)")
        lines.append(f"    reproduce: {repro_command(spec, f.signature.invariant)}")
        for what, path in f.files.items():
            lines.append(f"    {what}: {path}")
    return "\n".join(lines)
