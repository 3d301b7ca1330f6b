from .scheduling_sit_common import PATH_TYPES, SiTSchedulerMixin, path_coefficients
from .scheduling_sit_euler import SiTEulerScheduler
from .scheduling_sit_euler_maruyama import SiTEulerMaruyamaScheduler
from .scheduling_sit_heun import SiTHeunScheduler

__all__ = [
    "PATH_TYPES",
    "SiTEulerMaruyamaScheduler",
    "SiTEulerScheduler",
    "SiTHeunScheduler",
    "SiTSchedulerMixin",
    "path_coefficients",
]
