"""What a codec may know about the chunk it encodes besides its values.

The container builds a :class:`ChunkContext` per chunk (its view range, the scan's
angles and geometry, scan-wide statistics) and passes it to :meth:`Codec.encode`.  A
codec that uses any of it must write what its decoder needs into the chunk's own
stream: a chunk decodes from the codec config and its bytes alone (Zarr hands a codec
nothing else), so ``decode`` never receives a context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..scan import Geometry


@dataclass(frozen=True)
class ChunkContext:
    """Context of one chunk: views ``start:stop`` of a scan of ``scan_shape``.

    ``angles`` are the chunk's view angles in radians (None if unknown), ``geometry``
    the scan's acquisition geometry, ``data_range`` the scan's max - min (PSNR targets
    aim at the same MSE in every chunk), ``value_range`` the scan's (min, max),
    ``metadata`` the scan's metadata (read-only by convention).
    """

    start: int = 0
    stop: int | None = None
    scan_shape: tuple[int, ...] | None = None
    angles: np.ndarray | None = None
    geometry: Geometry | None = None
    data_range: float | None = None
    value_range: tuple[float, float] | None = None
    metadata: dict[str, Any] | None = None

    @property
    def n_views(self) -> int | None:
        return None if self.stop is None else self.stop - self.start

    def views(self, start: int, stop: int) -> ChunkContext:
        """The context of views ``start:stop`` of this chunk (relative indices)."""
        angles = None if self.angles is None else self.angles[start:stop]
        return ChunkContext(
            self.start + start,
            self.start + stop,
            self.scan_shape,
            angles,
            self.geometry,
            self.data_range,
            self.value_range,
            self.metadata,
        )
