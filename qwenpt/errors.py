"""The error a user's mistake raises: it imports nothing of qwenpt, so every module can raise it.

Entry points (train.py, the converters, the planner) print its message as one line and exit 2.
"""


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the field and what to do."""


def check(ok: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``ok``: each concept's checks read as a list."""
    if not ok:
        raise ConfigError(message)
