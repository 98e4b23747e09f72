"""The compile options of the `nanoflow` backend: one validated dataclass that flows through every pass.

`torch.compile(m, backend="nanoflow", options={...})` hands the dict to `CompileOptions.from_dict`, which rejects
what it cannot honour with a message naming the problem, before any tracing starts.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .runtime.executors.base import EXECUTOR_NAMES
from .runtime.ir import COMPUTE, LIGHT, MEMORY, NETWORK, OP_CLASSES, STREAM_CLASSES

DEFAULT_DEVICE_SMS = 132  # an H100's, for planning where no GPU is visible
SM_GRANULARITY = 8  # green contexts split H100 SMs in groups of 8; the remainder may form one last partition
DEFAULT_NANO_BATCHES = 2


class NanoflowOptionsError(ValueError):
    """Compile options the backend cannot honour."""


@dataclass
class CompileOptions:
    nano_batches: int | dict = DEFAULT_NANO_BATCHES  # per op class, or one count for all
    split: list | dict | None = None  # fractions (per class or all), or {bucket: sizes} for explicit boundaries
    executor: str = "auto"  # sequential | stream | graph | auto
    sm_plan: dict | None = None  # {"COMPUTE": 96, "MEMORY": 36}: one stream per class named
    device_sms: int | None = None  # default: the CUDA device's SM count, else 132
    token_buckets: list | None = None  # token counts to plan for; default: the traced count
    cuda_graphs: bool | None = None  # None: the executor decides
    plan: str | None = None  # "auto": a searched or stored plan (profile database), else the analytical model
    profile_db: str | None = None
    token_inputs: list | None = None  # names of inputs whose dim 0 is the token dim: ["input_ids", "meta.slot_mapping"]
    overlap: bool = True  # False: one stream, no nano-batches (the baseline)
    min_overlap_tokens: int = 1  # buckets with fewer tokens run as with overlap=False
    schedule: str | None = None  # an exported artifact's schedule.json (or directory): bound as stored, no passes
    fuse_light: bool | None = None  # LIGHT nano-ops fused into inductor kernels; None: on for CUDA, off for CPU
    # Every token's result independent of the batch split and the SM budget: all CUDA matmuls on the persistent Triton
    # GEMM (full device too: ~0.94-1.00x cuBLAS at M=1024), one KV split per token in paged attention (a few long-
    # context decode tokens then leave SMs idle), inductor's batch-invariant mode for fused LIGHT kernels (runtime/
    # executors/routing.py). Off unless asked for (None = off): it is untimed on the GPU, and torch 2.11's inductor has
    # no batch-invariant mode, so fused groups would run unfused there. benchmarks/e2e_overlap.py turns it on.
    batch_invariant: bool | None = None
    given: frozenset = field(default=frozenset(), repr=False, compare=False)

    @classmethod
    def from_dict(cls, options: dict | "CompileOptions" | None) -> "CompileOptions":
        if isinstance(options, CompileOptions):
            return options
        options = dict(options or {})
        valid = [f.name for f in fields(cls) if f.name != "given"]
        for key in options:
            if key not in valid:
                close = difflib.get_close_matches(str(key), valid, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise NanoflowOptionsError(f"unknown nanoflow option {key!r}{hint} valid options: {', '.join(valid)}")
        result = cls(**options, given=frozenset(options))
        result.validate()
        return result

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (bucket keys of `split` as strings, which from_dict reads back)."""
        data = asdict(self)
        del data["given"]
        if isinstance(self.split, dict):
            data["split"] = {str(k): v for k, v in self.split.items()}
        return data

    # ------------------------------------------------------------------------------------------- validation

    def validate(self) -> None:
        if self.device_sms is None:
            self.device_sms = _device_sms()
        _check_int("device_sms", self.device_sms)
        if self.executor not in EXECUTOR_NAMES:
            raise NanoflowOptionsError(f"executor must be one of {EXECUTOR_NAMES}, got {self.executor!r}")
        if self.plan not in (None, "auto"):
            raise NanoflowOptionsError(f"plan must be None or 'auto', got {self.plan!r}")
        _check_int("min_overlap_tokens", self.min_overlap_tokens)
        for name in ("overlap",):
            if not isinstance(getattr(self, name), bool):
                raise NanoflowOptionsError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("cuda_graphs", "fuse_light", "batch_invariant"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise NanoflowOptionsError(f"{name} must be True, False or None, got {getattr(self, name)!r}")
        for name in ("profile_db", "schedule"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise NanoflowOptionsError(f"{name} must be a path string, got {getattr(self, name)!r}")
        if self.token_inputs is not None and (not isinstance(self.token_inputs, (list, tuple)) or not self.token_inputs
                                              or not all(isinstance(n, str) and n for n in self.token_inputs)):
            raise NanoflowOptionsError(f"token_inputs must be a non-empty list of input names, "
                                       f"got {self.token_inputs!r}")
        if self.token_buckets is not None:
            if not isinstance(self.token_buckets, (list, tuple)) or not self.token_buckets:
                raise NanoflowOptionsError(f"token_buckets must be a non-empty list of token counts, "
                                           f"got {self.token_buckets!r}")
            for b in self.token_buckets:
                _check_int("token_buckets entry", b)
            self.token_buckets = sorted(set(self.token_buckets))
        self._validate_nano_batches()
        self._validate_split()
        self._validate_sm_plan()
        for bucket in self.token_buckets or ():
            for cls in OP_CLASSES:
                self.sizes(bucket, cls, strict=True)

    def _validate_nano_batches(self) -> None:
        if isinstance(self.nano_batches, dict):
            _check_classes("nano_batches", self.nano_batches, OP_CLASSES)
            for cls, k in self.nano_batches.items():
                _check_int(f"nano_batches[{cls!r}]", k)
        else:
            _check_int("nano_batches", self.nano_batches)

    def _validate_split(self) -> None:
        if self.split is None:
            return
        if isinstance(self.split, (list, tuple)):
            self._check_fractions("split", self.split, None)
            return
        if not isinstance(self.split, dict):
            raise NanoflowOptionsError(f"split must be a list of fractions or a dict, got {self.split!r}")
        for key, value in self.split.items():
            if _bucket_key(key) is not None:
                per_class = value if isinstance(value, dict) else {c: value for c in OP_CLASSES}
                _check_classes(f"split[{key!r}]", per_class, OP_CLASSES)
                for cls, sizes in per_class.items():
                    if not isinstance(sizes, (list, tuple)) or not sizes or any(
                            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
                        raise NanoflowOptionsError(f"split[{key!r}] for {cls}: nano-batch sizes must be integers >= 1, "
                                                   f"got {sizes!r}")
                    if sum(sizes) != _bucket_key(key):
                        raise NanoflowOptionsError(f"split[{key!r}] for {cls}: sizes {list(sizes)} add up to "
                                                   f"{sum(sizes)}, not {_bucket_key(key)} tokens")
            else:
                _check_classes("split", {key: value}, OP_CLASSES)
                self._check_fractions(f"split[{key!r}]", value, key)

    def _check_fractions(self, what: str, fractions: Any, cls: str | None) -> None:
        if not isinstance(fractions, (list, tuple)) or not fractions or any(
                isinstance(f, bool) or not isinstance(f, (int, float)) or f <= 0 for f in fractions):
            raise NanoflowOptionsError(f"{what} must be a list of positive fractions, got {fractions!r}")
        if abs(sum(fractions) - 1.0) > 1e-6:
            raise NanoflowOptionsError(f"{what}: fractions {list(fractions)} must add up to 1, not {sum(fractions):g}")
        if "nano_batches" in self.given:
            for c in ([cls] if cls else OP_CLASSES):
                if self._count_option(c) != len(fractions) and (cls or not isinstance(self.nano_batches, dict)
                                                                or c in self.nano_batches):
                    raise NanoflowOptionsError(f"{what} gives {len(fractions)} nano-batches for {c} but nano_batches "
                                               f"says {self._count_option(c)}")

    def _validate_sm_plan(self) -> None:
        if self.sm_plan is None:
            return
        if not isinstance(self.sm_plan, dict) or not self.sm_plan:
            raise NanoflowOptionsError(f"sm_plan must be a dict of SM counts per stream class, got {self.sm_plan!r}")
        if LIGHT in self.sm_plan:
            raise NanoflowOptionsError("sm_plan names LIGHT, which has no stream of its own: LIGHT ops run on the "
                                       f"COMPUTE stream (stream classes: {', '.join(STREAM_CLASSES)})")
        _check_classes("sm_plan", self.sm_plan, STREAM_CLASSES)
        for cls, sms in self.sm_plan.items():
            _check_int(f"sm_plan[{cls!r}]", sms)
        total = sum(self.sm_plan.values())
        if total > self.device_sms:
            raise NanoflowOptionsError(f"sm_plan {self.sm_plan} asks for {total} SMs but the device has "
                                       f"{self.device_sms}")
        odd = [c for c, n in self.sm_plan.items() if n % SM_GRANULARITY]
        if len(odd) > 1 or (odd and total != self.device_sms):
            raise NanoflowOptionsError(
                f"sm_plan {self.sm_plan}: SM shares must be multiples of {SM_GRANULARITY} (only one share may be the "
                f"remainder of the device's {self.device_sms} SMs, when the shares add up to all of them)")

    # -------------------------------------------------------------------------------------------- queries

    def overlaps(self, tokens: int | None = None) -> bool:
        """Whether a bucket of `tokens` is split and spread over streams (None: the setting for any bucket)."""
        return self.overlap and (tokens is None or tokens >= self.min_overlap_tokens)

    def count(self, cls: str, tokens: int | None = None) -> int:
        """Nano-batches per op class: LIGHT and NETWORK follow COMPUTE unless named; no overlap means 1."""
        if not self.overlaps(tokens):
            return 1
        fractions = self._fractions(cls)
        return len(fractions) if fractions is not None else self._count_option(cls)

    def _count_option(self, cls: str) -> int:
        if not isinstance(self.nano_batches, dict):
            return self.nano_batches
        if cls in self.nano_batches:
            return self.nano_batches[cls]
        return DEFAULT_NANO_BATCHES if cls == COMPUTE else self._count_option(COMPUTE)

    def _fractions(self, cls: str) -> list | None:
        if isinstance(self.split, (list, tuple)):
            return list(self.split)
        if isinstance(self.split, dict):
            if cls in self.split:
                return list(self.split[cls])
            if cls in (LIGHT, NETWORK) and COMPUTE in self.split:
                return list(self.split[COMPUTE])
        return None

    def sizes(self, tokens: int, cls: str, strict: bool = False) -> list[int]:
        """Nano-batch sizes of `cls` at `tokens`. More nano-batches than tokens is an error when `strict` (a bucket
        the user asked for), else the count shrinks to the token count."""
        if self.overlaps(tokens) and isinstance(self.split, dict):
            for key, value in self.split.items():
                if _bucket_key(key) == tokens:
                    per_class = value if isinstance(value, dict) else {c: value for c in OP_CLASSES}
                    fallback = per_class.get(COMPUTE) if cls in (LIGHT, NETWORK) else None
                    if cls in per_class or fallback:
                        return list(per_class.get(cls) or fallback)
        k = self.count(cls, tokens)
        if k > tokens:
            if strict:
                raise NanoflowOptionsError(f"{k} nano-batches for {cls} is more than the {tokens} tokens of token "
                                           f"bucket {tokens}")
            k = tokens
        fractions = self._fractions(cls) if self.overlaps(tokens) and k == self.count(cls, tokens) else None
        fractions = fractions or [1.0 / k] * k
        cuts = [0]
        acc = 0.0
        for i, f in enumerate(fractions):
            acc += f
            cut = tokens if i == k - 1 else int(acc * tokens + 0.5)
            cuts.append(min(max(cut, cuts[-1] + 1), tokens - (k - 1 - i)))
        return [b - a for a, b in zip(cuts, cuts[1:])]

    def streams(self, classes_present: set[str], tokens: int | None = None) -> list[tuple[list[str], int]]:
        """(classes, SMs) per stream for a bucket of `tokens`. LIGHT and classes without a share run on the COMPUTE
        stream."""
        stream_classes = sorted((classes_present & set(STREAM_CLASSES)) | {COMPUTE}, key=OP_CLASSES.index)
        if not self.overlaps(tokens):
            return [(list(OP_CLASSES), self.device_sms)]
        shares = dict(self.sm_plan) if self.sm_plan is not None else _default_shares(stream_classes, self.device_sms)
        shares.setdefault(COMPUTE, self.device_sms - sum(shares.values()))
        if shares[COMPUTE] < 1:
            raise NanoflowOptionsError(f"sm_plan {self.sm_plan} leaves no SMs for the COMPUTE stream")
        streams = []
        for cls in OP_CLASSES:
            if cls in shares:
                members = [cls] + ([c for c in OP_CLASSES if c not in shares] if cls == COMPUTE else [])
                streams.append((members, shares[cls]))
        return streams


def _default_shares(stream_classes: list[str], sms: int) -> dict[str, int]:
    """Until a search says otherwise: 3/4 of the SMs (rounded to the granularity) for GEMMs, 8 for collectives,
    the remainder for memory-bound ops (96/36 on an H100: what the overlap probe measured best)."""
    if stream_classes == [COMPUTE]:
        return {COMPUTE: sms}
    network = SM_GRANULARITY if NETWORK in stream_classes else 0
    compute = SM_GRANULARITY * int(0.75 * sms / SM_GRANULARITY) - network
    shares = {COMPUTE: compute}
    if NETWORK in stream_classes:
        shares[NETWORK] = network
    if MEMORY in stream_classes:
        shares[MEMORY] = sms - compute - network
    else:
        shares[COMPUTE] = sms - network
    return shares


def _bucket_key(key: Any) -> int | None:
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str) and key.isdigit():
        return int(key)
    return None


def _check_int(what: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NanoflowOptionsError(f"{what} must be an integer >= 1, got {value!r}")


def _check_classes(what: str, mapping: dict, allowed: tuple[str, ...]) -> None:
    if not isinstance(mapping, dict):
        raise NanoflowOptionsError(f"{what} must be a dict keyed by op class, got {mapping!r}")
    for key in mapping:
        if key not in allowed:
            raise NanoflowOptionsError(f"{what} names unknown op class {key!r}; valid classes: {', '.join(allowed)}")


def _device_sms() -> int:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return DEFAULT_DEVICE_SMS
