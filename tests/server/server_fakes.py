"""A fake engine and tokenizer with the real ones' interfaces: fast and deterministic, for the server's own logic."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace

FAKE_VOCAB = 128


class FakeTokenizer:
    """Characters are tokens (ord % 96 + 32); a chat template that tags roles, enough to route chat requests."""

    chat_template = "fake"
    eos_token_id = 1

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 96 + 32 for c in text]

    def __call__(self, text: str) -> SimpleNamespace:
        return SimpleNamespace(input_ids=self.encode(text))

    def apply_chat_template(self, messages, add_generation_prompt: bool, tokenize: bool) -> list[int]:
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages) + ("<assistant>" if add_generation_prompt else "")
        return self.encode(text)


@dataclass
class _Out:
    request_id: str
    new_token_ids: list[int]
    new_text: str
    token_ids: list[int]
    finished: bool
    finish_reason: str | None


class FakeEngine:
    """LLMEngine's interface with a trivial model: token i of a request is chr(ord('a') + (len(prompt) + i) % 26).

    Blocks are counted like a paged cache (ceil(tokens / block_size) per request), so tests can check that aborts
    free them; `step_delay_s` makes requests last long enough to abort; clearing `gate` holds the next step.
    """

    def __init__(self, max_model_len: int = 64, num_blocks: int = 256, block_size: int = 4, step_delay_s: float = 0.0):
        self.max_model_len, self.num_blocks, self.block_size = max_model_len, num_blocks, block_size
        self.vocab_size = FAKE_VOCAB
        self.step_delay_s = step_delay_s
        self.gate = threading.Event()
        self.gate.set()
        self.requests: dict[str, dict] = {}
        self.aborted: list[str] = []

    def add_request(self, request_id, prompt_token_ids, params) -> None:
        if not prompt_token_ids:
            raise ValueError("empty prompt")
        if len(prompt_token_ids) >= self.max_model_len:
            raise ValueError(f"prompt of {len(prompt_token_ids)} tokens exceeds max_model_len {self.max_model_len}")
        params.validate()
        self.requests[request_id] = {"prompt": list(prompt_token_ids), "out": [], "params": params}

    def abort_request(self, request_id) -> None:
        if self.requests.pop(request_id, None) is not None:
            self.aborted.append(request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def step(self) -> list[_Out]:
        self.gate.wait()
        time.sleep(self.step_delay_s)
        outs = []
        for rid, r in list(self.requests.items()):
            token = ord("a") + (len(r["prompt"]) + len(r["out"])) % 26
            r["out"].append(token)
            finished = len(r["out"]) >= r["params"].max_tokens
            if finished:
                del self.requests[rid]
            outs.append(_Out(rid, [token], chr(token), r["prompt"] + r["out"], finished, "length" if finished else None))
        return outs

    def stats(self) -> dict:
        used = sum(-(-(len(r["prompt"]) + len(r["out"])) // self.block_size) for r in self.requests.values())
        return {"num_waiting": 0, "num_running": len(self.requests), "num_free_blocks": self.num_blocks - used,
                "num_total_blocks": self.num_blocks, "kv_usage": used / self.num_blocks, "num_preemptions": 0}

    @staticmethod
    def expected(prompt_len: int, max_tokens: int) -> str:
        return "".join(chr(ord("a") + (prompt_len + i) % 26) for i in range(max_tokens))
