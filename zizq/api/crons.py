"""Cron groups and entries: a pro feature this build does not have yet.

The routes exist so that clients get the documented 403 rather than a 404,
which the official clients would read as "no such group".
"""

import falcon

from zizq.api.codec import response_type
from zizq.queue import ProFeatureRequired


class CronsNeedLicense:
    """Every method on /crons, /crons/{group}, /crons/{group}/entries[/{entry}]."""

    async def _refuse(self, req: falcon.Request, resp: falcon.Response, **_params: str) -> None:
        response_type(req)
        raise ProFeatureRequired("cron scheduling requires a pro license")

    on_get = on_put = on_patch = on_delete = on_post = _refuse
