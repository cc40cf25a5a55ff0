"""The values a replay takes from a recording and feeds to the model (``replay.py``), by name.

Plain-Python NamedTuples, kept out of the compiled ``replay.py`` so that their classes are ordinary Python
classes in both builds; the compiled build makes them with ``tuplenew.new_tuple`` (no keyword parsing) and
reads them by field name. Ordered as tuples: a replay sorts its inputs by ``(t_ns, order, ...)``, and
``order`` (a stream index) is unique, so the payload never takes part in a comparison.
"""

from __future__ import annotations

from typing import NamedTuple


class Input(NamedTuple):
    """One recorded engine input."""

    t_ns: int  # when it is due: virtual ns after the trace start (the recorded time, rebased)
    order: int  # stream index of the record it came from: ties at one time, and exact replay's feed order
    kind: str  # "add" | "pause" | "resume" | "reset" | "abort" | "version"
    payload: object  # add: replay._Arrival; pause: its mode; reset: reset_running; abort: req ids;
    # version: a VersionWrite; resume: None


class VersionWrite(NamedTuple):
    """A recorded weight write (the payload of a "version" input)."""

    version: int  # the policy version written
    write_ns: int  # how long the recorded write took (end_ns - t_ns; 0 if not recorded)
    pauses: int  # engine pauses recorded before it: a perturbed replay writes after the last of them drained


class ClientRecord(NamedTuple):
    """A client-side record carried into the replay's output, rebased."""

    t_ns: int  # its rebased t_ns: when the replay emits it
    order: int  # its stream index in the recording
    record: tuple  # the record itself, every time field rebased


__all__ = ["ClientRecord", "Input", "VersionWrite"]
