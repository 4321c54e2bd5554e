"""The web pages (overview, device, case board, grid worker) served by ``citysense serve``
under ``/ui/``.

Static HTML and plain JavaScript modules, no build step. The pages hold no data: they are
public, and everything they show comes from the token-protected API, called by the browser
with the bearer token the user typed in. Kept out of the OpenAPI document.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse
from starlette.exceptions import HTTPException

__all__ = ["PAGE_CACHE", "STATIC_CACHE", "router"]

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
PAGES = ("index.html", "device.html", "worker.html", "cases.html", "river.html", "traffic.html")
STATIC_CACHE = "public, max-age=86400"  # scripts, styles and vendored libraries
PAGE_CACHE = "no-cache"  # the pages themselves: always revalidated

# Only these files are ever served: a fixed list read at import, so no path can leave the folder.
STATIC_FILES = {
    p.relative_to(STATIC_DIR).as_posix(): p
    for p in sorted(STATIC_DIR.rglob("*"))
    if p.is_file() and p.suffix in {".js", ".css", ".png"}
}

router = APIRouter(prefix="/ui", include_in_schema=False)


def _page(name: str) -> FileResponse:
    return FileResponse(HERE / name, media_type="text/html", headers={"Cache-Control": PAGE_CACHE})


@router.get("")
async def ui_root() -> RedirectResponse:
    """``/ui`` → ``/ui/``, so the pages' relative links resolve."""
    return RedirectResponse("/ui/", status_code=308)


@router.get("/")
async def overview() -> FileResponse:
    """The overview page."""
    return _page("index.html")


@router.get("/static/{path:path}")
async def static(path: str) -> FileResponse:
    """A script, style sheet or vendored library, cached for a day."""
    found = STATIC_FILES.get(path)
    if found is None:
        raise HTTPException(404, "not found")
    return FileResponse(found, headers={"Cache-Control": STATIC_CACHE})


@router.get("/{name}")
async def page(name: str) -> FileResponse:
    """One of the pages by file name."""
    if name not in PAGES:
        raise HTTPException(404, "not found")
    return _page(name)
