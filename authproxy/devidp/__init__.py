"""A faithful fake of CentralAuth for tests, CI and local demos (`authproxy devidp`).

It implements the relying-party side of the protocol (login UI, verify, userinfo, logout, direct
authentication, discovery) plus a test-control API under `/_devidp/`. It imports nothing from the
rest of authproxy, so it can stand in for CentralAuth in front of any relying party.
"""

from .app import make_app
from .settings import AppRegistration, DevIdpSettings

__all__ = ["AppRegistration", "DevIdpSettings", "make_app"]
