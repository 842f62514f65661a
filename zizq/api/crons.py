"""Cron groups and entries: a pro feature this build does not have yet.

The routes exist so that clients get the documented 403 without a license,
rather than a 404 they would read as "no such group". With a license the
answer is 404 with a message saying so: there are no cron groups to find.
"""

import falcon

from zizq.api.codec import response_type
from zizq.license import Feature, LicenseState
from zizq.queue import NotFound


class CronsNotYet:
    """Every method on /crons, /crons/{group}, /crons/{group}/entries[/{entry}]."""

    def __init__(self, license: LicenseState) -> None:
        self._license = license

    async def _refuse(self, req: falcon.Request, resp: falcon.Response, **_params: str) -> None:
        response_type(req)
        self._license.require(Feature.CRON_SCHEDULING)
        raise NotFound("cron scheduling is not available in this build yet")

    on_get = on_put = on_patch = on_delete = on_post = _refuse
