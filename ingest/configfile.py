"""The operator's one config file, ``citysense.toml``: where it is and how its table is read.

Which file: ``CITYSENSE_CONFIG`` names it (it must exist); unset, ``./citysense.toml`` is read
if present and nothing otherwise; set but empty, no file is read at all (so a test or a one-off
command can ignore a ``./citysense.toml`` in its working directory).

The file is one flat table whose keys are the settings' field names without the
``CITYSENSE_`` prefix (``mqtt_port = 1883``), because the settings model is flat. It is read
strictly, as Home Assistant reads operator config: a key that is not a setting is an error
naming the key and its line, since a typo silently ignored is a setting silently at its
default. A relative path in the file is relative to the file's folder, so the file means the
same thing whichever directory the service is started from.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin

from pydantic_settings import TomlConfigSettingsSource

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

CONFIG_ENV = "CITYSENSE_CONFIG"
DEFAULT_CONFIG = Path("citysense.toml")

# tomllib (3.11) reports the position only inside its message.
_AT_LINE = re.compile(r"\(at line (\d+), column \d+\)")


class ConfigFileError(Exception):
    """The config file is missing, is not TOML, or names a key that is not a setting."""

    def __init__(self, path: Path, message: str, line: int | None = None) -> None:
        super().__init__(path, message, line)
        self.path = path
        self.message = message
        self.line = line

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"config file {where}: {self.message}"


def config_file_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """The config file to read (absolute), or ``None`` for none; a named missing file raises."""
    env = os.environ if environ is None else environ
    named = env.get(CONFIG_ENV)
    if named is not None:
        if not named.strip():
            return None
        path = Path(named).expanduser().absolute()
        if not path.is_file():
            raise ConfigFileError(path, f"no such file (named by {CONFIG_ENV})")
        return path
    return DEFAULT_CONFIG.absolute() if DEFAULT_CONFIG.is_file() else None


def is_path_field(annotation: Any) -> bool:
    """Whether a field holds a filesystem path (``Path`` or ``Path | None``)."""
    if annotation is Path:
        return True
    if get_origin(annotation) in (Union, UnionType):
        return any(arg is Path for arg in get_args(annotation))
    return False


def _line_of(text: str, key: str) -> int | None:
    """The line where ``key`` is assigned or opens a table, for the error message."""
    pattern = re.compile(rf"""^\s*\[*\s*["']?{re.escape(key)}["']?\s*[=\].]""")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return None


def parse_config(text: str, path: Path, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The file's table, checked against ``fields`` (name -> annotation), paths made absolute."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        found = _AT_LINE.search(str(e))
        message = _AT_LINE.sub("", str(e)).strip()
        raise ConfigFileError(
            path, f"not valid TOML: {message}", int(found.group(1)) if found else None
        ) from e
    for key in data:
        if key not in fields:
            near = difflib.get_close_matches(key.lower(), list(fields), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigFileError(path, f"unknown setting {key!r}{hint}", _line_of(text, key))
    folder = path.parent
    for key, value in data.items():
        if is_path_field(fields[key]) and isinstance(value, str):
            given = Path(value).expanduser()
            data[key] = given if given.is_absolute() else folder / given
    return data


def where_set(keys: list[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """``PATH:LINE: key`` for each key whose value came from the config file, not the env.

    Used to point a validation error (``mqtt_port = "abc"``) at the line to fix.
    """
    env = os.environ if environ is None else environ
    try:
        path = config_file_path(env)
        text = path.read_text(encoding="utf-8") if path else ""
    except (ConfigFileError, OSError, UnicodeDecodeError):
        return []
    in_env = {name.upper() for name in env}
    found: list[str] = []
    for key in dict.fromkeys(keys):
        line = _line_of(text, key)
        if path and line is not None and f"CITYSENSE_{key.upper()}" not in in_env:
            found.append(f"{path}:{line}: {key}")
    return found


class CitysenseTomlSource(TomlConfigSettingsSource):
    """pydantic-settings' TOML source, read strictly and with paths relative to the file."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        self.path = path
        self._fields = {name: f.annotation for name, f in settings_cls.model_fields.items()}
        # toml_file=None reads nothing: no file is a source with no values, not an error.
        super().__init__(settings_cls, toml_file=path)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        path = Path(str(file_path))
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigFileError(path, f"cannot read: {e}") from e
        return parse_config(text, path, self._fields)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path})"
