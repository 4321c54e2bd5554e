"""The cases file (``config/cases.yaml``, ``CITYSENSE_CASES``): step deadlines per severity.

Read strictly like every operator file (unknown keys are problems), and every problem names the
file, the entry and the field (devices/problems.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from devices.problems import FileProblems, Problem
from rules.cases import CaseDeadlines


class CaseConfig(BaseModel):
    """What ``config/cases.yaml`` holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deadlines: CaseDeadlines


class CaseConfigError(FileProblems):
    """A cases file that cannot be used; ``problems`` lists everything found."""

    what = "the cases file"


def parse_case_config(data: Any, file: str = "<cases>") -> CaseConfig:
    """Build the config from parsed YAML; CaseConfigError listing every problem."""
    if not isinstance(data, dict):
        raise CaseConfigError([Problem(file, "(top)", "(file)", "must be a mapping")])
    try:
        return CaseConfig.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors(include_url=False):
            loc = [str(p) for p in err["loc"]]
            entry = loc[0] if loc else "(top)"
            field = ".".join(loc[1:]) or "(section)"
            problems.append(Problem(file, entry, field, err["msg"]))
        raise CaseConfigError(problems) from None


def load_case_config(path: Path) -> CaseConfig:
    """Load and check a cases YAML file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise CaseConfigError([Problem(str(path), "(file)", "(yaml)", str(e))]) from None
    except UnicodeDecodeError as e:  # saved in GBK, say
        raise CaseConfigError([Problem(str(path), "(file)", "(read)", f"not UTF-8: {e}")]) from None
    except OSError as e:
        raise CaseConfigError(
            [Problem(str(path), "(file)", "(read)", e.strerror or str(e))]
        ) from None
    return parse_case_config(data, str(path))
