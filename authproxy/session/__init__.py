"""Browser sessions: what a signed-in session holds, how it is sealed, and where it is stored.

Two stores sit behind one seam (`SessionStore`): the sealed cookie itself, or Redis.
"""

from authproxy.session.model import Session
from authproxy.session.seal import Sealer
from authproxy.session.store import CookieStore, SessionStore

__all__ = ["CookieStore", "Sealer", "Session", "SessionStore"]
