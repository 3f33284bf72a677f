"""CT simulation: forward projector, phantoms and simulated scans.

* :mod:`.projector` -- ray-marching forward projector in torch (see its Conventions).
* :mod:`.phantom` -- Shepp-Logan and disc phantoms, HU conversion, the embedded volume.
* :mod:`.simulate` -- volume to noisy, quantised :class:`~ctpress.scan.Scan`.
"""

from .phantom import (
    MU_WATER_PER_MM,
    disc_phantom,
    hu_to_mu,
    load_default_volume,
    shepp_logan_2d,
    shepp_logan_3d,
)
from .projector import detector_rays, forward_project, forward_project_tensor
from .simulate import clinical_views, default_scan, fit_geometry, quantise_uint16, simulate_scan

__all__ = [
    "MU_WATER_PER_MM",
    "clinical_views",
    "default_scan",
    "detector_rays",
    "disc_phantom",
    "fit_geometry",
    "forward_project",
    "forward_project_tensor",
    "hu_to_mu",
    "load_default_volume",
    "quantise_uint16",
    "shepp_logan_2d",
    "shepp_logan_3d",
    "simulate_scan",
]
