"""The JSON profile database: measured op times and pairwise interference for one device and software stack.

One file per device: measured times per op kind x token count x SM count, pairwise interference (kind A on n SMs
co-running with kind B on m SMs slows each by a factor), and the plans the search kept, per model and token bucket.
It is keyed by device name, SM count and torch/triton versions, and validated on load: a profile from another GPU
is wrong in every number, so that is an error; other library versions change kernels, so that warns (or errors
when strict). Plain JSON, never pickle: it is an artifact users share.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ProfileMismatchError, ProfileSchemaError, SearchWarning

SCHEMA = "nanoflow-profile-db"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class DeviceKey:
    """What a profile is valid for. `sm_granularity`: the step SM partitions come in (8 on H100 green contexts)."""

    name: str
    sm_count: int
    torch: str
    triton: str
    sm_granularity: int = 8

    @classmethod
    def current(cls, device_index: int = 0) -> DeviceKey:
        """The key of this process's CUDA device; profiles are per GPU, so there is no CPU key."""
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("profiles describe a CUDA device and none is available here")
        props = torch.cuda.get_device_properties(device_index)
        return cls(props.name, props.multi_processor_count, torch.__version__, _triton_version(), 8)


def default_db_path(key: DeviceKey) -> Path:
    """One database per device model under the user's cache (override with --db / options['profile_db'])."""
    slug = re.sub(r"[^a-z0-9]+", "-", key.name.lower()).strip("-")
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "nanoflow" / "profiles" / f"{slug}-{key.sm_count}sm.json"


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "none"


@dataclass
class ProfileDB:
    """In memory: ops[kind][tokens][sms] = seconds; interference[(kind_a, sms_a, kind_b, sms_b)] = slowdown of A."""

    device: DeviceKey
    ops: dict[str, dict[int, dict[int, float]]] = field(default_factory=dict)
    interference: dict[tuple[str, int, str, int], float] = field(default_factory=dict)
    plans: dict[str, dict] = field(default_factory=dict)

    def add_time(self, kind: str, tokens: int, sms: int, seconds: float) -> None:
        self._check_sms(sms)
        if not (seconds > 0 and math.isfinite(seconds)) or tokens < 1:
            raise ValueError(f"{kind}: bad measurement tokens={tokens} seconds={seconds}")
        self.ops.setdefault(kind, {}).setdefault(int(tokens), {})[int(sms)] = float(seconds)

    def add_interference(self, kind_a: str, sms_a: int, kind_b: str, sms_b: int,
                         slowdown_a: float, slowdown_b: float) -> None:
        """Co-running slowdowns (co-run time / solo time on the same SMs) of A and of B; stored both ways round."""
        self._check_sms(sms_a)
        self._check_sms(sms_b)
        if sms_a + sms_b > self.device.sm_count:
            raise ValueError(f"{sms_a} + {sms_b} SMs exceed the device's {self.device.sm_count}")
        for s in (slowdown_a, slowdown_b):
            if not (s > 0 and math.isfinite(s)):
                raise ValueError(f"bad slowdown {s} for {kind_a} x {kind_b}")
        self.interference[(kind_a, int(sms_a), kind_b, int(sms_b))] = float(slowdown_a)
        self.interference[(kind_b, int(sms_b), kind_a, int(sms_a))] = float(slowdown_b)

    def token_counts(self, kind: str) -> list[int]:
        return sorted(self.ops.get(kind, {}))

    def _check_sms(self, sms: int) -> None:
        g = self.device.sm_granularity
        if not (0 < sms <= self.device.sm_count) or (sms % g and sms != self.device.sm_count):
            raise ValueError(f"SM count {sms} is not a multiple of {g} in 1..{self.device.sm_count}")

    # ---- JSON -------------------------------------------------------------------------------------------------

    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "device": asdict(self.device),
            "ops": {k: [[t, s, sec] for t, row in sorted(v.items()) for s, sec in sorted(row.items())]
                    for k, v in sorted(self.ops.items())},
            "interference": [{"kind_a": a, "sms_a": n, "kind_b": b, "sms_b": m, "slowdown_a": f}
                             for (a, n, b, m), f in sorted(self.interference.items())],
            "plans": self.plans,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically, so that an interrupted profiling run never leaves half a database behind."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_json(), f, indent=1)
        os.replace(tmp, path)

    @classmethod
    def from_json(cls, data: dict, source: str = "<json>") -> ProfileDB:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ProfileSchemaError(f"{source}: not a nanoflow profile database (schema field must be {SCHEMA!r})")
        if data.get("version") != SCHEMA_VERSION:
            raise ProfileSchemaError(f"{source}: profile schema version {data.get('version')!r}; "
                                     f"this nanoflow reads version {SCHEMA_VERSION}: re-run `nanoflow search`")
        try:
            dev = data["device"]
            db = cls(DeviceKey(str(dev["name"]), int(dev["sm_count"]), str(dev["torch"]), str(dev["triton"]),
                               int(dev.get("sm_granularity", 8))))
            for kind, rows in data["ops"].items():
                for tokens, sms, seconds in rows:
                    db.add_time(str(kind), int(tokens), int(sms), float(seconds))
            for e in data["interference"]:
                key = (str(e["kind_a"]), int(e["sms_a"]), str(e["kind_b"]), int(e["sms_b"]))
                db._check_sms(key[1])
                db._check_sms(key[3])
                if not (float(e["slowdown_a"]) > 0):
                    raise ValueError(f"bad slowdown {e['slowdown_a']}")
                db.interference[key] = float(e["slowdown_a"])
            plans = data.get("plans", {})
            if not isinstance(plans, dict):
                raise ValueError("'plans' must be an object")
            db.plans = plans
        except (KeyError, TypeError, ValueError) as e:
            raise ProfileSchemaError(f"{source}: malformed profile database: {type(e).__name__}: {e}") from None
        return db

    @classmethod
    def load(cls, path: str | os.PathLike, expect: DeviceKey | None = None, strict: bool = False) -> ProfileDB:
        """Read and validate; against `expect`, another device is an error, other versions warn (error if strict)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no profile database at {path}; create one with `nanoflow search`")
        try:
            data = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ProfileSchemaError(f"{path}: not valid JSON ({e})") from None
        db = cls.from_json(data, str(path))
        if expect is not None:
            db.check_device(expect, strict=strict, source=str(path))
        return db

    def check_device(self, expect: DeviceKey, strict: bool = False, source: str = "profile") -> None:
        have = self.device
        if (have.name, have.sm_count) != (expect.name, expect.sm_count):
            raise ProfileMismatchError(f"{source} was measured on {have.name} ({have.sm_count} SMs), "
                                       f"not on this {expect.name} ({expect.sm_count} SMs): profile this device")
        diffs = [f"{lib} {a} (profile) vs {b} (here)" for lib, a, b in
                 (("torch", have.torch, expect.torch), ("triton", have.triton, expect.triton)) if a != b]
        if diffs:
            msg = f"{source} was measured with other library versions: {'; '.join(diffs)}; re-profile for exact times"
            if strict:
                raise ProfileMismatchError(msg)
            warnings.warn(msg, SearchWarning, stacklevel=3)
