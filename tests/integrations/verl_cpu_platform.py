"""A CPU platform for verl, for tests only: import it through ``VERL_USE_EXTERNAL_MODULES`` and set
``VERL_PLATFORM=cpu``.

verl 0.9.1 resolves its device (``cuda``/``npu``/...) through ``verl.plugin.platform``; it ships no CPU
platform (upstream PRs #2495 and #3405 are open). This one maps the device to ``cpu``, collectives to
gloo, the "current device" to ``torch.device("cpu")``, and answers the CUDA-only memory queries verl's
workers log as metrics with 0.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry


def _zero(*args, **kwargs) -> int:
    return 0


def _nothing(*args, **kwargs) -> None:
    return None


CPU_DEVICE_MODULE = SimpleNamespace(
    **{
        **{name: getattr(torch.cpu, name) for name in dir(torch.cpu) if not name.startswith("_")},
        # what verl's workers call on ``get_torch_device()`` and torch.cpu lacks
        "max_memory_allocated": _zero,
        "max_memory_reserved": _zero,
        "memory_allocated": _zero,
        "memory_reserved": _zero,
        "reset_peak_memory_stats": _nothing,
        "empty_cache": _nothing,
        "mem_get_info": lambda *args, **kwargs: (0, 0),
        "get_device_name": lambda *args, **kwargs: "CPU",  # verl's MFU metric looks up the device's FLOPS
        "manual_seed": torch.manual_seed,
        "manual_seed_all": torch.manual_seed,
    }
)
"""``torch.cpu`` plus no-op stand-ins for the CUDA memory queries."""


CPU = torch.device("cpu")


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    """verl on CPU: device ``cpu``, backend gloo, no profiler, no IPC."""

    device_name = "cpu"
    vendor_name = "cpu"

    @property
    def device_module(self):
        return CPU_DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def current_device(self) -> torch.device:
        return CPU  # verl passes it to ``.to(...)``; an int would mean ``cuda:<int>``

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index=None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0):
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "CPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self):
        return None
