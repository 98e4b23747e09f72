"""argparse types shared by the subcommands, so that one flag spelled in several commands fails the same way."""

from __future__ import annotations

import argparse
import json


def json_object(text: str) -> dict:
    """A JSON object given on the command line, e.g. --compile-options '{"nano_batches": 2}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"nano_batches\": 2}'")
    return value
