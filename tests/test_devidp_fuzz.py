"""Property tests: arbitrary bytes where the fake expects a token, a Basic header or a form never give a 5xx.

Covers the robustness of the error contract (every failure is a proper error object): hypothesis
throws random tokens, Authorization values and form bodies at the back channel and the answer is
always a 4xx error object (or a 2xx), never a server error or a dropped connection.
"""

from __future__ import annotations

import base64

from conftest import DevIdp, Reply, basic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authproxy.devidp.errors import ERROR_CODES

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Header values must be printable on the wire (aiohttp refuses CR/LF itself), so they are drawn from
# visible latin-1 text; the base64 strategy reaches the decoder with arbitrary bytes inside.
HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=200
)
BASIC_VALUES = st.one_of(
    HEADER_TEXT,
    HEADER_TEXT.map(lambda text: "Basic " + text),
    st.binary(max_size=120).map(lambda raw: "Basic " + base64.b64encode(raw).decode()),
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=b",
        "multipart/form-data",
        "application/json",
        "text/plain",
        "application/octet-stream",
    ]
)


def assert_clean(reply: Reply) -> None:
    assert reply.status < 500, reply.text
    if reply.status >= 400:
        assert reply.json()["errorCode"] in ERROR_CODES


@FUZZ
@given(token=st.binary(max_size=600))
async def test_arbitrary_token_bytes(devidp: DevIdp, token: bytes) -> None:
    for path in ("/api/v1/userinfo?domain=https://app.example.com", "/api/v1/logout"):
        assert_clean(await devidp.call("POST", path, data=token, headers={"Authorization": basic()}))


@FUZZ
@given(authorization=BASIC_VALUES)
async def test_arbitrary_authorization_headers(devidp: DevIdp, authorization: str) -> None:
    for path in ("/api/v1/userinfo", "/api/v1/verify", "/api/v1/authenticate_direct"):
        reply = await devidp.call(
            "POST", path, data=b"code=x&redirect_uri=y", headers={"Authorization": authorization}
        )
        assert_clean(reply)


@FUZZ
@given(body=st.binary(max_size=600), content_type=CONTENT_TYPES)
async def test_arbitrary_form_bodies(devidp: DevIdp, body: bytes, content_type: str) -> None:
    headers = {"Authorization": basic(), "Content-Type": content_type}
    for path in ("/api/v1/verify", "/api/v1/authenticate_direct"):
        assert_clean(await devidp.call("POST", path, data=body, headers=headers))
    login = devidp.login_url()[len(devidp.url) :]
    reply = await devidp.call("POST", login, data=body, headers={"Content-Type": content_type})
    assert reply.status < 500, reply.text
