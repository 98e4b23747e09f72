"""The mostly-decode dense batch of the layer benchmarks (layer_overlap.py, layer_gantt.py): NanoFlow's steady state.

`tokens - chunk` decode tokens, one per request, with contexts `ctx` jittered by +-`jitter`, then one `chunk`-token
prefill chunk of a request with a cached prefix as long as the decode count; every request's blocks are scattered
over the cache (a random permutation), as after churn. Kept apart from the benchmarks so that a CPU run imports no
Triton kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAGE = 16


@dataclass
class DecodeBatch:
    lens: list[int]  # context length of each request after this step
    tables: torch.Tensor  # [requests, max_blocks] int32
    req: torch.Tensor  # [tokens] int32: each token's request
    pos: torch.Tensor  # [tokens] int64: each token's position
    slots: torch.Tensor  # [tokens] int64: where each token's K/V goes
    last: torch.Tensor  # [requests] int64: each request's last token (the logits rows)
    num_blocks: int

    @property
    def kv_tokens(self) -> int:
        return sum(self.lens)


def mostly_decode_batch(ctx: int, generator: torch.Generator, tokens: int = 1024, chunk: int = 16, jitter: int = 64,
                        page: int = PAGE) -> DecodeBatch:
    """The batch on the generator's device; draws the context jitter first, then the block permutation."""
    device = generator.device
    decode = tokens - chunk
    if decode < 1 or chunk < 1 or ctx - jitter < 1:
        raise ValueError(f"a mostly-decode batch needs tokens > chunk >= 1 and ctx > jitter, got tokens={tokens}, "
                         f"chunk={chunk}, ctx={ctx}, jitter={jitter}")
    lens = (ctx + torch.randint(-jitter, jitter + 1, (decode,), generator=generator, device=device)).tolist()
    lens.append(decode + chunk)  # the prefill request: a cached prefix of `decode` tokens + this chunk
    max_blocks = -(-max(lens) // page)
    num_blocks = len(lens) * max_blocks
    tables = torch.randperm(num_blocks, device=device, generator=generator).view(len(lens), max_blocks).int()
    req = torch.tensor(list(range(decode)) + [decode] * chunk, device=device, dtype=torch.int32)
    pos = torch.tensor([n - 1 for n in lens[:decode]] + list(range(decode, decode + chunk)), device=device,
                       dtype=torch.int64)
    tab = tables.long()[req.long()]
    slots = tab.gather(1, (pos // page)[:, None])[:, 0] * page + pos % page
    last = torch.tensor(list(range(decode)) + [tokens - 1], device=device, dtype=torch.int64)
    return DecodeBatch(lens, tables, req, pos, slots, last, num_blocks)
