from .scheduling_sit_common import SiTSchedulerMixin
from .scheduling_sit_euler import SiTEulerScheduler
from .scheduling_sit_euler_maruyama import SiTEulerMaruyamaScheduler
from .scheduling_sit_heun import SiTHeunScheduler

__all__ = [
    "SiTEulerMaruyamaScheduler",
    "SiTEulerScheduler",
    "SiTHeunScheduler",
    "SiTSchedulerMixin",
]
