"""On/off environment switches (``AFFJAX_*``), read the same way everywhere.

On: ``on``, ``1``, ``true``, ``yes``; off: ``off``, ``0``, ``false``, ``no``,
``none`` (any case, blanks around ignored). Unset or empty: the default. Any
other value is an error naming the variable and what to set, not a guess.
"""

from __future__ import annotations

import os

__all__ = ["OFF", "ON", "switch"]

ON = ("1", "on", "true", "yes")
OFF = ("0", "off", "false", "no", "none")


def switch(variable: str, default: bool | None, error: type[Exception] = ValueError) -> bool | None:
    """``$variable`` as on (``True``) or off (``False``); ``default`` when unset or empty.

    Raises:
        error: any other value, with a message that says what to do.
    """
    raw = os.environ.get(variable, "").strip()
    value = raw.lower()
    if not value:
        return default
    if value in ON:
        return True
    if value in OFF:
        return False
    raise error(
        f"{variable}={raw!r} is neither on nor off; set it to on or off, or unset it "
        "for the default"
    )
