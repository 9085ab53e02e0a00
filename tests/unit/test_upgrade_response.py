"""The shared 101 response given to picows writes the bytes picows' own would."""

from picows import WSUpgradeResponse, WSUpgradeResponseWithListener

from fastws.server.http import _SWITCHING_PROTOCOLS


def test_shared_101_response_matches_picows():
    accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    theirs = WSUpgradeResponse.create_101_response()
    theirs.headers["Sec-WebSocket-Accept"] = accept
    _SWITCHING_PROTOCOLS.headers["Sec-WebSocket-Accept"] = accept
    assert _SWITCHING_PROTOCOLS.to_bytes() == theirs.to_bytes()
    assert _SWITCHING_PROTOCOLS._accept == ""  # nothing kept between upgrades
    assert WSUpgradeResponseWithListener(_SWITCHING_PROTOCOLS, object()).response is _SWITCHING_PROTOCOLS
