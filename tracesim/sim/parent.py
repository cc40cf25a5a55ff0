"""n > 1 sampling as one parent request (``[workload] sampling = "parent"``), as vLLM 0.32's frontend does it.

``AsyncLLM.add_request`` with ``SamplingParams.n > 1`` makes a ``ParentRequest`` and fans it out into ``n``
child requests with ids ``"{index}_{parent id}"`` (``parallel_sampling.py``); the engine core admits,
schedules, preempts and finishes each child on its own. With ``output_kind = FINAL_ONLY`` (what a batch RL
loop asks for) ``ParentRequest.get_outputs`` holds each finished child's output in an aggregator and hands
the client one ``RequestOutput`` with all ``n`` outputs when the last child finishes; a child's earlier
frames are not sent at all. Aborting the parent's id aborts every child still running
(``OutputProcessor.abort_requests``); aborting one child (by its internal id) finishes that child with
``finish_reason = "abort"`` and its partial tokens, and the parent still completes when its other children
finish: its output then holds an aborted member.

Here the client (``Rollout``) submits a group as one parent: a ``ParentAdded`` record, then one client
``RequestAdded`` per child (the children's ids; ``group_id`` = the parent's id). ``Parents.hold`` plays the
output processor: it keeps the frames of each child until the parent's last child has finished, then releases
one frame per child with all its tokens (finished children first, aborted ones after, in index order: a loop
that drops the group on an abort has then seen the finished siblings' outputs). Requests that are not
children (a requeued or retried sample is an n = 1 request) pass through. DELTA streaming is not modelled.

What the loop does with a parent whose output holds an aborted child is ``[loop] aborted_child``:
"handle" (default: the loop's ``on_abort`` policy, as for any aborted sample); "train_rest" (the loop keeps
the finished outputs and trains the group without the aborted one: ``groups_whole_and_consistent``);
"forget" (the loop discards the parent's output and the group without accounting for it: the group is lost,
``sample_ends_exactly_once``).
"""

from __future__ import annotations

from tracesim.format.records import ParentAdded
from tracesim.sim.engine import Frame

SAMPLING = ("independent", "parent")
ABORTED_CHILD = ("handle", "train_rest", "forget")


def child_id(parent_id: str, index: int) -> str:
    """vLLM's child request id (``ParentRequest.get_child_info``)."""
    return f"{index}_{parent_id}"


class _Parent:
    __slots__ = ("parent_id", "children", "tokens", "stamps", "reasons")

    def __init__(self, parent_id: str, children: tuple):
        self.parent_id, self.children = parent_id, children
        self.tokens = {c: [] for c in children}
        self.stamps = {c: [] for c in children}
        self.reasons: dict = {}  # child id -> finish reason, once finished


class Parents:
    """The client's live parent requests and their output aggregation (the module doc)."""

    def __init__(self, client):
        self.client = client
        self.of_child: dict = {}  # child id -> its live _Parent

    def submit(self, group) -> tuple:
        """Register ``group`` as one parent request; record it; return its children's ids, by index."""
        children = tuple(child_id(group.group_id, j) for j in range(self.client.wl.group_size))
        parent = _Parent(group.group_id, children)
        for c in children:
            self.of_child[c] = parent
        self.client.emit(ParentAdded(t_ns=self.client.env.now, parent_id=group.group_id, child_ids=children))
        return children

    def expand(self, req_id: str) -> list:
        """The ids an abort of ``req_id`` reaches: a live parent's id stands for its running children."""
        parent = next((p for p in self.of_child.values() if p.parent_id == req_id), None)
        if parent is None:
            return [req_id]
        return [c for c in parent.children if c not in parent.reasons]

    def hold(self, batch) -> list:
        """The frames of ``batch`` the client receives now: frames of non-children, and every child's whole
        output once its parent's last child has finished."""
        out = []
        for frame in batch:
            parent = self.of_child.get(frame.req_id)
            if parent is None or frame.req_id in parent.reasons:
                out.append(frame)  # not a child (or a child already finished: vLLM would not send it again)
                continue
            rid = frame.req_id
            if frame.sampled == 1:
                parent.tokens[rid].append(frame.tokens)
                parent.stamps[rid].append(frame.stamps)
            elif frame.sampled:
                parent.tokens[rid] += frame.tokens
                parent.stamps[rid] += frame.stamps
            if frame.finish_reason is not None:
                parent.reasons[rid] = frame.finish_reason
                if len(parent.reasons) == len(parent.children):
                    out += self._release(parent)
        return out

    def _release(self, parent: _Parent) -> list:
        for c in parent.children:
            del self.of_child[c]
        order = [c for c in parent.children if parent.reasons[c] != "abort"] + \
            [c for c in parent.children if parent.reasons[c] == "abort"]
        frames = []
        for c in order:
            tokens, stamps = parent.tokens[c], parent.stamps[c]
            if len(tokens) == 1:
                frames.append(Frame(c, 1, tokens[0], stamps[0], parent.reasons[c]))
            else:
                frames.append(Frame(c, len(tokens), tuple(tokens), tuple(stamps), parent.reasons[c]))
        return frames


def aborted_child(client, sample) -> bool:
    """A child's output came back aborted in its parent's output: apply ``[loop] aborted_child``; True when it
    took the sample (the loop's ``on_abort`` is then not applied)."""
    mode, group = client.policy.aborted_child, sample.group
    if mode == "handle" or group is None:
        return False
    if mode == "train_rest":  # the group goes on with its finished members only
        if len(group.samples) == 1:  # nothing finished is left to train: the loop's on_abort drops it
            return False
        group.samples.remove(sample)
        client._check_generated(group)
        return True
    # "forget": the parent's output is discarded, and the group with it, with no record of it
    group.dropped = True
    for s in group.samples:
        s.finished = True
        client.samples.pop(s.req_id, None)
    client._check_generated(group)
    client.on_group_dropped(group)
    return True
