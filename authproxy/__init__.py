"""authproxy: an authenticating reverse proxy for CentralAuth, built on aiohttp."""

__version__ = "0.1.0"
