"""The flags of the commands that run a model (`score`, `generate`, `eval codex`, `eval`): where it lies, how it
decodes, the endpoint that stands in for it, and the checks of their values; the engine they name."""

from __future__ import annotations

import argparse
import math

from instructjax.core.errors import ConfigError


def model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a checkpoint (RUN_DIR[/STEP]) or an HF model directory")
    p.add_argument("--tokenizer", help="tokenizer override (.model or HF dir); default: the model's own")
    p.add_argument("--template", help="chat template name; default: the one the model was trained with")
    p.add_argument("--batch-size", type=int, default=8, help="sequences scored at once")
    placement_args(p)


def placement_args(p: argparse.ArgumentParser) -> None:
    """Where the model lies and how it decodes (eval/placement.py, model/engine.py)."""
    p.add_argument("--dtype", choices=["float32", "bfloat16"],
                   help="the evaluation's dtype (default: bfloat16 on accelerators, float32 on a CPU)")
    p.add_argument("--mesh", help="the model's mesh over every device, e.g. fsdp=4,tensor=2 (default: data "
                                  "parallel where the weights fit a device, else fsdp)")
    p.add_argument("--slots", type=int, help="sequences decoded at once (continuous batching; default 32)")


def placement(args) -> dict:
    """The placement options; under several JAX processes (JAX_COORDINATOR_ADDRESS set: a pod's hosts) their
    runtime is started first, so that the mesh spans every host's devices."""
    from instructjax.core import hosts
    from instructjax.eval.generate import DEFAULT_SLOTS
    from instructjax.eval.placement import parse_mesh

    hosts.initialize(False, f"eval:{getattr(args, 'out', None)}")

    return {"dtype": getattr(args, "dtype", None), "mesh": parse_mesh(getattr(args, "mesh", None)),
            "slots": getattr(args, "slots", None) or DEFAULT_SLOTS}


def endpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", metavar="URL", help="generate with this OpenAI-compatible server (vLLM, "
                   "transformers serve; e.g. http://localhost:8000/v1) instead of in this process; --model gives "
                   "the tokenizer and chat template; --batch-size requests are in flight at once")
    p.add_argument("--endpoint-model", metavar="NAME", help="the model's name at --endpoint (default: the one "
                   "model the server lists)")
    p.add_argument("--endpoint-retries", type=int, default=6, help="retries of a request after a dropped "
                   "connection, a timeout, a rate limit or a server error")
    p.add_argument("--endpoint-timeout", type=float, default=600.0, help="seconds one request may take")


def endpoint(args, cache: str | None = None):
    """The Endpoint the flags name (None without --endpoint, or for a command without the flags); its replies
    cached in `cache`."""
    if not getattr(args, "endpoint", None):
        if getattr(args, "endpoint_model", None):
            raise ConfigError("--endpoint-model needs --endpoint (the server to ask)")
        return None
    from instructjax.eval.endpoint import Endpoint

    return Endpoint(args.endpoint, args.endpoint_model, concurrency=args.batch_size, max_retries=args.endpoint_retries,
                    timeout=args.endpoint_timeout, cache=cache)


def generator(args, cache: str | None = None):
    from instructjax.eval.engines import load_engine

    return load_engine(args.model, tokenizer=args.tokenizer, template=args.template, batch_size=args.batch_size,
                       endpoint=endpoint(args, cache), **placement(args))


def check_numbers(args) -> None:
    """One line for a numeric flag no run can use (those the command has): a negative temperature, no new tokens,
    top-p outside (0, 1], no slots, an empty batch, ..."""
    rules = (("max_new_tokens", "--max-new-tokens", lambda v: v >= 1, "must be >= 1"),
             ("temperature", "--temperature", lambda v: math.isfinite(v) and v >= 0, "must be >= 0 (0: greedy)"),
             ("top_p", "--top-p", lambda v: 0 < v <= 1, "must be in (0, 1]"),
             ("slots", "--slots", lambda v: v >= 1, "must be >= 1"),
             ("batch_size", "--batch-size", lambda v: v >= 1, "must be >= 1"),
             ("n", "-n", lambda v: v >= 1, "must be >= 1"),
             ("limit", "--limit", lambda v: v > 0, "must be > 0"),
             ("num_fewshot", "--num-fewshot", lambda v: v >= 0, "must be >= 0"),
             ("endpoint_retries", "--endpoint-retries", lambda v: v >= 0, "must be >= 0"),
             ("endpoint_timeout", "--endpoint-timeout", lambda v: v > 0, "must be > 0"))
    for name, flag, ok, rule in rules:
        value = getattr(args, name, None)
        if value is not None and not ok(value):
            raise ConfigError(f"{flag} {value}: {rule}")


def completion_tokens(generator, completions: list[dict]) -> int | None:
    """The completions' tokens under the generator's tokenizer (an endpoint's engine), None without one."""
    tokenizer = getattr(generator, "tokenizer", None)
    if tokenizer is None:
        return None
    return sum(len(tokenizer(c["output"], add_special_tokens=False)["input_ids"]) for c in completions)
