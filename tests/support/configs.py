"""A minimal valid config file, for tests that write one and run `check-config` or `load` on it.

Its values are the ones tests replace to make it wrong (`VALID.replace(CLIENT_ID, ...)`), so they are
exported with it.
"""

from __future__ import annotations

CLIENT_ID = "3f1c2a9e-7b4d-4e8a-9c61-0d2b5e8f7a10"
CLIENT_SECRET = "5d41402abc4b2a76b9719d911017c5927e240de74eb0ad2b58bd5a1c2f7b3e91"
COOKIE_SECRET = "Zq3vJ0b8kR2mX5nT7wY1pL4sD6fH9gA0cE3uI8oK2jM"

# No warnings: loopback listen, a 64-character secret, secure cookies, no rules.
VALID = f"""
[server]
listen = "127.0.0.1:4180"
public_url = "https://app.example.com"

[centralauth]
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"

[session]
cookie_secrets = ["{COOKIE_SECRET}"]

[[upstreams]]
url = "http://127.0.0.1:8080"
"""
