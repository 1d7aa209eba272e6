"""`instructjax import` (HF -> checkpoint) and `instructjax export` (checkpoint -> HF)."""

from __future__ import annotations

import resource
import time


def register(subparsers) -> None:
    imp = subparsers.add_parser("import", help="a Hugging Face model (any supported family) -> an instructjax checkpoint")
    imp.add_argument("--hf", required=True, help="HF model directory (safetensors or .bin, sharded or not)")
    imp.add_argument("--out", required=True, help="run directory to write: OUT/checkpoints/0 (the weights, and the "
                     "model's tokenizer as the step's `tokenizer` item), local or gs://")
    imp.add_argument("--mesh", default=None,
                     help="place parameters on a mesh while reading, e.g. fsdp=-1 or data=1,fsdp=4,tensor=2")
    imp.add_argument("--chat-template", default=None,
                     help="the chat template the model's tokenizer is saved with (`template: model` trains with it): a "
                          ".jinja file or another HF tokenizer directory (e.g. the Instruct model's, for a base model "
                          "whose tokenizer carries none)")
    imp.add_argument("--adapter", default=None, help="a PEFT LoRA adapter directory of that model "
                     "(adapter_config.json, adapter_model.safetensors): imported with it, so a run with "
                     "init_from: OUT continues training the adapter")
    imp.set_defaults(func=run_import)

    exp = subparsers.add_parser("export", help="an instructjax checkpoint -> a Hugging Face model directory")
    exp.add_argument("--checkpoint", required=True, help="RUN_DIR (latest step) or RUN_DIR/checkpoints/STEP")
    exp.add_argument("--out", required=True, help="HF directory to write (new or empty, unless --force)")
    exp.add_argument("--force", action="store_true", help="export over a non-empty --out: what it holds is removed "
                     "first (an earlier export's adapter or shards would otherwise be loaded with the new model)")
    exp.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    exp.add_argument("--tokenizer", help="tokenizer (.model or HF dir); default: the checkpoint's, else LLaMA's")
    exp.add_argument("--template", help="chat template name (tulu, alpaca, ...); default: the checkpoint's")
    exp.add_argument("--max-shard-gb", type=float, default=5.0, help="safetensors shard size")
    exp.add_argument("--adapter", action="store_true", help="a LoRA run's adapters alone, as a PEFT adapter "
                     "(adapter_model.safetensors, adapter_config.json); without it, the model with them merged")
    exp.set_defaults(func=run_export)


def _parse_mesh(text: str | None):
    if not text:
        return None
    from instructjax.core.sharding import make_mesh

    return make_mesh({k: int(v) for k, v in (part.split("=") for part in text.split(","))})


def _report(what: str, start: float) -> None:
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{what} in {time.perf_counter() - start:.1f}s, peak host memory {peak_gb:.2f} GB")


def run_import(args) -> int:
    from instructjax.convert.saved import import_hf
    from instructjax.model.config import param_count

    start = time.perf_counter()
    config = import_hf(args.hf, args.out, mesh=_parse_mesh(args.mesh), chat_template=args.chat_template,
                       adapter=args.adapter)
    with_adapter = f" with the LoRA adapter {args.adapter}" if args.adapter else ""
    _report(f"imported {param_count(config) / 1e6:.1f}M parameters from {args.hf}{with_adapter} into {args.out}",
            start)
    return 0


def run_export(args) -> int:
    from instructjax.convert.saved import export_checkpoint
    from instructjax.model.config import param_count

    start = time.perf_counter()
    config = export_checkpoint(args.checkpoint, args.out, dtype=args.dtype, tokenizer=args.tokenizer,
                               template=args.template, max_shard_bytes=int(args.max_shard_gb * 2**30),
                               adapter=args.adapter, overwrite=args.force)
    if args.adapter:  # the adapter's own elements (PEFT's "trainable params"), not the model's
        from instructjax.model.lora import adapter_params

        _report(f"wrote a LoRA adapter of {adapter_params(config):,} parameters ({args.dtype}) to {args.out}", start)
    else:
        _report(f"exported {param_count(config) / 1e6:.1f}M parameters ({args.dtype}) to {args.out}", start)
    return 0
