"""A case as the API and the announcements show it: the stored case and what is computed at
read (``overdue``: its step's deadline has passed, or passed once and the step is not yet done)."""

from __future__ import annotations

from rules.cases import Case, overdue


class CaseView(Case):
    """A case, with ``overdue`` computed when it was read."""

    overdue: bool = False


def view(case: Case, now_ms: int) -> CaseView:
    """``case`` as shown at ``now_ms``."""
    late = case.late or overdue(case, now_ms)
    return CaseView.model_validate({**dict(case), "overdue": late})
