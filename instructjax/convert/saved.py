"""Saved models, whichever format they are in: import an HF directory as an instructjax checkpoint, export a
checkpoint as an HF directory, and open either as (model, tokenizer) for generation, scoring and eval.

The tensor-level mapping is `convert.hf`; this module decides which files go where.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import jax
import numpy as np

from instructjax.convert.adapter import base_mismatch, hf_base, read_adapter, write_adapter
from instructjax.convert.hf import (
    hf_to_params,
    np_dtype,
    param_shardings,
    params_to_hf,
    read_hf_config,
    write_hf_config,
)
from instructjax.core import storage
from instructjax.core.errors import ConfigError
from instructjax.data.encoding.templates import jinja_template
from instructjax.model import lora, partition, quantize
from instructjax.model.config import DecoderConfig
from instructjax.model.decoder import with_params

EXPORT_MARKER = "instructjax_export.json"  # written last into an export: the checkpoint and step it holds


def split_checkpoint_path(path: str) -> tuple[str, int | None]:
    """RUN_DIR or RUN_DIR/checkpoints/STEP (local or in a bucket) -> (directory, step or None). A step directory is
    named by its number (whatever is left in it: a damaged step is then a one-line error, not "no checkpoint")."""
    where = storage.path(path)
    if where.name.isdigit() and where.is_dir() and not (where / "checkpoints").is_dir():
        return str(where.parent), int(where.name)
    return str(where), None


def is_hf_dir(path: str) -> bool:
    return (storage.path(path) / "config.json").is_file()


def _has_tokenizer(path: str) -> bool:
    return any((storage.path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer.model"))


def import_hf(hf_dir: str, out: str, *, mesh=None, param_dtype: str = "float32",
              chat_template: str | None = None, adapter: str | None = None) -> DecoderConfig:
    """HF model directory -> params-only instructjax checkpoint at OUT, carrying the model's own tokenizer
    (and its chat template, if it has one, or `chat_template`: a .jinja file or another tokenizer directory's);
    either may be local or in a bucket. `adapter`: a PEFT LoRA adapter of that model, imported with it (its
    `model.lora` recorded, its adapters in the params), so a run with `init_from: OUT` continues training it."""
    from instructjax.core.checkpoint import save_params
    from instructjax.data.encoding.tokenizer import Tokenizer

    source = str(storage.path(hf_dir))
    storage.check_bucket(out, "--out")
    if (storage.path(out) / "checkpoints").is_dir() and any((storage.path(out) / "checkpoints").iterdir()):
        raise ConfigError(f"--out {out} already holds a checkpoint: choose another directory, or remove it first")
    hf_dir = _local_hf_dir(hf_dir)
    config = read_hf_config(hf_dir)
    params, config = hf_to_params(hf_dir, config, mesh=mesh, param_dtype=param_dtype)
    if adapter is not None:
        adapter_dir = _local_hf_dir(adapter)
        config, adapters = read_adapter(adapter_dir, config)
        params = partition.of(config).combine(adapters, params)
        if warning := base_mismatch(adapter_dir, source if storage.is_remote(source) else hf_dir):
            print(f"instructjax: warning: {warning}", file=sys.stderr, flush=True)
    template = _chat_template(chat_template) if chat_template else None
    tokenizer = None
    if _has_tokenizer(hf_dir):
        tok = Tokenizer.load(hf_dir)
        check_tokenizer(tok, config, template or tok.chat_template, where=source,
                        template_from=f"--chat-template {chat_template}" if template else source)
        tokenizer = {"files": tok.files(template), "template": None}
    save_params(out, params, dataclasses.asdict(config.replace(dtype="bfloat16")), run_config={"source": source},
                step=0, tokenizer=tokenizer)
    return config


def check_tokenizer(tok, config: DecoderConfig, chat_template: str | None, *, where: str,
                    template_from: str | None = None, tokenizer: str | None = None) -> None:
    """One line where a model and its tokenizer cannot go on together: more token ids than embedding rows (every
    later command would read past the table), or a chat template that does not compile (named by `template_from`,
    else `where`; a --tokenizer given instead of the model's own by `tokenizer`)."""
    check_vocab(tok, config, where=where, tokenizer=tokenizer)
    if chat_template:
        from instructjax.data.encoding.model_template import check_compiles

        check_compiles(chat_template, where=template_from or where)


def check_vocab(tok, config: DecoderConfig, *, where: str, tokenizer: str | None = None) -> None:
    """One line where the tokenizer has more token ids than the model's embedding has rows (every id past them
    would read outside the table: NaN scores, garbage text). `tokenizer`: the --tokenizer a user gave instead of
    the model's own, named in the line."""
    if tok.vocab_size > config.vocab_size:
        whose = f"--tokenizer {tokenizer}" if tokenizer else "the tokenizer"
        raise ConfigError(f"{where}: {whose} has {tok.vocab_size} token ids but the model's embedding has "
                          f"{config.vocab_size} rows: give the model its own tokenizer")


def model_config(path: str, *, step: int | None = None) -> tuple[DecoderConfig, int | None]:
    """(DecoderConfig, the step to read: the newest intact one unless one is named; None for an HF directory) of a
    checkpoint (RUN_DIR[/STEP]) or an HF directory, without reading any weight."""
    if is_hf_dir(path):
        return read_hf_config(_local_hf_dir(path)), None
    from instructjax.core.checkpoint import read_meta

    directory, path_step = split_checkpoint_path(path)
    config, _, step = read_meta(directory, path_step if step is None else step)
    return DecoderConfig.from_dict(config), step


def open_model(path: str, *, tokenizer: str | None = None, template: str | None = None, dtype: str = "float32",
               step: int | None = None, mesh=None):
    """(nnx Decoder, Tokenizer, chat template or None) of a checkpoint or an HF directory, as `load_model` and
    `saved_tokenizer` give them (one step of a checkpoint for both), once the tokenizer is known to fit the
    model's embedding (`check_vocab`, before any weight is read). Every command that runs a model with a
    tokenizer opens it here."""
    config, step = model_config(path, step=step)
    tok, chat_template = saved_tokenizer(path, step=step, tokenizer=tokenizer, template=template)
    check_vocab(tok, config, where=path, tokenizer=tokenizer)
    return load_model(path, mesh=mesh, dtype=dtype, step=step), tok, chat_template


def _chat_template(where: str) -> str:
    """The chat template of a .jinja file or of an HF tokenizer directory (one line naming what is wrong)."""
    from instructjax.data.encoding.tokenizer import Tokenizer

    path = storage.path(where)
    if path.is_file():
        return path.read_text()
    if not path.is_dir():
        raise ConfigError(f"--chat-template {where}: no such file or directory")
    template = Tokenizer.load(str(path)).chat_template
    if not template:
        raise ConfigError(f"--chat-template {where}: that tokenizer has no chat_template")
    return template


def saved_tokenizer(path: str, *, step: int | None = None, tokenizer: str | None = None, template: str | None = None):
    """(Tokenizer, chat template or None) of a checkpoint (RUN_DIR[/STEP]) or an HF directory: the ones it
    was trained with (the checkpoint's `tokenizer` item), unless `tokenizer` (a path) or `template` (a
    template name) say otherwise. A model that carries no tokenizer needs `tokenizer`: no default."""
    from instructjax.data.encoding.tokenizer import Tokenizer

    if is_hf_dir(path):
        saved, saved_template = (path if _has_tokenizer(path) else None), None
    else:
        from instructjax.core.checkpoint import read_tokenizer
        from instructjax.data.encoding.tokenizer import materialize

        directory, path_step = split_checkpoint_path(path)
        item = read_tokenizer(directory, path_step if step is None else step)
        saved, saved_template = ((materialize(item["files"], named=f"the tokenizer of {path}"), item.get("template"))
                                 if item else (None, None))
    if (tokenizer or saved) is None:
        raise ConfigError(f"{path} carries no tokenizer: pass --tokenizer (the model's own tokenizer)")
    tok = Tokenizer.load(tokenizer or saved)
    if template or (tokenizer and saved_template):
        return tok, jinja_template(template or saved_template, bos=tok.adds_bos, own=tok.chat_template)
    return tok, tok.chat_template


def check_out(out: str, checkpoint: str, *, overwrite: bool) -> bool:
    """Whether export directory `out` holds anything (files an export over it removes first, `clear_out`). Without
    `overwrite` that is one line (--force replaces it), as is an `out` that holds the checkpoint itself."""
    if not storage.listing(out):
        return False
    if not overwrite:
        raise ConfigError(f"--out {out} is not empty: choose another directory, or pass --force to replace what it "
                          "holds")
    if (_resolved(split_checkpoint_path(checkpoint)[0]) + "/").startswith(_resolved(out) + "/"):
        raise ConfigError(f"--out {out} holds the checkpoint {checkpoint}: choose another directory")
    return True


def _resolved(p: str) -> str:
    return str(storage.path(p)).rstrip("/") if storage.is_remote(p) else os.path.realpath(storage.path(p))


def clear_out(out: str, full: bool) -> None:
    """An export's `out` emptied (`full`: it held files, `check_out`), so that no earlier export's file (an adapter's
    adapter_config.json beside a merged model, another family's shards) stays beside the new one."""
    if full:
        storage.remove_tree(out)


def export_checkpoint(checkpoint: str, out: str, *, dtype: str | None = "fp32", tokenizer: str | None = None,
                      template: str | None = None, max_shard_bytes: int = 5 * 2**30,
                      adapter: bool = False, overwrite: bool = True) -> DecoderConfig:
    """instructjax checkpoint (RUN_DIR[/STEP]) -> HF directory: safetensors, configs, and the tokenizer and
    chat template the run trained with (`tokenizer` / `template` override them). A LoRA run's adapters are
    merged into the kernels, or with `adapter` written alone as a PEFT adapter (`convert.adapter`). What `out`
    held is removed before the export is written, once everything is read and checked; without `overwrite` a
    non-empty `out` is one line instead (`check_out`)."""
    from instructjax.core.checkpoint import read_meta

    storage.check_bucket(out, "--out")
    full = check_out(out, checkpoint, overwrite=overwrite)
    directory, step = split_checkpoint_path(checkpoint)
    stored, _, step = read_meta(directory, step)
    config = DecoderConfig.from_dict(stored)
    if adapter:
        export_adapter(directory, step, config, out, dtype=np_dtype(dtype, config.param_dtype), tokenizer=tokenizer,
                       template=template, clear=full)
        return config
    # the merged model: the base as the run computed with it (a QLoRA's dequantized), W + A B alpha / rank (PEFT's
    # merge_and_unload)
    params, config = merged_model(directory, step, config.scan_layers), config.replace(quantize_base="none", lora=None)
    tok, chat_template = saved_tokenizer(directory, step=step, tokenizer=tokenizer, template=template)
    check_tokenizer(tok, config, chat_template, where=checkpoint, tokenizer=tokenizer)
    target = np_dtype(dtype, config.param_dtype)
    ends = [tok.eos_id, *config.eos_ids]  # and the token the exported template ends a reply with
    if chat_template:
        from instructjax.data.encoding.model_template import turn_end_token

        token = turn_end_token(tok, chat_template)
        ends += [tok.special_id(token)] if token is not None else []
    eos_ids = list(dict.fromkeys(ends))
    clear_out(out, full)
    with storage.writing_dir(out) as local:  # a bucket: written here, then uploaded
        params_to_hf(params, config, local, dtype=dtype, max_shard_bytes=max_shard_bytes)
        write_hf_config(config, local, dtype=target, bos_id=tok.bos_id, eos_ids=eos_ids, pad_id=tok.pad_id)
        tok.save(local, chat_template)
    trained = template or trained_template(checkpoint)
    storage.write_text(storage.join(out, EXPORT_MARKER), json.dumps(
        {"checkpoint": directory, "step": step, "dtype": config.dtype, "template": trained}) + "\n")
    return config


def export_adapter(directory: str, step: int, config: DecoderConfig, out: str, *, dtype, tokenizer: str | None = None,
                   template: str | None = None, clear: bool = False) -> None:
    """A LoRA checkpoint's adapters as a PEFT adapter directory at `out` (`convert.adapter`), with the run's tokenizer
    and chat template beside them; everything is read and checked before `out` is made (a failure leaves none), and
    with `clear` emptied first."""
    from instructjax.core.checkpoint import load_params, read_tokenizer

    if config.lora is None:
        raise ConfigError(f"--adapter: {directory} was not trained with model.lora; export it without --adapter")
    base = hf_base(directory, step)
    tok = chat_template = None  # a run saves its tokenizer; a bare params checkpoint may carry none
    if tokenizer or read_tokenizer(directory, step) is not None:
        tok, chat_template = saved_tokenizer(directory, step=step, tokenizer=tokenizer, template=template)
    adapters = load_params(directory, step)[0]  # the step's own: a layered run's adapters alone, or all
    clear_out(out, clear)
    with storage.writing_dir(out) as local:
        write_adapter(adapters, config, local, base=base, source=f"{directory} step {step}", dtype=dtype)
        if tok is not None:
            tok.save(local, chat_template)


def export_dtype(hf_dir: str) -> str | None:
    """The compute dtype the exported run trained in (its marker), None for an HF directory not written by `export`
    (or by an older one)."""
    try:
        return str(json.loads((storage.path(hf_dir) / EXPORT_MARKER).read_text())["dtype"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def trained_template(model: str) -> str | None:
    """The chat template name a model was trained with: a checkpoint's tokenizer item, an export's marker; None for
    a model that records none (a base model, an HF directory not written by `export`)."""
    if is_hf_dir(model):
        try:
            return json.loads((storage.path(model) / EXPORT_MARKER).read_text()).get("template")
        except (OSError, ValueError, AttributeError):
            return None
    from instructjax.core.checkpoint import read_tokenizer

    directory, step = split_checkpoint_path(model)
    try:
        item = read_tokenizer(directory, step)
    except ConfigError:
        return None
    return (item or {}).get("template")


def export_step(hf_dir: str) -> int | None:
    """The checkpoint step an export holds (its marker), None for an HF directory not written by `export`."""
    try:
        return int(json.loads((storage.path(hf_dir) / EXPORT_MARKER).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _local_hf_dir(path: str) -> str:
    """An HF model directory on the local disk (a bucket's is downloaded: `storage.local_copy`)."""
    try:
        return storage.local_copy(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such Hugging Face model directory") from None


def relayout_layers(params: dict, num_layers: int, stacked: bool) -> dict:
    """Host (numpy) params with their decoder layers stacked (scanned layout) or as a list, as `stacked` says."""
    layers = params["layers"]
    is_list = bool(layers) and all(isinstance(k, int) for k in layers)
    if stacked and is_list:
        layers = jax.tree.map(lambda *xs: np.stack(xs), *[layers[i] for i in range(num_layers)])
    elif not stacked and not is_list:
        layers = {i: jax.tree.map(lambda x, i=i: np.asarray(x)[i], layers) for i in range(num_layers)}
    return {**params, "layers": layers}


def load_params_as(directory: str, config: DecoderConfig, *, step: int | None = None, shardings=None) -> dict:
    """A checkpoint's params in the layout `config` runs with, placed by `shardings`. Stored in the other
    layout (`model.scan_layers` changed), they are read to the host, restacked and then placed. A LoRA run's
    checkpoint holds its adapters alone: its base (`init_from`, checked to be the step it trained on) is read too."""
    from instructjax.core.checkpoint import read_base, read_meta

    stored, _, step = read_meta(directory, step)  # the step to read, once: the newest intact one by default
    base = read_base(directory, step)
    if base is None:
        return _load_own(directory, step, stored, config, shardings)
    trains = partition.of(DecoderConfig.from_dict(stored).replace(scan_layers=config.scan_layers))  # its adapters
    adapters = _load_own(directory, step, stored, config, None if shardings is None else trains.trainable(shardings))
    return trains.combine(adapters, load_base(base, config, shardings)[0])


def load_base(base: dict, config: DecoderConfig, shardings=None) -> tuple[dict, dict | None]:
    """(the frozen parameters, the adapters or None) of the checkpoint a LoRA run starts from or was trained on
    (`base`: `core.checkpoint.base_reference`), in `config`'s layout, placed by the whole model's `shardings`; the
    adapters are there when it was imported with them (`import --adapter`). Under `model.quantize_base` the base is
    read to the host and its projections quantized one kernel at a time on the devices (`model.quantize`)."""
    from instructjax.core.checkpoint import read_meta

    with_adapters = read_meta(base["checkpoint"], base["step"])[0].get("lora") is not None
    trains = partition.of(config.replace(quantize_base="none"))  # the adapters by their type: the paths they sit at
    part = lambda select, tree: None if tree is None else select(tree)  # noqa: E731
    if base.get("merged"):  # its model with its adapters folded in, fresh adapters on it (reference_model: base)
        host = merged_model(base["checkpoint"], base["step"], config.scan_layers)
        if config.quantize_base != "none":
            return quantize.quantized(host, config, part(trains.frozen, shardings)), None
        return (host if shardings is None else jax.device_put(host, trains.frozen(shardings))), None
    if config.quantize_base != "none":
        host = load_params_as(base["checkpoint"], config.replace(quantize_base="none"), step=base["step"])
        frozen = quantize.quantized(trains.frozen(host), config, part(trains.frozen, shardings))
        adapters = part(trains.trainable, host) if with_adapters else None
        if adapters is not None and shardings is not None:
            adapters = jax.device_put(adapters, trains.trainable(shardings))
        return frozen, adapters
    loaded = load_params_as(base["checkpoint"], config, step=base["step"],
                            shardings=shardings if with_adapters else part(trains.frozen, shardings))
    return trains.frozen(loaded), trains.trainable(loaded) if with_adapters else None


def merged_model(directory: str, step: int, scan_layers: bool) -> dict:
    """A checkpoint's model as it computes (host arrays, float32 where quantized): its base dequantized, its LoRA
    adapters merged into the kernels (`export` writes the same), in the layout `scan_layers` says."""
    from instructjax.core.checkpoint import read_meta

    config = DecoderConfig.from_dict(read_meta(directory, step)[0]).replace(scan_layers=scan_layers)
    params = load_params_as(directory, config, step=step)
    if config.quantize_base != "none":
        params, config = quantize.dequantized(params, config), config.replace(quantize_base="none")
    return lora.merged(params, config) if config.lora is not None else params


def _load_own(directory: str, step: int, stored: dict, config: DecoderConfig, shardings) -> dict:
    """The params a checkpoint step itself holds, in `config`'s layout, placed by `shardings`."""
    from instructjax.core.checkpoint import load_params

    if stored["scan_layers"] == config.scan_layers:
        return load_params(directory, step, shardings=shardings)[0]
    params = relayout_layers(load_params(directory, step)[0], config.num_layers, config.scan_layers)
    return params if shardings is None else jax.device_put(params, shardings)


def load_model(path: str, *, mesh=None, dtype: str = "float32", step: int | None = None):
    """The nnx Decoder of an instructjax checkpoint (RUN_DIR[/STEP]) or an HF model directory (with its tokenizer,
    checked to fit: `open_model`)."""
    if is_hf_dir(path):
        params, config = hf_to_params(_local_hf_dir(path), mesh=mesh)
    else:
        from instructjax.core.checkpoint import read_meta

        directory, path_step = split_checkpoint_path(path)
        step = path_step if step is None else step
        model_config, _, step = read_meta(directory, step)  # the newest intact step unless one is named
        config = DecoderConfig.from_dict(model_config)
        shardings = param_shardings(config, mesh) if mesh is not None else None
        params = load_params_as(directory, config, step=step, shardings=shardings)
    return with_params(config.replace(dtype=dtype), params)
