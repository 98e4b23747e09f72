"""Driver calls behind `partitions`: split the device's SMs into disjoint green contexts, one stream each.

Two backends with the same calls (`cuDeviceGetDevResource` -> `cuDevSmResourceSplitByCount` ->
`cuDevResourceGenerateDesc` -> `cuGreenCtxCreate` -> `cuGreenCtxStreamCreate`): `cuda.bindings.driver` when the
package is installed, else ctypes on libcuda. A split result cannot be split again directly, so each later
partition is cut from a green context made of the previous remainder (the driver's documented route).
Green contexts live as long as the process: streams made in them are handed to torch as ExternalStreams.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any

_SM = 1  # CU_DEV_RESOURCE_TYPE_SM
_GREEN_CTX_DEFAULT_STREAM = 1
_STREAM_NON_BLOCKING = 1


class GreenContextUnavailable(RuntimeError):
    """The driver route to disjoint partitions is missing or refused (old driver, no bindings, unsupported GPU)."""


@dataclass
class GreenGroup:
    """One disjoint SM group: its SM count and the raw handle of a stream whose kernels run only there."""

    num_sms: int
    stream_handle: int
    backend: str
    keepalive: list[Any] = field(default_factory=list, repr=False)


def split(device: int, counts: list[int], backend: str | None = None) -> list[GreenGroup]:
    """One disjoint group of exactly counts[i] SMs per entry (counts pre-validated against the device)."""
    driver = _backend(backend)
    dev = driver.device(device)
    rest = driver.device_resource(dev)
    groups, keep = [], []
    for i, n in enumerate(counts):
        if n == driver.sm_count(rest):
            group, remainder = rest, None
        else:
            group, remainder = driver.split_one(rest, n)
        ctx = driver.green_ctx(group, dev)
        groups.append(GreenGroup(driver.sm_count(group), driver.stream(ctx), driver.name, [ctx, group, *keep]))
        if i + 1 < len(counts):
            if remainder is None:
                raise GreenContextUnavailable(f"no SMs left after {counts[: i + 1]}")
            rest_ctx = driver.green_ctx(remainder, dev)
            keep = [rest_ctx]
            rest = driver.ctx_resource(rest_ctx)
    return groups


def sm_constraints(device: int) -> tuple[int, int]:
    """(minimum partition size, SM alignment) as the driver reports them; zeros where it does not."""
    driver = _backend(None)
    return driver.constraints(driver.device_resource(driver.device(device)))


def _backend(name: str | None):
    """cuda.bindings first, ctypes when the package (or its green-context calls) is missing."""
    if name not in (None, "cuda.bindings", "ctypes"):
        raise ValueError(f"unknown green-context backend {name!r}; use 'cuda.bindings' or 'ctypes'")
    why = ""
    if name in (None, "cuda.bindings"):
        try:
            return _Bindings()
        except Exception as exc:  # ImportError, missing symbols, library loading errors of any kind
            why = f"cuda.bindings: {exc}; "
            if name is not None:
                raise GreenContextUnavailable(why) from exc
    try:
        return _Ctypes()
    except GreenContextUnavailable as exc:
        raise GreenContextUnavailable(f"{why}ctypes: {exc}") from exc


class _Bindings:
    name = "cuda.bindings"

    def __init__(self) -> None:
        from cuda.bindings import driver

        for fn in ("cuDevSmResourceSplitByCount", "cuGreenCtxCreate", "cuGreenCtxStreamCreate"):
            getattr(driver, fn)
        self.cu = driver
        self._ok(driver.cuInit(0), "cuInit")

    def _ok(self, ret, what: str):
        err, *out = ret
        if err != self.cu.CUresult.CUDA_SUCCESS:
            _, msg = self.cu.cuGetErrorString(err)
            raise GreenContextUnavailable(f"{what} failed: {err.name} ({msg.decode() if msg else '?'})")
        return out[0] if len(out) == 1 else out

    def device(self, index: int):
        return self._ok(self.cu.cuDeviceGet(index), "cuDeviceGet")

    def device_resource(self, dev):
        return self._ok(self.cu.cuDeviceGetDevResource(dev, self.cu.CUdevResourceType(_SM)), "cuDeviceGetDevResource")

    def ctx_resource(self, ctx):
        return self._ok(self.cu.cuGreenCtxGetDevResource(ctx, self.cu.CUdevResourceType(_SM)),
                        "cuGreenCtxGetDevResource")

    def sm_count(self, res) -> int:
        return int(res.sm.smCount)

    def constraints(self, res) -> tuple[int, int]:
        return int(getattr(res.sm, "minSmPartitionSize", 0)), int(getattr(res.sm, "smCoscheduledAlignment", 0))

    def split_one(self, res, n: int):
        result, _, remainder = self._ok(self.cu.cuDevSmResourceSplitByCount(1, res, 0, n),
                                        f"cuDevSmResourceSplitByCount({n})")
        return result[0], remainder

    def green_ctx(self, res, dev):
        desc = self._ok(self.cu.cuDevResourceGenerateDesc([res], 1), "cuDevResourceGenerateDesc")
        return self._ok(self.cu.cuGreenCtxCreate(desc, dev, _GREEN_CTX_DEFAULT_STREAM), "cuGreenCtxCreate")

    def stream(self, ctx) -> int:
        return int(self._ok(self.cu.cuGreenCtxStreamCreate(ctx, _STREAM_NON_BLOCKING, 0), "cuGreenCtxStreamCreate"))


class _Ctypes:
    """Same calls through libcuda; CUdevResource is an opaque oversized buffer (its size differs 12.x/13.x)."""

    name = "ctypes"
    _RES_BYTES = 1024
    _SM_OFFSET = 96  # CUdevResource: type (4) + 92 padding bytes, then the CUdevSmResource union member

    def __init__(self) -> None:
        try:
            self.cu = ctypes.CDLL("libcuda.so.1")
            getattr(self.cu, "cuDevSmResourceSplitByCount")
        except (OSError, AttributeError) as exc:
            raise GreenContextUnavailable(f"libcuda has no green-context API: {exc}") from exc
        self._ok(self.cu.cuInit(0), "cuInit")

    def _ok(self, ret: int, what: str) -> None:
        if ret != 0:
            msg = ctypes.c_char_p()
            self.cu.cuGetErrorString(ret, ctypes.byref(msg))
            raise GreenContextUnavailable(f"{what} failed: CUresult {ret} ({(msg.value or b'?').decode()})")

    def _buf(self):
        return ctypes.create_string_buffer(self._RES_BYTES)

    def device(self, index: int):
        dev = ctypes.c_int()
        self._ok(self.cu.cuDeviceGet(ctypes.byref(dev), index), "cuDeviceGet")
        return dev

    def device_resource(self, dev):
        res = self._buf()
        self._ok(self.cu.cuDeviceGetDevResource(dev, res, _SM), "cuDeviceGetDevResource")
        return res

    def ctx_resource(self, ctx):
        res = self._buf()
        self._ok(self.cu.cuGreenCtxGetDevResource(ctx, res, _SM), "cuGreenCtxGetDevResource")
        return res

    def sm_count(self, res) -> int:
        return ctypes.c_uint.from_buffer(res, self._SM_OFFSET).value

    def constraints(self, res) -> tuple[int, int]:
        return (ctypes.c_uint.from_buffer(res, self._SM_OFFSET + 4).value,
                ctypes.c_uint.from_buffer(res, self._SM_OFFSET + 8).value)

    def split_one(self, res, n: int):
        group, remainder, nb = self._buf(), self._buf(), ctypes.c_uint(1)
        self._ok(self.cu.cuDevSmResourceSplitByCount(group, ctypes.byref(nb), res, remainder, 0, n),
                 f"cuDevSmResourceSplitByCount({n})")
        return group, remainder

    def green_ctx(self, res, dev):
        desc, ctx = ctypes.c_void_p(), ctypes.c_void_p()
        self._ok(self.cu.cuDevResourceGenerateDesc(ctypes.byref(desc), res, 1), "cuDevResourceGenerateDesc")
        self._ok(self.cu.cuGreenCtxCreate(ctypes.byref(ctx), desc, dev, _GREEN_CTX_DEFAULT_STREAM), "cuGreenCtxCreate")
        return ctx

    def stream(self, ctx) -> int:
        st = ctypes.c_void_p()
        self._ok(self.cu.cuGreenCtxStreamCreate(ctypes.byref(st), ctx, _STREAM_NON_BLOCKING, 0),
                 "cuGreenCtxStreamCreate")
        return int(st.value)
