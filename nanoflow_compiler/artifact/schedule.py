"""schedule.json, and binding a stored Schedule IR to a freshly traced graph instead of running the passes.

Dynamo still traces the model (that is how torch.compile hands over the graph and its parameters), and the graph is
lowered to ATen so that its code, inputs and constants can be compared with what the schedule was made for. Then the
stored IR is bound to the executor as it is: no scheduling pass and no search runs. A graph that is not the stored
one (another model, dtype, KV-cache size or torch) is refused with what differs, never silently re-planned.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..runtime.ir import ScheduleIR, Signature
from .manifest import ArtifactError

SCHEDULE = "schedule.json"
SCHEDULE_VERSION = 1


def write_schedule(path: Path, irs: list[ScheduleIR]) -> None:
    """One Schedule IR per graph Dynamo compiled (one for a model the engine runs; each IR holds every bucket)."""
    graphs = [json.loads(ir.to_json()) for ir in irs]
    path.write_text(json.dumps({"version": SCHEDULE_VERSION, "graphs": graphs}, separators=(",", ":")))


def read_schedule(path: str | Path) -> list[ScheduleIR]:
    """The IRs in a schedule.json (or the one in an artifact directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / SCHEDULE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"no stored schedule at {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path.name} is not valid JSON: {e}") from None
    graphs = data.get("graphs") if isinstance(data, dict) else None
    if not isinstance(graphs, list) or data.get("version") != SCHEDULE_VERSION:
        raise ArtifactError(f"{path.name} is not a version-{SCHEDULE_VERSION} nanoflow schedule file")
    irs = []
    for i, graph in enumerate(graphs):
        try:
            irs.append(ScheduleIR.from_json(json.dumps(graph)))
        except (ValueError, KeyError, TypeError) as e:
            problem = f"{type(e).__name__}: {e}"
            raise ArtifactError(f"{path.name}: graph {i} is not a valid Schedule IR ({problem})") from None
    if not irs:
        raise ArtifactError(f"{path.name} holds no schedule")
    return irs


def bind_stored(gm, example_inputs: list, options):
    """The backend's path for options['schedule']: the stored IR of this graph, bound to the executor."""
    from ..backend import lower
    from ..passes import annotate_shapes
    from ..passes.emit import signature
    from ..runtime.executors.base import bind

    irs = read_schedule(options.schedule)
    aten, ctx = lower(gm, example_inputs, replace(options, plan=None, schedule=None))
    annotate_shapes.run(aten, ctx)
    traced = signature(aten, ctx)
    ir = next((ir for ir in irs if ir.signature == traced), None)
    if ir is None:
        raise ArtifactError("the model traced here is not the graph the stored schedule was made for: "
                            f"{_difference(irs[0].signature, traced)}; export the artifact again for this model, "
                            "dtype, device and engine settings")
    symbols = {name: [list(s) for s in sources] for name, sources in ctx.symbol_sources.items()}
    constants = {n: (str(t.dtype).removeprefix("torch."), list(t.shape)) for n, t in ctx.constants.items()}
    if symbols != ir.symbols or constants != {c.name: (c.dtype, c.shape) for c in ir.constants}:
        raise ArtifactError("the traced graph reads its sizes or constants differently from the stored schedule "
                            f"(symbols {symbols} vs {ir.symbols}); export the artifact again")
    module, _ = bind(ir, ctx.constants, options.executor, ctx.device, {"cuda_graphs": options.cuda_graphs})
    return module


def _difference(stored: Signature, traced: Signature) -> str:
    if len(stored.inputs) != len(traced.inputs):
        return f"it has {len(traced.inputs)} inputs, the stored graph {len(stored.inputs)}"
    for i, (a, b) in enumerate(zip(stored.inputs, traced.inputs)):
        if a != b:
            return (f"input {i} is {b.name} ({b.kind}, {b.dtype} {b.shape}) here and {a.name} ({a.kind}, {a.dtype} "
                    f"{a.shape}) in the artifact")
    if stored.tokens_static != traced.tokens_static:
        return f"it was traced for {traced.tokens_static} tokens, the stored graph for {stored.tokens_static}"
    return f"its code differs (graph hash {traced.graph_hash} here, {stored.graph_hash} in the artifact)"
