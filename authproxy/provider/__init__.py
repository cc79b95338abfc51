"""Everything that talks to CentralAuth: the back-channel client and the classification of its answers."""

from authproxy.provider.client import CentralAuthClient, Tokens
from authproxy.provider.user import User

__all__ = ["CentralAuthClient", "Tokens", "User"]
