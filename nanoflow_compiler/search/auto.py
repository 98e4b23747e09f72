"""`plan="auto"`: the stored plan when a profile database has one, else a plan searched on the spot.

Order of preference: a confirmed plan stored for this model and bucket; a search over the database's measured
profile (not confirmed: compile time has no timed run); the analytical cost model, with a SearchWarning that says
why, recorded in the plan's notes and `cost_source`, because such a plan is a guess from peak numbers.
"""

from __future__ import annotations

import os
import warnings

import networkx as nx

from .cost_model import AnalyticalCostModel, TableCostModel, peaks_for
from .errors import MissingProfileError, ProfileMismatchError, ProfileSchemaError, SearchWarning
from .layer_graph import decoder_layer_graph, model_key, shapes_from_parameters
from .profile_db import DeviceKey, ProfileDB, default_db_path
from .search import Plan, load_plan, plan_buckets, search_bucket

DEFAULT_SMS = 132  # an H100's, for planning on machines without a GPU
_ANALYTICAL: dict[tuple, Plan] = {}  # searching costs ~1 s; one layer shape at one bucket gives one plan


def _device() -> tuple[str, int, DeviceKey | None]:
    try:
        key = DeviceKey.current()
    except RuntimeError:
        return "no CUDA device (assuming an H100)", DEFAULT_SMS, None
    return key.name, key.sm_count, key


def load_plan_for(config, bucket: int, profile_db: str | os.PathLike | ProfileDB | None = None,
                  context_len: int = 1024, layer: nx.DiGraph | None = None) -> Plan:
    """The plan for a model config (or a given layer graph) at a token bucket; see the module docstring."""
    layer = layer if layer is not None else decoder_layer_graph(config, context_len)
    model = layer.graph.get("model_key") or model_key(config)
    name, sms, key = _device()
    reason = "no profile database was given (options['profile_db'])"
    db = None
    if isinstance(profile_db, ProfileDB):
        db = profile_db
    elif profile_db is not None and os.path.exists(profile_db):
        db = ProfileDB.load(profile_db, expect=key)
    elif profile_db is not None:
        reason = f"no profile database at {profile_db}"
    if db is not None:
        try:
            return load_plan(db, model, bucket)
        except MissingProfileError:
            pass
        try:
            plan = search_bucket(layer, bucket, TableCostModel(db), model=model, device=db.device.name)
            plan.notes.append(f"no stored plan for {model}@{bucket}: searched the profile at compile time")
            return plan
        except MissingProfileError as e:
            reason = f"the profile database does not cover this model: {e}"
    return _analytical(layer, bucket, model, name, sms, reason)


def _analytical(layer: nx.DiGraph, bucket: int, model: str, device: str, sms: int, reason: str) -> Plan:
    family, peaks = peaks_for(device)
    message = (f"plan='auto' for {model} at {bucket} tokens: {reason}; using the analytical cost model "
               f"({family} peaks: {peaks.flops / 1e12:.0f} TFLOP/s, {peaks.bandwidth / 1e12:.2f} TB/s) - run "
               f"`nanoflow search` on the device for a measured plan")
    warnings.warn(message, SearchWarning, stacklevel=3)
    key = (model, tuple(sorted((n, d["spec"]) for n, d in layer.nodes(data=True))),
           tuple(sorted(layer.edges(data="shift", default=0))), bucket, device, sms)
    if key not in _ANALYTICAL:
        _ANALYTICAL[key] = search_bucket(layer, bucket, AnalyticalCostModel(sms, peaks), model=model, device=device)
    plan = Plan.from_json(_ANALYTICAL[key].to_json())
    plan.notes.insert(0, f"fallback: {message}")
    return plan


def stored_plans_db(config) -> str | None:
    """This GPU's default profile database (where `nanoflow search` stores it) when it holds a searched plan for
    `config`'s layer shape, else None: an engine then plans with it (plan='auto') instead of running with overlap
    off. A database the loader refuses is passed over with a SearchWarning that says why."""
    try:
        key = DeviceKey.current()
    except RuntimeError:
        return None
    path = default_db_path(key)
    if not path.exists():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", SearchWarning)  # other torch/triton versions: measured on other kernels
            db = ProfileDB.load(path, expect=key)
    except (ProfileMismatchError, ProfileSchemaError, SearchWarning) as e:
        warnings.warn(f"not planning from {path}: {e}", SearchWarning, stacklevel=2)
        return None
    return str(path) if plan_buckets(db, model_key(config)) else None


def merge_plan_options(plans: dict[int, Plan]) -> tuple[dict, list[str]]:
    """One set of compile options for several buckets' plans, and notes on what could not be kept.

    CompileOptions holds one `overlap` flag and one `sm_plan` but nano-batch sizes per bucket, so the largest
    bucket's plan (the one that carries the most tokens through the engine) decides the flag and the shares; the
    other buckets keep their own sizes when they are overlapped plans too."""
    if not plans:
        raise ValueError("no plans to merge")
    lead = plans[max(plans)]
    options = lead.to_options()
    options["token_buckets"] = sorted(plans)
    notes = []
    for bucket, plan in sorted(plans.items()):
        if plan is lead:
            continue
        if plan.sequential != lead.sequential or (not plan.sequential and plan.sm_plan != lead.sm_plan):
            notes.append(f"bucket {bucket}: its plan ({plan.sm_plan or 'sequential'}) differs from bucket "
                         f"{lead.bucket}'s ({lead.sm_plan or 'sequential'}), which the compile options keep")
        if not lead.sequential and not plan.sequential:
            options["split"].update(plan.to_options()["split"])
    return options, notes


def _lead_bucket(db: str | ProfileDB | None, model: str, buckets: list[int]) -> int:
    """The bucket whose plan may decide the rest: the largest, or the nearest above it with a stored plan. One stream
    measured fastest at a larger bucket holds for smaller ones: their batches give less to overlap and the weights
    re-read per nano-batch weigh more (the H100 measured one stream fastest at every bucket from 16 to 1024,
    benchmarks/results/h100/session6/), so an engine whose largest bucket is 512 needs no search of its own after
    `nanoflow search` stored its default buckets, 1024 and 2048."""
    largest = max(buckets)
    if not isinstance(db, ProfileDB):
        return largest
    return min((b for b in plan_buckets(db, model) if b >= largest), default=largest)


def auto_options(named_shapes: dict[str, tuple[int, ...]], buckets: list[int], profile_db: str | None = None,
                 dtype_bytes: int = 2, context_len: int = 1024) -> tuple[dict | None, list[str], str]:
    """The compiler's plan='auto' hook: (compile options, notes, plan source) from the graph's parameter shapes.

    The fallback warnings come back as notes instead of being raised here, so that the compiler reports (and
    records) each once, its own way. Options are None for graphs that are not a decoder layer form the search
    models; the compiler's defaults then stand, and the note says why."""
    config = shapes_from_parameters(named_shapes)
    if config is None:
        return None, ["plan='auto': the search models Llama-family decoder layers (fused qkv_proj and gate_up_proj, "
                      "a paged KV cache) and this graph has none; the compiler's default plan stands"], "analytical"
    layer = decoder_layer_graph(config, context_len, dtype_bytes)
    if profile_db is not None and os.path.exists(profile_db):  # read once for every bucket
        profile_db = ProfileDB.load(profile_db, expect=_device()[2])
    def planned(bucket: int) -> tuple[Plan, list[str]]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SearchWarning)
            plan = load_plan_for(config, bucket, profile_db, context_len, layer)
        for w in caught:
            if not issubclass(w.category, SearchWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return plan, [str(w.message) for w in caught if issubclass(w.category, SearchWarning)]

    lead, notes = planned(_lead_bucket(profile_db, layer.graph.get("model_key") or model_key(config), buckets))
    if lead.sequential and lead.cost_source == "profile":
        # The lead bucket's measured plan (`_lead_bucket`) decides the overlap flag (`merge_plan_options`) and runs
        # every bucket on one stream: the other buckets' plans would decide nothing, so they are not made (nor their
        # fallbacks to the analytical model reported).
        return {**lead.to_options(), "token_buckets": sorted(set(buckets))}, notes, "profile"
    if lead.bucket not in buckets:  # a larger bucket's overlapped plan says nothing of this engine's buckets
        lead, notes = planned(max(buckets))
    plans = {lead.bucket: lead}
    for b in sorted(set(buckets) - {lead.bucket}):
        plans[b], more = planned(b)
        notes += more
    options, merge_notes = merge_plan_options(plans)
    source = "profile" if all(p.cost_source == "profile" for p in plans.values()) else "analytical"
    return options, notes + merge_notes, source
