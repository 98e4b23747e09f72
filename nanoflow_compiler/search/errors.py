"""Errors and warnings of the parameter search, so that callers (CLI, compiler hook) can catch them precisely.

All errors subclass ValueError: the CLI turns a ValueError into one clear line instead of a traceback.
"""

from __future__ import annotations


class SearchError(ValueError):
    """Base class: a search request that cannot be answered as asked."""


class ProfileSchemaError(SearchError):
    """A profile database file that is not what this version writes (wrong schema, bad field, bad number)."""


class ProfileMismatchError(SearchError):
    """A profile database measured on another device (or, when strict, with other torch/triton versions)."""


class MissingProfileError(SearchError):
    """The profile has no data for what was asked (an op kind, a token count, an SM count, a bucket)."""


class InfeasibleRequestError(SearchError):
    """SM shares or budgets that no plan can satisfy (more SMs than exist, off-granularity shares...)."""


class SearchWarning(UserWarning):
    """A fallback or a version mismatch the search tolerated; the result records it as well."""


class ProfilingUnavailableError(SearchError):
    """Profiling measures kernels on a GPU; there is none here (or its partitions cannot be made)."""
