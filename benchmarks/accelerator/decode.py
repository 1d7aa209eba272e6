"""The decode section: greedy `generate` tokens/s at each batch size, instructjax beside transformers'
`generate` (both forced to the same number of new tokens), on the training step's model shape."""

from __future__ import annotations

import statistics
import time

from .train_step import SMALL_MODEL

TINYLLAMA = ["--layers", "22", "--hidden", "2048", "--intermediate", "5632", "--heads", "32", "--kv-heads", "4"]


DEFAULT_CHUNK = 8  # ContinuousBatcher's own default: generate_ids' figures are this chunk's


def decode_args(small: bool) -> list[str]:
    model = SMALL_MODEL if small else TINYLLAMA
    sizes = ["--batches", "2", "--prompt", "8", "--new-tokens", "4", "--repeats", "1"] if small else \
        ["--batches", "1,32", "--prompt", "128", "--new-tokens", "128", "--repeats", "3"]
    return [*model, *sizes]


def decode_config(args):
    """The decoding model: the training step's shape, bf16 weights (as served)."""
    from instructjax.model.config import DecoderConfig

    return DecoderConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                       num_layers=args.layers, num_heads=args.heads, num_kv_heads=args.kv_heads,
                       max_position_embeddings=max(2048, args.prompt + args.new_tokens), dtype="bfloat16",
                       param_dtype="bfloat16")


def decode_jax(args) -> dict:
    """Median seconds of `generate_ids` (greedy, no stop id) per batch size, after a compiling call."""
    import jax
    import numpy as np
    from flax import nnx

    from instructjax.eval.generate import DEFAULT_SLOTS, Sampling, generate_ids
    from instructjax.model.batching import ContinuousBatcher
    from instructjax.model.batching_shapes import bucket
    from instructjax.model.decoder import Decoder

    config = decode_config(args)
    model = nnx.jit(lambda: Decoder(config, rngs=nnx.Rngs(0)))()  # one compiled init, not an op per tensor
    sampling = Sampling(max_new_tokens=args.new_tokens)

    def timed(batch: int, chunk: int | None) -> dict:
        """generate_ids as a user calls it (chunk None), or its batcher with `chunk` decode steps a device call."""
        prompts = np.random.default_rng(batch).integers(3, config.vocab_size, (batch, args.prompt)).tolist()

        def call():
            if chunk is None:
                return generate_ids(model, prompts, sampling, stop_ids=[-1])
            batcher = ContinuousBatcher(model, slots=min(DEFAULT_SLOTS, bucket(batch, 1)), chunk=chunk)
            return batcher.generate(prompts, sampling, [-1])

        t0 = time.perf_counter()
        first = call()
        compile_s = time.perf_counter() - t0
        assert all(len(ids) == args.new_tokens for ids in first)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        return {"s": statistics.median(times), "first_call_s": compile_s}

    out = {str(batch): timed(batch, None) for batch in args.batches}
    by_chunk = {str(c): {str(b): timed(b, c) for b in args.batches} for c in args.chunks if c != DEFAULT_CHUNK}
    return {"results": out, "by_chunk": by_chunk, "device": jax.devices()[0].device_kind}


def decode_torch(args) -> dict:
    """Median seconds of transformers' greedy `generate` (bf16, SDPA) forced to the same new tokens."""
    import numpy as np
    import torch
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    from instructjax.convert import hf_config

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = decode_config(args)
    with torch.device(device):  # initialised on the device
        model = LlamaForCausalLM._from_config(HFConfig(**hf_config.to_hf(config)), attn_implementation="sdpa",
                                              dtype=torch.bfloat16).eval()
    out = {}
    for batch in args.batches:
        ids = torch.from_numpy(np.random.default_rng(batch).integers(3, config.vocab_size, (batch, args.prompt)))
        ids = ids.to(device)

        def run(ids=ids):
            with torch.no_grad():
                new = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0,
                                     max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
            if device == "cuda":
                torch.cuda.synchronize()
            assert new.shape[1] == args.prompt + args.new_tokens
            return new

        run()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        out[str(batch)] = {"s": statistics.median(times)}
    return {"results": out, "version": torch.__version__}

