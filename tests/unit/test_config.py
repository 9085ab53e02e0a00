import pytest

from fastws.config import Settings
from fastws.exceptions import ConfigError


def test_defaults():
    """The server binds loopback 8765 by default."""
    settings = Settings.load({})
    assert (settings.host, settings.port) == ("127.0.0.1", 8765)


def test_flags_override_environment_override_defaults():
    """Flags win over FASTWS_* variables, which win over defaults; None flags are ignored."""
    env = {"FASTWS_PORT": "9000", "FASTWS_HOST": "::1", "FASTWS_MAX_SUBSCRIPTIONS": "10"}
    settings = Settings.load(env, port=9100, host=None)
    assert (settings.host, settings.port, settings.limits.max_subscriptions) == ("::1", 9100, 10)


@pytest.mark.parametrize(
    "env",
    [{"FASTWS_PORT": "x"}, {"FASTWS_PORT": "70000"}, {"FASTWS_MAX_MESSAGE_SIZE": "0"}, {"FASTWS_MAX_BATCH": "-1"}],
)
def test_invalid_values_are_config_errors(env):
    """Unreadable or out-of-range settings raise ConfigError naming the setting."""
    with pytest.raises(ConfigError):
        Settings.load(env)


def test_unknown_setting():
    """A misspelt setting is an error, not silently ignored."""
    with pytest.raises(ConfigError):
        Settings.from_dict({"prot": 1})
