"""Batched jobs: the `when` and `fold` jq expressions, run in the jq sandbox.

A batched enqueue names a batch key; while that key's open job is still
ready (never dispatched, not scheduled), a later enqueue with the same key is
folded into it: `when` decides (truthy folds, falsy seals the open job and
starts a new one) and `fold` computes the merged payload. Both run with
`$existing` (the open job's payload) and `$new` (the incoming payload) bound
and `null` as input, in the same isolated worker processes as query filters.

Every batched enqueue dry-runs its own expressions on its own payload (as
both `$existing` and `$new`) so that a broken expression is a 422 at once,
not at the first fold. At fold time the open job's stored expressions apply
(the first enqueue's config wins for the life of a batch).

Rules beyond the reference's text (documented in the README):
- a fold whose result is not a valid payload (e.g. NaN, too deep) is a 422,
  nothing is written;
- a fold whose result is larger than MAX_FOLDED_PAYLOAD_BYTES seals the open
  job and starts a new one, so a batch never grows past what one request could
  have carried;
- jq numbers are doubles: integers past 2^53 lose precision in a fold.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import msgpack

from zizq.queue import payload as payload_model
from zizq.queue.errors import InvalidInput, Unprocessable
from zizq.queue.jq_sandbox import JqSandbox
from zizq.store import layout

MAX_FOLDED_PAYLOAD_BYTES = 2 * 1024 * 1024  # what one request body may carry
_KNOWN_GOOD = 4096  # expressions known to compile, remembered so a fold costs one jq call

# One program runs both expressions on [$existing, $new] and never fails as a
# whole: each expression's outputs are collected or its error caught, so one
# worker call answers the whole question. Only what decides is computed, as
# the reference does: `when`'s first output (an error or an endless loop after
# it never runs) and at most two outputs of `fold` (a second one is already
# wrong). The client's text starts on line 1 (error line numbers stay the
# client's) and ends before a newline (a trailing `#` comment cannot swallow
# our closing brackets).
_ONE = ". as [$existing, $new] | null | [({expr}\n)]"
_BOTH = (
    ". as [$existing, $new] | null | "
    "[(try ([limit(1; ({when}\n))] | [true, .]) catch [false, .]), "
    "(try ([limit(2; ({fold}\n))] | [true, .]) catch [false, .])]"
)


def index_key(batch_key: str) -> bytes:
    return layout.keyed_index_key(layout.INDEX_BATCH, batch_key)


@dataclass(slots=True)
class Outcome:
    """What the expressions said about one (existing, new) pair."""

    when_ok: bool
    when_value: Any  # the error message if not when_ok, else the outputs
    fold_ok: bool
    fold_value: Any

    @property
    def folds(self) -> bool:
        """`when` ran and its first output is truthy (an error or no output means seal)."""
        if not self.when_ok or not self.when_value:
            return False
        first = self.when_value[0]
        return first is not None and first is not False


class BatchExpressions:
    def __init__(self, jq: JqSandbox) -> None:
        self._jq = jq
        self._compiled: OrderedDict[str, None] = OrderedDict()

    async def _check_compiles(self, expression: str, field: str) -> None:
        if expression in self._compiled:
            self._compiled.move_to_end(expression)
            return
        try:
            await self._jq.acheck(_ONE.format(expr=expression), field)
        except InvalidInput as exc:
            raise Unprocessable(str(exc)) from None
        self._compiled[expression] = None
        if len(self._compiled) > _KNOWN_GOOD:
            self._compiled.popitem(last=False)

    async def evaluate(
        self, config: dict, pairs: list[tuple[Any, Any]], where: str = ""
    ) -> list[Outcome]:
        """Run a batch config's `when` and `fold` on each (existing, new) pair."""
        await self._check_compiles(config["when"], f"{where}batch.when")
        await self._check_compiles(config["fold"], f"{where}batch.fold")
        program = _BOTH.format(when=config["when"], fold=config["fold"])
        try:
            answers = await self._jq.aevaluate_many(
                program, [list(p) for p in pairs], f"{where}batch"
            )
        except InvalidInput as exc:  # over the time or memory limit, or no worker free
            raise Unprocessable(str(exc)) from None
        outcomes = []
        for ok, outputs in answers:
            if not ok or len(outputs) != 1:  # cannot happen: the program catches everything
                raise Unprocessable(f"batch: jq error: {outputs if not ok else 'no result'}")
            (when_ok, when_value), (fold_ok, fold_value) = outputs[0]
            outcomes.append(Outcome(when_ok, when_value, fold_ok, fold_value))
        return outcomes

    async def dry_run(self, specs_by_where: list[tuple[str, dict, Any]]) -> None:
        """422 unless each job's own `when` runs and its `fold` yields exactly one value,
        with its payload as both `$existing` and `$new`."""
        groups: dict[tuple[str, str], list[tuple[str, Any]]] = {}
        for where, config, value in specs_by_where:
            groups.setdefault((config["when"], config["fold"]), []).append((where, value))
        for (when, fold), members in groups.items():
            first_where = members[0][0]
            outcomes = await self.evaluate(
                {"when": when, "fold": fold}, [(v, v) for _, v in members], first_where
            )
            for (where, _), outcome in zip(members, outcomes, strict=True):
                self.check_dry_run(outcome, where)

    @staticmethod
    def check_dry_run(outcome: Outcome, where: str) -> None:
        """422 unless `when` ran without error and `fold` yielded exactly one value."""
        if not outcome.when_ok:
            raise Unprocessable(f"{where}batch.when: jq error: {outcome.when_value}")
        _single_fold_output(outcome, where)

    @staticmethod
    def folded_payload(outcome: Outcome, where: str) -> tuple[Any, bytes] | None:
        """The merged payload (value and msgpack), or None if it is too large to fold."""
        value = _single_fold_output(outcome, where)
        try:
            payload_model.check(value, from_json=True)
            packed = msgpack.packb(value)
        except payload_model.PayloadError as error:
            raise Unprocessable(error.describe(f"{where}batch.fold: the folded payload")) from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise Unprocessable(
                f"{where}batch.fold: the folded payload cannot be stored ({exc})"
            ) from None
        if len(packed) > MAX_FOLDED_PAYLOAD_BYTES:
            return None
        return value, packed


def _single_fold_output(outcome: Outcome, where: str) -> Any:
    if not outcome.fold_ok:
        raise Unprocessable(f"{where}batch.fold: jq error: {outcome.fold_value}")
    outputs = outcome.fold_value
    if len(outputs) != 1:
        got = "none" if not outputs else "more than one"
        raise Unprocessable(f"{where}batch.fold: must produce exactly one output (got {got})")
    return outputs[0]
