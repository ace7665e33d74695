"""Reading one typed value out of a parsed TOML table, or a :class:`ConfigError` naming its key.

Every reader takes the table ``t``, the dotted name of the table (``where``: ``"server"``,
``"routes[1]"``) and the key, so an error says ``routes[1].timeout_s`` and what was expected.
A missing key gives the default; a present one must have the right type (``true`` is not a
number here, although it is an ``int`` to Python). ``${NAME}`` references are replaced by
:func:`interpolate`, for the few keys that may hold secrets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, TypeVar, cast, get_args

from streamhop.middleware.errors import ConfigError

_ENV_REF: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

_C = TypeVar("_C", bound=str)
_T = TypeVar("_T")


def table(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """The top-level table ``[name]`` of ``data`` (empty when absent).

    Raises:
        ConfigError: ``name`` is there but is not a table.
    """
    t = data.get(name, {})
    if not isinstance(t, dict):
        raise ConfigError(name, f"expected a table ([{name}]), got {type(t).__name__}")
    return t


def no_unknown(where: str, t: Mapping[str, Any], known: set[str]) -> None:
    """Refuse a key of ``t`` that is not in ``known`` (``where`` ``""``: the top level).

    Raises:
        ConfigError: the first unknown key, dotted, with the sorted list of known ones.
    """
    for key in t:
        if key not in known:
            dotted = f"{where}.{key}" if where else key
            raise ConfigError(dotted, f"unknown key; expected one of {sorted(known)}")


def read_bool(t: Mapping[str, Any], where: str, key: str, default: bool) -> bool:
    """``t[key]`` as ``true`` or ``false``.

    Raises:
        ConfigError: any other value.
    """
    return _typed(t, where, key, default, bool, "true or false")


def read_choice(t: Mapping[str, Any], where: str, key: str, default: _C, kind: Any) -> _C:
    """``t[key]``: a string among the values of the ``Literal`` type ``kind`` (the config
    model's type of that key: the allowed values are written once, there).

    Raises:
        ConfigError: any other value; the message lists the allowed ones.
    """
    allowed = get_args(kind)
    value = t.get(key, default)
    if value not in allowed:
        raise ConfigError(
            f"{where}.{key}",
            f"expected one of {', '.join(repr(a) for a in allowed)}, got {value!r}",
        )
    return cast(_C, value)


def read_str(t: Mapping[str, Any], where: str, key: str, default: str) -> str:
    """``t[key]`` as a string.

    Raises:
        ConfigError: not a string.
    """
    return _typed(t, where, key, default, str, "a string")


def _typed(
    t: Mapping[str, Any], where: str, key: str, default: _T, kind: type[_T], expected: str
) -> _T:
    """``t[key]`` (``default`` when absent), refused unless an instance of ``kind``."""
    value = t.get(key, default)
    if not isinstance(value, kind):
        raise ConfigError(f"{where}.{key}", f"expected {expected}, got {value!r}")
    return value


def optional_str(t: Mapping[str, Any], where: str, key: str) -> str | None:
    """``t[key]`` as a string, ``None`` when the key is absent.

    Raises:
        ConfigError: present but not a string.
    """
    if key not in t:
        return None
    return read_str(t, where, key, "")


def read_num(
    t: Mapping[str, Any], where: str, key: str, default: float, *, minimum: float
) -> float:
    """``t[key]``: an integer or float, at least ``minimum`` (in the key's own unit).

    Raises:
        ConfigError: not a number (a boolean is not one), or below ``minimum``.
    """
    value = t.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}.{key}", f"expected a number, got {value!r}")
    _at_least(where, key, value, minimum)
    return float(value)


def read_int(t: Mapping[str, Any], where: str, key: str, default: int, *, minimum: int) -> int:
    """``t[key]``: an integer, at least ``minimum``.

    Raises:
        ConfigError: not an integer (a boolean is not one), or below ``minimum``.
    """
    value = t.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}.{key}", f"expected an integer, got {value!r}")
    _at_least(where, key, value, minimum)
    return value


def _at_least(where: str, key: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise ConfigError(f"{where}.{key}", f"must be >= {minimum}, got {value}")


def interpolate(key: str, value: str, env: Mapping[str, str]) -> str:
    """``value`` with every ``${NAME}`` replaced by ``env[NAME]`` (no escaping, no defaults).

    Args:
        key: the dotted key ``value`` came from, for the error.
        value: the configured string.
        env: the environment to read.

    Raises:
        ConfigError: a referenced variable is not set.
    """

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ConfigError(key, f"environment variable {name} is not set")
        return env[name]

    return _ENV_REF.sub(sub, value)
