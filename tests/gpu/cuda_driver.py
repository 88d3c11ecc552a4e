"""What devices this process sees, asked of the CUDA driver itself (ctypes and libcuda:
no extra package). A GPU worker of the kit must see exactly one: its own.

cuda_devices() -> (uuids, why): uuids is the list of the devices the driver shows this
process (cuInit, cuDeviceGetCount, cuDeviceGet, cuDeviceGetUuid; formatted as nvidia-smi
writes them, GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx), or None when there is no driver
or it fails; why says what happened ("no driver: ...", "cuInit failed: ...", "ok").
It never raises, so it runs anywhere: without a GPU it reports "no driver".
$DPK_LIBCUDA names another library to load (the tests' stub_libcuda.c, built).
"""
from __future__ import annotations

import ctypes
import os

LIBRARY = os.environ.get("DPK_LIBCUDA") or "libcuda.so.1"
CUDA_SUCCESS = 0
CUDA_ERROR_NO_DEVICE = 100  # cuInit on a machine with a driver but no device


def _uuid(raw: bytes, prefix: str = "GPU") -> str:
    h = raw.hex()
    return f"{prefix}-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _error(lib, code: int) -> str:
    """The driver's name for an error code (cuGetErrorName), or the number."""
    name = ctypes.c_char_p()
    try:
        if lib.cuGetErrorName(code, ctypes.byref(name)) == CUDA_SUCCESS and name.value:
            return f"{name.value.decode()} ({code})"
    except AttributeError:
        pass
    return f"error {code}"


def cuda_devices(library: str = ""):
    """(uuids or None, why): the devices the CUDA driver shows this process."""
    library = library or LIBRARY
    try:
        lib = ctypes.CDLL(library)
    except OSError as exc:
        return None, f"no driver: {library} does not load ({exc})"
    try:
        init, count_fn = lib.cuInit, lib.cuDeviceGetCount
        get, get_uuid = lib.cuDeviceGet, getattr(lib, "cuDeviceGetUuid_v2", None) or lib.cuDeviceGetUuid
    except AttributeError as exc:
        return None, f"no driver: {library} lacks the CUDA driver API ({exc})"
    status = init(0)
    if status == CUDA_ERROR_NO_DEVICE:
        return [], "ok: the driver shows no device"
    if status != CUDA_SUCCESS:
        return None, f"cuInit failed: {_error(lib, status)}"
    count = ctypes.c_int()
    status = count_fn(ctypes.byref(count))
    if status != CUDA_SUCCESS:
        return None, f"cuDeviceGetCount failed: {_error(lib, status)}"
    uuids = []
    for ordinal in range(count.value):
        device = ctypes.c_int()
        raw = ctypes.create_string_buffer(16)
        status = get(ctypes.byref(device), ordinal)
        if status == CUDA_SUCCESS:
            status = get_uuid(raw, device)
        if status != CUDA_SUCCESS:
            return None, f"device {ordinal}: {_error(lib, status)}"
        uuids.append(_uuid(raw.raw))
    return uuids, "ok"
