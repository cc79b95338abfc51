"""The fake's shared state, reachable from every handler through `request.app[CONTEXT]`.

`settings` is replaced as a whole when the control API changes it, so handlers read it through the
context on every request instead of keeping a reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from .clock import Clock
from .faults import FaultPlan
from .recorder import Recorder
from .settings import DevIdpSettings
from .store import Store


@dataclass
class Context:
    settings: DevIdpSettings
    clock: Clock = field(default_factory=Clock)
    store: Store = field(default_factory=Store)
    recorder: Recorder = field(default_factory=Recorder)
    faults: FaultPlan = field(default_factory=FaultPlan)


CONTEXT = web.AppKey("devidp", Context)


def context(request: web.Request) -> Context:
    return request.app[CONTEXT]


def base_url(request: web.Request, ctx: Context) -> str:
    """The fake's own base URL: `public_url` when configured, else the origin the request came to."""
    return ctx.settings.public_url or str(request.url.origin())
