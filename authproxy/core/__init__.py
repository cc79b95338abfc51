"""The pure core: decisions on values, with no I/O, no clock of its own and no framework.

- `paths`: the canonical request target every rule judges and the upstream receives, and path rules;
- `headers`: which request headers reach an upstream, the client IP behind trusted proxies;
- `redirect`: which return URLs are safe after a login or sign-out;
- `seal`: authenticated encryption of cookies and tokens, with key rotation;
- `transaction`: the login transaction (state, PKCE verifier, return URL) in its own sealed cookie;
- `csrf`: the sign-out form's token;
- `user`, `authorization`: what CentralAuth says about a user, and whether the rules let them in.

Nothing here imports aiohttp, pydantic, redis or any module of the proxy outside this package: the
import contracts in pyproject.toml (`make lint`) and `tests/test_layers.py` hold it to that.
"""
