"""Grid workers and the areas they are bound to (``config/workers.yaml``), checked at load.

Like the registry, the file is validated strictly (unknown keys are errors) and against the
registry (every area must exist), and every problem names the file, the entry and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from devices.kinds import Level
from devices.problems import FileProblems, Problem
from devices.registry import AreaId, Registry
from devices.topics import alert_topic

# A broker username: no ':' (the password file's separator), no whitespace (the ACL file's),
# no MQTT wildcard or level separator.
USERNAME_PATTERN = r"^[a-z][a-z0-9._-]{0,63}$"
Username = Annotated[str, Field(pattern=USERNAME_PATTERN)]


class Worker(BaseModel):
    """A grid worker: an MQTT user who may read the alerts of its areas only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    username: Username
    name: str = Field(min_length=1, max_length=64)
    areas: tuple[AreaId, ...] = Field(min_length=1)

    def alert_topics(self, registry: Registry) -> list[str]:
        """``alerts/{level}/{area}`` for each of its areas, in file order."""
        return [alert_topic(registry.areas[a].level, a) for a in self.areas]

    def levels(self, registry: Registry) -> list[Level]:
        """The level of each of its areas, in file order."""
        return [registry.areas[a].level for a in self.areas]


class WorkersError(FileProblems):
    """A workers file that cannot be used; ``problems`` lists everything found."""

    what = "the workers file"


def _entry_name(index: int, raw: Any) -> str:
    name = raw.get("username") if isinstance(raw, dict) else None
    return f"workers[{index}]" + (f" (username={name})" if name is not None else "")


def parse_workers(data: Any, registry: Registry, file: str = "<workers>") -> tuple[Worker, ...]:
    """Build the workers from parsed YAML; raise WorkersError listing every problem."""
    if not isinstance(data, dict):
        raise WorkersError([Problem(file, "(top)", "(file)", "must be a mapping")])
    problems = [Problem(file, "(top)", str(k), "unknown section") for k in data if k != "workers"]
    raw = data.get("workers")
    if not isinstance(raw, list):
        raise WorkersError([*problems, Problem(file, "workers", "(section)", "must be a list")])
    workers: list[Worker] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        entry = _entry_name(i, item)
        try:
            worker = Worker.model_validate(item)
        except ValidationError as e:
            for err in e.errors(include_url=False):
                where = ".".join(str(p) for p in err["loc"]) or "(entry)"
                problems.append(Problem(file, entry, where, err["msg"]))
            continue
        if worker.username in seen:
            problems.append(Problem(file, entry, "username", "duplicate username"))
        seen.add(worker.username)
        if worker.username in registry.devices:
            # Devices authenticate as their id: one broker user cannot be both.
            problems.append(Problem(file, entry, "username", "is also a device id"))
        for j, area in enumerate(worker.areas):
            if area not in registry.areas:
                problems.append(Problem(file, entry, f"areas.{j}", f"no area {area!r}"))
            elif area in worker.areas[:j]:
                problems.append(Problem(file, entry, f"areas.{j}", f"{area} is listed twice"))
        workers.append(worker)
    if problems:
        raise WorkersError(problems)
    return tuple(workers)


def load_workers(path: Path, registry: Registry) -> tuple[Worker, ...]:
    """Load and check a workers YAML file against ``registry``."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise WorkersError([Problem(str(path), "(file)", "(yaml)", str(e))]) from None
    except OSError as e:
        raise WorkersError([Problem(str(path), "(file)", "(read)", e.strerror or str(e))]) from None
    return parse_workers(data, registry, str(path))
