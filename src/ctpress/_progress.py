"""Progress bars that cost nothing when they are not shown (tqdm is imported only for a
bar that is drawn, so ``import ctpress`` and quiet runs stay light)."""

from __future__ import annotations

from typing import Any


class _NoBar:
    """Stands in for a progress bar when none is shown."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None

    def set_postfix_str(self, text: str) -> None:
        return None

    def close(self) -> None:
        return None


def progress_bar(total: int, desc: str, unit: str, shown: bool) -> Any:
    """A tqdm bar over ``total`` ``unit``s (a context manager with ``update``), or a
    silent stand-in."""
    if not shown:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc=desc)
