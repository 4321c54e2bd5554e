"""The bodies and answers of the cases API (ingest/api/cases.py): pydantic at the boundary."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ingest.cases.stats import CaseGroup
from ingest.cases.views import CaseView
from rules.cases import CaseEvent
from rules.model import Severity

AREA_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Note = Annotated[str, Field(max_length=1000)]
PhotoId = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class NewCase(BaseModel):
    """A case reported by hand (title, description, grid, place) or filed from an alert
    (``alert_id`` alone, operators only)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "title": "井盖缺失",
                    "description": "人行道井盖缺失，已设警示",
                    "grid": "430502001001-01",
                    "lat": 27.2389,
                    "lon": 111.4672,
                },
                {"alert_id": "A-1a2b3c4d5e6f"},
            ]
        },
    )

    alert_id: Annotated[str, Field(pattern=r"^A-[0-9a-f]{1,30}$")] | None = None
    title: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    description: Annotated[str, Field(max_length=2000)] = ""
    grid: Annotated[str, Field(pattern=AREA_ID)] | None = None
    lat: Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)] | None = None
    lon: Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)] | None = None
    severity: Severity = Severity.WARNING

    @model_validator(mode="after")
    def _one_kind(self) -> NewCase:
        if self.alert_id is not None:
            if self.title is not None or self.grid is not None:
                raise ValueError("a case from an alert takes alert_id alone")
        elif self.title is None or self.grid is None:
            raise ValueError("a reported case needs title and grid (or alert_id alone)")
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon go together")
        return self


class DispatchBody(BaseModel):
    """Who to send it to: ``person/{username}``, ``department/{id}/{area}``, or
    ``department/{id}`` (its unit for the case's place)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"to": "department/flood_hq/430502", "note": "速派"}]},
    )

    to: Annotated[str, Field(min_length=3, max_length=200)]
    note: Note | None = None


class NoteBody(BaseModel):
    """An optional note."""

    model_config = ConfigDict(extra="forbid")

    note: Note | None = None


class RequiredNote(BaseModel):
    """A note that must be given (why it is sent back)."""

    model_config = ConfigDict(extra="forbid")

    note: Annotated[str, Field(min_length=1, max_length=1000)]


class ArriveBody(BaseModel):
    """Where the handler is."""

    model_config = ConfigDict(extra="forbid")

    lat: Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)]
    lon: Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)]
    note: Note | None = None


class HandleBody(BaseModel):
    """How it was dealt with, and the photos that show it (uploaded to the case first)."""

    model_config = ConfigDict(extra="forbid")

    note: Annotated[str, Field(min_length=1, max_length=1000)]
    photos: Annotated[list[PhotoId], Field(max_length=20)] = []


class CaseDetail(BaseModel):
    """A case and its history, oldest first."""

    case: CaseView
    history: list[CaseEvent]


class CaseChanged(BaseModel):
    """The case after a step, and the history row recorded."""

    case: CaseView
    event: CaseEvent


class CaseList(BaseModel):
    """Cases, overdue first, then by deadline, then newest."""

    cases: list[CaseView]


class PhotoSaved(BaseModel):
    """The stored photo's id (the SHA-256 of its content), attached to the case."""

    photo: str


class CaseStats(BaseModel):
    """Statistics per group."""

    groups: list[CaseGroup]
