"""X-Forwarded-For believed only from trusted proxies; the loopback rule."""

from __future__ import annotations

import pytest

from fastws.exceptions import ConfigError
from fastws.proxies import TrustedProxies, is_loopback


def test_the_header_is_ignored_from_an_untrusted_peer():
    proxies = TrustedProxies.parse("10.0.0.0/8, 127.0.0.1")
    assert proxies.client("203.0.113.9", "127.0.0.1") == "203.0.113.9"
    assert TrustedProxies.parse("").client("127.0.0.1", "203.0.113.9") == "127.0.0.1"


def test_the_rightmost_untrusted_hop_is_the_client():
    proxies = TrustedProxies.parse("10.0.0.0/8,127.0.0.1")
    # the client wrote a fake first hop; the proxies appended what they saw
    assert proxies.client("127.0.0.1", "1.2.3.4, 198.51.100.7, 10.1.2.3") == "198.51.100.7"
    assert proxies.client("127.0.0.1", "10.0.0.5, 10.0.0.6") == "10.0.0.5"  # all trusted: the first
    assert proxies.client("::ffff:127.0.0.1", "2001:db8::1") == "2001:db8::1"
    assert proxies.client("127.0.0.1", "not-an-address") == "127.0.0.1"  # malformed: believe nothing


def test_loopback_and_bad_configuration():
    assert is_loopback("127.0.0.1") and is_loopback("127.3.4.5") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1") and not is_loopback("10.0.0.1") and not is_loopback("")
    with pytest.raises(ConfigError):
        TrustedProxies.parse("10.0.0.0/8, nginx")


def test_https_is_believed_from_a_trusted_proxy_only():
    proxies = TrustedProxies.parse("127.0.0.1")
    assert proxies.forwarded_https("127.0.0.1", "https") and proxies.forwarded_https("127.0.0.1", "HTTPS, http")
    assert not proxies.forwarded_https("127.0.0.1", "http") and not proxies.forwarded_https("127.0.0.1", None)
    assert not proxies.forwarded_https("203.0.113.9", "https")
    assert not TrustedProxies.parse("").forwarded_https("127.0.0.1", "https")
