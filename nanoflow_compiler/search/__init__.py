"""Automatic parameter search: profiles, a cost model, and a two-stage search for nano-batches, order and SM shares.

Stage one (stage_one.py) picks nano-batch counts per op class and each stream's order from interference-free costs;
stage two (stage_two.py) picks SM shares per stream with a MILP over the pipelined layer time, with interference.
search.py drives both per token bucket and keeps plans in the profile database (profile_db.py); auto.py answers
compile option plan="auto"; profiler.py and plan_runner.py do the measuring on the GPU.
"""

from .auto import load_plan_for
from .cost_model import AnalyticalCostModel, TableCostModel
from .errors import (InfeasibleRequestError, MissingProfileError, ProfileMismatchError, ProfileSchemaError,
                     ProfilingUnavailableError, SearchError, SearchWarning)
from .layer_graph import OpSpec, decoder_layer_graph, model_key
from .profile_db import DeviceKey, ProfileDB
from .search import Plan, load_plan, search, search_bucket

__all__ = [
    "AnalyticalCostModel", "DeviceKey", "InfeasibleRequestError", "MissingProfileError", "OpSpec", "Plan",
    "ProfileDB", "ProfileMismatchError", "ProfileSchemaError", "ProfilingUnavailableError", "SearchError",
    "SearchWarning", "TableCostModel", "decoder_layer_graph", "load_plan", "load_plan_for", "model_key", "search",
    "search_bucket",
]
