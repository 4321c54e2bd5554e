"""The settings as an operator sees them: ``citysense config show`` and the example file.

``config show`` prints each setting's effective value and the source it came from, asking
pydantic-settings' own sources in the model's own order (so it cannot disagree with what the
service reads). ``example_toml`` writes ``citysense.example.toml`` from the model's field
descriptions, so the shipped example cannot drift from the model (a unit test compares them);
``python -m ingest.configview > citysense.example.toml`` regenerates it.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
)

from ingest.configfile import CONFIG_ENV, CitysenseTomlSource, is_path_field

MASK = "**********"
# A text setting with one of these words in its name is a secret even if typed as plain str.
SECRET_WORDS = frozenset({"password", "passwd", "secret", "key", "token"})


class ShownSetting(BaseModel):
    """One row of ``config show``."""

    name: str
    value: Any
    source: str  # default | file:<path> | env:CITYSENSE_X | dotenv | init


def is_secret(name: str, annotation: Any, value: Any) -> bool:
    """Masked: SecretStr values, and text whose field name has a secret word in it.

    A path (``mqtt_key_file``) or a count (``api_streams_per_token``) is not a secret even
    when its name has one of the words: it is shown, so an operator can check it.
    """
    if isinstance(value, SecretStr):
        return True
    return (
        isinstance(value, str)
        and not is_path_field(annotation)
        and (bool(SECRET_WORDS & set(name.lower().split("_"))))
    )


def _plain(value: Any) -> Any:
    """A value as JSON shows it."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def _label(source: PydanticBaseSettingsSource, name: str, env_prefix: str) -> str:
    if isinstance(source, CitysenseTomlSource):
        return f"file:{source.path}"
    if isinstance(source, DotEnvSettingsSource):  # before EnvSettingsSource: it is one
        return "dotenv"
    if isinstance(source, EnvSettingsSource):
        return f"env:{env_prefix}{name.upper()}"
    if isinstance(source, InitSettingsSource):
        return "init"
    return type(source).__name__


def value_sources(
    settings_cls: type[BaseSettings], init_kwargs: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Each field's source, the first in the model's precedence that has it, else default."""
    sources = settings_cls.settings_customise_sources(
        settings_cls,
        init_settings=InitSettingsSource(settings_cls, dict(init_kwargs or {})),
        env_settings=EnvSettingsSource(settings_cls),
        dotenv_settings=DotEnvSettingsSource(settings_cls),
        file_secret_settings=SecretsSettingsSource(settings_cls),
    )
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    found = [(source, source()) for source in sources]
    result: dict[str, str] = {}
    for name in settings_cls.model_fields:
        result[name] = next(
            (_label(source, name, prefix) for source, data in found if name in data), "default"
        )
    return result


def shown_settings(
    settings: BaseSettings, init_kwargs: Mapping[str, Any] | None = None
) -> list[ShownSetting]:
    """The effective settings, secrets masked, each with its source."""
    fields = type(settings).model_fields
    sources = value_sources(type(settings), init_kwargs)
    rows: list[ShownSetting] = []
    for name, field in fields.items():
        value = getattr(settings, name)
        shown = MASK if is_secret(name, field.annotation, value) else _plain(value)
        rows.append(ShownSetting(name=name, value=shown, source=sources[name]))
    return rows


def render_json(rows: list[ShownSetting], config_file: Path | None) -> str:
    """``config show --json``: the file in use and ``{name: {value, source}}``."""
    data = {
        "config_file": str(config_file) if config_file else None,
        "settings": {r.name: {"value": r.value, "source": r.source} for r in rows},
    }
    return json.dumps(data, ensure_ascii=False, indent=2)


def render_text(rows: list[ShownSetting], config_file: Path | None) -> str:
    """``config show``: one aligned line per setting, ``name  value  source``."""
    values = [("unset" if r.value is None else json.dumps(r.value)) for r in rows]
    width_name = max(len(r.name) for r in rows)
    width_value = min(max(len(v) for v in values), 40)
    head = f"config file: {config_file or f'none (set {CONFIG_ENV} or add ./citysense.toml)'}"
    lines = [head]
    for row, value in zip(rows, values, strict=True):
        lines.append(f"{row.name:<{width_name}}  {value:<{width_value}}  {row.source}")
    return "\n".join(lines)


def toml_value(value: Any) -> str:
    """A default as a TOML literal (JSON's string escapes are valid TOML basic strings)."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(_plain(value)), ensure_ascii=False)


EXAMPLE_HEADER = f"""\
# citysense.example.toml: every setting of citysense, commented out at its default.
# Generated from ingest/settings.py by ingest.configview.example_toml(); a unit test keeps the
# two equal, so edit the model's descriptions, not this file.
#
# Copy it to citysense.toml (read from the working directory) or point {CONFIG_ENV} at it,
# and uncomment what you change. Keys are the CITYSENSE_* environment variables without the
# prefix, in lower case; a key that is not a setting is an error. Environment variables
# override this file. A relative path here is relative to this file's folder.
"""


def example_toml(settings_cls: type[BaseSettings]) -> str:
    """The commented example config file: each setting's description and default."""
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    parts = [EXAMPLE_HEADER]
    for name, field in settings_cls.model_fields.items():
        if not field.description:
            raise ValueError(f"setting {name!r} has no description for the example file")
        env = f"{prefix}{name.upper()}"
        lines = textwrap.wrap(
            field.description, width=94, initial_indent="## ", subsequent_indent="## "
        )
        if field.default is None:
            lines.append(f"## {name}: unset by default (env {env})")
        else:
            lines.append(f"# {name} = {toml_value(field.default)}  # env {env}")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def main() -> None:
    """``python -m ingest.configview > citysense.example.toml`` regenerates the example."""
    from ingest.settings import Settings

    sys.stdout.write(example_toml(Settings))


if __name__ == "__main__":
    main()
