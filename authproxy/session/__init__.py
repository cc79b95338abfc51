"""Browser sessions: what a signed-in session holds, how it is sealed, and where it is stored.

Two stores sit behind one seam (`SessionStore`): the sealed cookie itself, or Redis. The Redis store's
module is imported only by a process configured for it: the redis package costs each worker some 6 MB
that a cookie-store deployment has no use for.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, cast

from authproxy.session.model import Session
from authproxy.session.seal import Sealer
from authproxy.session.store import CookieStore, SessionStore

if TYPE_CHECKING:
    from authproxy.session.redis import RedisStore

__all__ = ["CookieStore", "Sealer", "Session", "SessionStore", "redis_store"]


def redis_store(store: SessionStore) -> RedisStore | None:
    """`store` if it is the Redis store, else None; never imports the redis package itself."""
    module = sys.modules.get("authproxy.session.redis")
    if module is None:
        return None  # never imported, so `store` cannot be one
    return cast("RedisStore", store) if isinstance(store, module.RedisStore) else None
