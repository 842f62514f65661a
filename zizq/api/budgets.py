"""Budgets (pro, 0.7): /budgets, /budgets/{key}, /jobs/{id}/budgets[/{key}] and, for
every job a filter matches, /jobs/budgets[/{key}]?<filters>.

Thin: every route checks the license (403 without one), parses the body
(zizq.queue.budget_policy) and calls the budget book or the engine. Changes
of policies wait for writes already handed to the commit thread, so the book
judges "what draws on this budget" against every enqueue acknowledged so far.
"""

from __future__ import annotations

from typing import Any

import falcon

from zizq.api import params
from zizq.api.codec import read_parsed, respond, response_type
from zizq.license import Feature
from zizq.queue import Engine
from zizq.queue.budget_policy import (
    DEFAULT_COST,
    MAX_COST,
    Binding,
    parse_bindings,
    parse_key,
    parse_policy,
)
from zizq.queue.errors import InvalidInput


class _Licensed:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _allow(self, req: falcon.Request) -> str:
        """The response media type, once the license allows budgets (403 otherwise)."""
        media = response_type(req)
        self._engine.license.require(Feature.BUDGETS)
        return media


class BudgetCollection(_Licensed):
    """GET /budgets"""

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        media = self._allow(req)
        respond(req, resp, {"budgets": self._engine.budgets.list()}, 200, media)


class BudgetItem(_Licensed):
    """GET, POST (create; 409 if taken), PUT (replace whole), PATCH (merge), DELETE."""

    async def on_get(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        media = self._allow(req)
        respond(req, resp, self._engine.budgets.get(key).view(), 200, media)

    async def on_post(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        media = self._allow(req)
        key = parse_key(key)
        policy = await read_parsed(req, lambda body, _: parse_policy(body))
        await self._engine.committer.drain()
        respond(req, resp, self._engine.budgets.create(key, policy).view(), 201, media)

    async def on_put(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        media = self._allow(req)
        key = parse_key(key)
        policy = await read_parsed(req, lambda body, _: parse_policy(body))
        await self._engine.committer.drain()
        budget, _ = self._engine.budgets.replace(key, policy)
        respond(req, resp, budget.view(), 200, media)

    async def on_patch(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        media = self._allow(req)
        body = await read_parsed(req, lambda body, _: body)
        await self._engine.committer.drain()
        respond(req, resp, self._engine.budgets.patch(key, body).view(), 200, media)

    async def on_delete(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        self._allow(req)
        await self._engine.committer.drain()
        self._engine.budgets.delete(key)
        resp.status = 204


def _one_binding(body: Any, key: str) -> Binding:
    """A binding from a body that may omit `key` (it is in the path)."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise InvalidInput("body: must be an object")
    if body.get("key") not in (None, key):
        raise InvalidInput("key: differs from the budget key in the path")
    (binding,) = parse_bindings([{**body, "key": key}])
    return binding


def _cost_patch(body: Any) -> int:
    if not isinstance(body, dict):
        raise InvalidInput("body: must be an object with a cost")
    if "cost" not in body:
        raise InvalidInput("cost: is required")
    cost = body["cost"]
    if cost is None:
        return DEFAULT_COST  # a merge patch's null: back to the default
    if type(cost) is not int or not 1 <= cost <= MAX_COST:
        raise InvalidInput(f"cost: must be an integer between 1 and {MAX_COST}")
    return cost


def _bindings_body(body: Any) -> list[Binding]:
    if isinstance(body, dict):
        if "budgets" not in body:
            raise InvalidInput("budgets: is required (an array; [] unbinds every budget)")
        return parse_bindings(body["budgets"])
    return parse_bindings(body)  # a bare array is accepted too


class JobBudgetCollection(_Licensed):
    """POST (bind one, key in the body), PUT (replace the set), DELETE (clear)
    /jobs/{id}/budgets"""

    async def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        media = self._allow(req)
        (binding,) = await read_parsed(req, lambda body, _: _single(body))
        job = await self._engine.bind_job_budget(job_id, binding, replace=False)
        respond(req, resp, job, 200, media)

    async def on_put(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        media = self._allow(req)
        bindings = await read_parsed(req, lambda body, _: _bindings_body(body))
        respond(req, resp, await self._engine.set_job_budgets(job_id, bindings), 200, media)

    async def on_delete(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        media = self._allow(req)
        respond(req, resp, await self._engine.set_job_budgets(job_id, []), 200, media)


def _single(body: Any) -> list[Binding]:
    if not isinstance(body, dict):
        raise InvalidInput("body: must be an object with a key")
    return parse_bindings([body])


class JobBudgetItem(_Licensed):
    """POST (bind; 409 if bound), PUT (bind or replace), PATCH (cost), DELETE (unbind)
    /jobs/{id}/budgets/{key}"""

    async def _bind(
        self, req: falcon.Request, resp: falcon.Response, job_id: str, key: str, replace: bool
    ) -> None:
        media = self._allow(req)
        key = parse_key(key)
        binding = await read_parsed(req, lambda body, _: _one_binding(body, key), required=False)
        job = await self._engine.bind_job_budget(job_id, binding, replace=replace)
        respond(req, resp, job, 200, media)

    async def on_post(
        self, req: falcon.Request, resp: falcon.Response, job_id: str, key: str
    ) -> None:
        await self._bind(req, resp, job_id, key, replace=False)

    async def on_put(
        self, req: falcon.Request, resp: falcon.Response, job_id: str, key: str
    ) -> None:
        await self._bind(req, resp, job_id, key, replace=True)

    async def on_patch(
        self, req: falcon.Request, resp: falcon.Response, job_id: str, key: str
    ) -> None:
        media = self._allow(req)
        cost = await read_parsed(req, lambda body, _: _cost_patch(body))
        job = await self._engine.set_job_budget_cost(job_id, key, cost)
        respond(req, resp, job, 200, media)

    async def on_delete(
        self, req: falcon.Request, resp: falcon.Response, job_id: str, key: str
    ) -> None:
        media = self._allow(req)
        respond(req, resp, await self._engine.unbind_job_budget(job_id, key), 200, media)


class _Filtered(_Licensed):
    """The filter of a change to every matching job, as DELETE /jobs takes it."""

    def _filter(self, req: falcon.Request):
        params.reject_unknown(req, params.FILTER_PARAMS)
        return params.job_filter(req)


class JobsBudgetCollection(_Filtered):
    """DELETE /jobs/budgets?<filters>: every binding of every matching queued job."""

    async def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        media = self._allow(req)
        change = await self._engine.clear_jobs_budgets(self._filter(req))
        respond(req, resp, change, 200, media)


class JobsBudgetItem(_Filtered):
    """POST (bind; bound jobs skipped), PUT (bind or replace), PATCH (cost), DELETE
    (unbind) /jobs/budgets/{key}?<filters>; answers {changed, blocked}, `blocked`
    naming in-flight jobs to retry."""

    async def _bind(
        self, req: falcon.Request, resp: falcon.Response, key: str, replace: bool
    ) -> None:
        media = self._allow(req)
        key = parse_key(key)
        job_filter = self._filter(req)
        binding = await read_parsed(req, lambda body, _: _one_binding(body, key), required=False)
        change = await self._engine.bind_jobs_budget(job_filter, binding, replace=replace)
        respond(req, resp, change, 200, media)

    async def on_post(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        await self._bind(req, resp, key, replace=False)

    async def on_put(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        await self._bind(req, resp, key, replace=True)

    async def on_patch(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        media = self._allow(req)
        key = parse_key(key)
        job_filter = self._filter(req)
        cost = await read_parsed(req, lambda body, _: _cost_patch(body))
        change = await self._engine.set_jobs_budget_cost(job_filter, key, cost)
        respond(req, resp, change, 200, media)

    async def on_delete(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        media = self._allow(req)
        key = parse_key(key)
        change = await self._engine.unbind_jobs_budget(self._filter(req), key)
        respond(req, resp, change, 200, media)
