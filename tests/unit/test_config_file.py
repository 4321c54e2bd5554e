"""The operator's config file ``citysense.toml`` (issue 15): precedence, strictness, paths,
``config show`` and the shipped example.

Unit tests: the file is read by the settings model in-process, before any broker or database
is involved, so the real stack would show nothing more.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

import pytest

from ingest.cli import main
from ingest.configfile import CONFIG_ENV, ConfigFileError, is_path_field
from ingest.configview import MASK, example_toml, is_secret, shown_settings, value_sources
from ingest.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "citysense.example.toml"
PATH_FIELDS = [n for n, f in Settings.model_fields.items() if is_path_field(f.annotation)]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No CITYSENSE_* from the caller, and a working directory without a citysense.toml."""
    for name in list(os.environ):
        if name.upper().startswith("CITYSENSE_"):
            monkeypatch.delenv(name)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def defaults() -> dict[str, object]:
    return {name: field.default for name, field in Settings.model_fields.items()}


def current(settings: Settings) -> dict[str, object]:
    return {name: getattr(settings, name) for name in Settings.model_fields}


def test_no_file_no_env_gives_the_defaults() -> None:
    assert current(Settings()) == defaults()
    assert set(value_sources(Settings).values()) == {"default"}


def test_citysense_toml_in_the_working_directory_is_read(clean_env: Path) -> None:
    path = write(clean_env / "citysense.toml", "mqtt_port = 1999\n")
    assert Settings().mqtt_port == 1999
    assert value_sources(Settings)["mqtt_port"] == f"file:{path}"


def test_empty_config_env_reads_no_file(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(clean_env / "citysense.toml", "mqtt_port = 1999\n")
    monkeypatch.setenv(CONFIG_ENV, "")
    assert Settings().mqtt_port == 1883


def test_precedence_init_then_env_then_file_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path / "etc" / "citysense.toml",
        'mqtt_port = 1111\nmqtt_host = "file-host"\nlog_level = "DEBUG"\n',
    )
    monkeypatch.setenv(CONFIG_ENV, str(path))
    monkeypatch.setenv("CITYSENSE_MQTT_PORT", "2222")
    monkeypatch.setenv("CITYSENSE_MQTT_HOST", "env-host")

    settings = Settings(mqtt_port=3333)
    assert (settings.mqtt_port, settings.mqtt_host) == (3333, "env-host")
    assert (settings.log_level, settings.batch_size) == ("DEBUG", 5000)

    sources = value_sources(Settings, {"mqtt_port": 3333})
    assert sources["mqtt_port"] == "init"
    assert sources["mqtt_host"] == "env:CITYSENSE_MQTT_HOST"
    assert sources["log_level"] == f"file:{path}"
    assert sources["batch_size"] == "default"


def test_unknown_key_is_an_error_naming_key_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "c.toml", '# ops\nmqtt_host = "h"\nmqtt_prot = 1884\n')
    monkeypatch.setenv(CONFIG_ENV, str(path))
    with pytest.raises(ConfigFileError) as caught:
        Settings()
    assert caught.value.line == 3
    assert str(caught.value) == (
        f"config file {path}:3: unknown setting 'mqtt_prot' (did you mean 'mqtt_port'?)"
    )


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("\n[mqtt]\nport = 1\n", "mqtt", 2),  # the model is flat: no sections
        ('CITYSENSE_MQTT_HOST = "h"\n', "CITYSENSE_MQTT_HOST", 1),  # keys drop the prefix
        ('MQTT_HOST = "h"\n', "MQTT_HOST", 1),  # and are lower case, as the field names
    ],
)
def test_sections_and_env_style_keys_are_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, key: str, line: int
) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(write(tmp_path / "c.toml", text)))
    with pytest.raises(ConfigFileError, match=f"unknown setting '{key}'") as caught:
        Settings()
    assert caught.value.line == line


def test_invalid_toml_names_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "c.toml", 'mqtt_host = "h"\n\nmqtt_port 1884\n')
    monkeypatch.setenv(CONFIG_ENV, str(path))
    with pytest.raises(ConfigFileError, match="not valid TOML") as caught:
        Settings()
    assert (caught.value.path, caught.value.line) == (path, 3)


def test_a_named_missing_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigFileError, match=r"nope\.toml: no such file \(named by CITYSENSE"):
        Settings()


def test_cli_exits_with_the_named_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "c.toml", "batch_sise = 10\n")
    monkeypatch.setenv(CONFIG_ENV, str(path))
    with pytest.raises(SystemExit) as caught:
        main(["config", "show"])
    assert str(caught.value.code) == (
        f"citysense: config file {path}:1: unknown setting 'batch_sise' "
        "(did you mean 'batch_size'?)"
    )


def test_a_bad_value_from_the_file_points_at_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "c.toml", 'mqtt_host = "h"\nmqtt_port = "abc"\n')
    monkeypatch.setenv(CONFIG_ENV, str(path))
    with pytest.raises(SystemExit) as caught:
        main(["config", "show"])
    message = str(caught.value.code).splitlines()
    assert message[:2] == ["citysense: bad CITYSENSE_* setting:", f"{path}:2: mqtt_port"]

    monkeypatch.setenv("CITYSENSE_MQTT_PORT", "xyz")  # now the bad value is the variable's
    with pytest.raises(SystemExit) as caught:
        main(["config", "show"])
    assert str(path) not in str(caught.value.code)
    assert "xyz" in str(caught.value.code)


def test_every_relative_path_in_the_file_is_relative_to_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert {"registry", "rules", "workers", "data_dir"} <= set(PATH_FIELDS)
    folder = tmp_path / "etc" / "citysense"
    body = "".join(f'{name} = "rel/{name}"\n' for name in PATH_FIELDS if name != "rules")
    body += f'rules = "{tmp_path / "abs" / "rules.yaml"}"\n'
    monkeypatch.setenv(CONFIG_ENV, str(write(folder / "citysense.toml", body)))

    settings = Settings()
    for name in PATH_FIELDS:
        if name != "rules":
            assert getattr(settings, name) == folder / "rel" / name, name
    assert settings.rules == tmp_path / "abs" / "rules.yaml"  # absolute: kept


def test_relative_path_through_a_relative_config_env_is_absolute(
    tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file's folder is fixed when it is read, so a later chdir cannot move the paths."""
    write(clean_env / "conf" / "citysense.toml", 'data_dir = "state"\n')
    monkeypatch.setenv(CONFIG_ENV, "conf/citysense.toml")
    assert Settings().data_dir == clean_env / "conf" / "state"


def test_relative_paths_from_env_stay_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "etc" / "citysense.toml", 'registry = "reg.yaml"\n')
    monkeypatch.setenv(CONFIG_ENV, str(path))
    monkeypatch.setenv("CITYSENSE_REGISTRY", "mine/reg.yaml")
    monkeypatch.setenv("CITYSENSE_DATA_DIR", "state")
    settings = Settings()
    assert (settings.registry, settings.data_dir) == (Path("mine/reg.yaml"), Path("state"))


def test_secrets_are_masked_in_config_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path / "c.toml",
        'dev_secret = "file-dev-secret-123"\nplate_key = "file-plate-key-456"\n'
        'mqtt_key_file = "tls/client.key"\n',
    )
    monkeypatch.setenv(CONFIG_ENV, str(path))
    monkeypatch.setenv("CITYSENSE_MQTT_PASSWORD", "env-mqtt-password-789")
    monkeypatch.setenv("CITYSENSE_INFLUX_TOKEN", "env-influx-token-000")
    secrets = ("file-dev-secret-123", "file-plate-key-456", "env-mqtt-password-789")

    rows = {r.name: r for r in shown_settings(Settings())}
    for name in ("dev_secret", "plate_key", "mqtt_password", "influx_token"):
        assert rows[name].value == MASK, name
    assert rows["influx_password"].value is None  # unset: nothing to hide, shown as unset
    assert rows["mqtt_key_file"].value == str(tmp_path / "tls" / "client.key")  # a path

    for argv in (["config", "show"], ["config", "show", "--json"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert not [s for s in (*secrets, "env-influx-token-000") if s in out]
        assert MASK in out


def test_plain_text_with_a_secret_word_in_its_name_is_masked() -> None:
    """The name rule, for a secret someone types as ``str``: not paths, not counts."""
    assert is_secret("webhook_token", str, "abc")
    assert is_secret("smtp_password", str | None, "abc")
    assert not is_secret("mqtt_key_file", Path | None, "tls/client.key")
    assert not is_secret("api_streams_per_token", int, 4)
    assert not is_secret("mqtt_host", str, "keyhost")


def test_config_show_json_names_each_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "c.toml", 'influx_org = "city"\nbatch_size = 10\n')
    monkeypatch.setenv(CONFIG_ENV, str(path))
    monkeypatch.setenv("CITYSENSE_BATCH_SIZE", "20")
    assert main(["config", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["config_file"] == str(path)
    got = shown["settings"]
    assert got["influx_org"] == {"value": "city", "source": f"file:{path}"}
    assert got["batch_size"] == {"value": 20, "source": "env:CITYSENSE_BATCH_SIZE"}
    assert got["mqtt_port"] == {"value": 1883, "source": "default"}
    assert set(got) == set(Settings.model_fields)


def test_config_show_text_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("config file: none")
    assert [line.split()[0] for line in lines[1:]] == list(Settings.model_fields)
    assert all(line.endswith("  default") for line in lines[1:])


def test_shipped_example_is_what_the_generator_writes() -> None:
    """Regenerate with ``.venv/bin/python -m ingest.configview > citysense.example.toml``."""
    assert EXAMPLE.read_text(encoding="utf-8") == example_toml(Settings)


def test_loading_the_shipped_example_gives_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(EXAMPLE))
    assert current(Settings()) == defaults()


def test_the_example_defaults_are_the_defaults_when_uncommented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every ``# key = value`` line, uncommented, parses and equals the model's default."""
    text = EXAMPLE.read_text(encoding="utf-8")
    set_line = re.compile(r"^# (\w+) = ", re.MULTILINE)
    unset_line = re.compile(r"^## (\w+): unset by default", re.MULTILINE)
    assert sorted(set_line.findall(text) + unset_line.findall(text)) == sorted(defaults())

    uncommented = set_line.sub(r"\1 = ", text)
    assert len(tomllib.loads(uncommented)) == len(set_line.findall(text))
    path = write(tmp_path / "etc" / "citysense.toml", uncommented)
    monkeypatch.setenv(CONFIG_ENV, str(path))

    expected = defaults()
    for name in PATH_FIELDS:
        if expected[name] is not None:
            expected[name] = path.parent / str(expected[name])
    assert current(Settings()) == expected
