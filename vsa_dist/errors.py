"""The error every layer may raise for input a person must fix; stages turn it into one line and exit 2."""


class ConfigError(ValueError):
    """A config that cannot run: unknown key, bad value, missing or unusable input."""
