import pytest

from fastws.channels import parse_channel, resolve_channel, tenant_channel, validate_tenant_id
from fastws.exceptions import ChannelError, ProtocolError


def test_bare_name_binds_to_the_tenant():
    """A bare channel name means NAME:T for the connection's tenant."""
    assert resolve_channel("ideas", "acme") == "ideas:acme"


def test_own_tenant_channel_is_kept():
    """NAME:T of the connection's own tenant resolves to itself."""
    assert resolve_channel("ideas:acme", "acme") == "ideas:acme"
    assert resolve_channel(tenant_channel("acme"), "acme") == "tenant:acme"


@pytest.mark.parametrize("channel", ["ideas:acme-evil", "ideas:acm", "tenant:other", "ideas:ACME"])
def test_other_tenants_channels_are_forbidden(channel):
    """Channels compare parsed tenants, never prefixes: a look-alike tenant is another tenant."""
    with pytest.raises(ChannelError) as info:
        resolve_channel(channel, "acme")
    assert info.value.code == "forbidden_channel"


@pytest.mark.parametrize(
    "channel",
    ["", ":", "ideas:", ":acme", "a:b:c", "with space", "x" * 65, "ideas:" + "t" * 65, "idé", "a\x00b", None, 5, ["a"]],
)
def test_malformed_channels_are_invalid(channel):
    """Anything outside NAME[:TENANT] with 1-64 [A-Za-z0-9_.-] parts is invalid_channel."""
    with pytest.raises(ChannelError) as info:
        parse_channel(channel)
    assert info.value.code == "invalid_channel"


@pytest.mark.parametrize("tenant", ["", "a:b", "a b", "t" * 65, None, 7])
def test_invalid_tenant_ids_are_refused(tenant):
    """Tenant ids follow the id grammar."""
    with pytest.raises(ProtocolError) as info:
        validate_tenant_id(tenant)
    assert info.value.code == "invalid_tenant_id"
