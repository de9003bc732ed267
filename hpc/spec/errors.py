"""The error every bad config value, override or file becomes."""


class ConfigError(ValueError):
    """A bad config value, override or file. ``str()`` is one line naming the key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)
