"""Cron groups and entries (pro): /crons, /crons/{group}, /crons/{group}/entries[/{entry}].

Thin: every route checks the license (403 without one), parses the body
(zizq.queue.cron_spec) and calls the cron book (zizq.queue.cron).
"""

from __future__ import annotations

import falcon

from zizq.api.codec import read_parsed, respond, response_type
from zizq.license import Feature, LicenseState
from zizq.queue import cron_spec
from zizq.queue.cron import Crons


class _Licensed:
    def __init__(self, crons: Crons, license: LicenseState) -> None:
        self._crons = crons
        self._license = license

    def _allow(self, req: falcon.Request) -> str:
        """The response media type, once the license allows cron (403 otherwise)."""
        media = response_type(req)
        self._license.require(Feature.CRON_SCHEDULING)
        return media


def _group_name(group: str) -> str:
    return cron_spec.name_of(group, "group")


def _entry_name(entry: str) -> str:
    return cron_spec.name_of(entry, "entry")


class CronCollection(_Licensed):
    """GET /crons (group names), DELETE /crons (every group)."""

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        media = self._allow(req)
        respond(req, resp, {"crons": self._crons.names()}, 200, media)

    async def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        media = self._allow(req)
        respond(req, resp, {"deleted": await self._crons.delete_all()}, 200, media)


class CronGroupItem(_Licensed):
    """GET, PUT (replace whole), PATCH (merge), DELETE /crons/{group}."""

    async def on_get(self, req: falcon.Request, resp: falcon.Response, group: str) -> None:
        media = self._allow(req)
        respond(req, resp, self._crons.group(group).view(), 200, media)

    async def on_put(self, req: falcon.Request, resp: falcon.Response, group: str) -> None:
        media = self._allow(req)
        name = _group_name(group)
        definition = await read_parsed(req, cron_spec.parse_group)
        respond(req, resp, (await self._crons.put_group(name, definition)).view(), 200, media)

    async def on_patch(self, req: falcon.Request, resp: falcon.Response, group: str) -> None:
        media = self._allow(req)
        patch = await read_parsed(req, lambda body, _: cron_spec.parse_group_patch(body))
        respond(req, resp, (await self._crons.patch_group(group, patch)).view(), 200, media)

    async def on_delete(self, req: falcon.Request, resp: falcon.Response, group: str) -> None:
        self._allow(req)
        await self._crons.delete_group(group)
        resp.status = 204


class CronEntries(_Licensed):
    """POST /crons/{group}/entries: add one entry (409 if its name is taken)."""

    async def on_post(self, req: falcon.Request, resp: falcon.Response, group: str) -> None:
        media = self._allow(req)
        name = _group_name(group)
        definition = await read_parsed(
            req, lambda body, from_json: cron_spec.parse_entry(body, "", from_json)
        )
        entry = await self._crons.add_entry(name, definition)
        respond(req, resp, entry.view(), 201, media)


class CronEntryItem(_Licensed):
    """GET, PUT, PATCH, DELETE /crons/{group}/entries/{entry}."""

    async def on_get(
        self, req: falcon.Request, resp: falcon.Response, group: str, entry: str
    ) -> None:
        media = self._allow(req)
        respond(req, resp, self._crons.entry(group, entry).view(), 200, media)

    async def on_put(
        self, req: falcon.Request, resp: falcon.Response, group: str, entry: str
    ) -> None:
        media = self._allow(req)
        group_name, entry_name = _group_name(group), _entry_name(entry)
        definition = await read_parsed(
            req, lambda body, from_json: cron_spec.parse_entry(body, "", from_json, entry_name)
        )
        saved = await self._crons.put_entry(group_name, definition)
        respond(req, resp, saved.view(), 200, media)

    async def on_patch(
        self, req: falcon.Request, resp: falcon.Response, group: str, entry: str
    ) -> None:
        media = self._allow(req)
        paused = await read_parsed(req, lambda body, _: cron_spec.parse_entry_patch(body))
        saved = await self._crons.patch_entry(group, entry, paused)
        respond(req, resp, saved.view(), 200, media)

    async def on_delete(
        self, req: falcon.Request, resp: falcon.Response, group: str, entry: str
    ) -> None:
        self._allow(req)
        await self._crons.delete_entry(group, entry)
        resp.status = 204
