"""What a run is bound to, resolved from its config before any data is read or anything compiles.

- **The model**: the preset with the config's overrides, or the config saved with `model.init_from`.
- **The tokenizer**: the config's top-level `tokenizer:`, else the one saved with `model.init_from`
  (an imported HF model keeps its own), else the built-in default (from-scratch presets only).
- **The model's word on it**: a tokenizer with more ids than the model has embeddings, or whose EOS
  (or, where it adds one, BOS) id is not the model's, is a one-line ConfigError. A from-scratch preset
  takes its special ids from the tokenizer instead (it has no pretrained convention to keep).
- **The data**: every task of the mixture bound to that tokenizer, the run's chat template
  (`template:`, else the tasks' own, else tulu) and the run's row length (`instructjax.data.binding`).
- **What the checkpoint carries**: the tokenizer files with the chat template the run trains with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from instructjax.core.config import RunConfig
from instructjax.core.errors import ConfigError
from instructjax.model.config import DecoderConfig, preset, with_overrides


def resolve_model_config(config: RunConfig) -> DecoderConfig:
    """The preset with overrides, or the config stored with `model.init_from`'s params (plus overrides)."""
    if config.model.init_from:
        from instructjax.core.checkpoint import read_meta

        return with_overrides(DecoderConfig.from_dict(read_meta(config.model.init_from)[0]), config.model.overrides)
    return preset(config.model.preset, **config.model.overrides)


def tokenizer_path(config: RunConfig) -> str | None:
    """The run's tokenizer path (None: the built-in default, for a from-scratch preset)."""
    if config.tokenizer:
        return config.tokenizer
    if not config.model.init_from:
        return None
    from instructjax.core.checkpoint import read_tokenizer
    from instructjax.data.encoding.tokenizer import materialize

    try:
        item = read_tokenizer(config.model.init_from)
    except ConfigError as e:
        raise ConfigError(f"model.init_from={config.model.init_from}: {e}; write it with "
                          f"`instructjax import --hf HF_DIR --out {config.model.init_from}`") from None
    path = materialize(item["files"]) if item else None
    if path is None:
        raise ConfigError(f"model.init_from={config.model.init_from} carries no tokenizer (its HF directory had "
                          "none): set `tokenizer:` in the config to the model's tokenizer")
    return path


def fit_model_to_tokenizer(model: DecoderConfig, tokenizer, *, pretrained: bool) -> DecoderConfig:
    """`model` checked against `tokenizer` (one-line ConfigErrors); a from-scratch model takes its
    BOS/EOS/PAD ids from the tokenizer."""
    where = f"tokenizer {tokenizer.path}"
    if tokenizer.vocab_size > model.vocab_size:
        raise ConfigError(f"{where} has {tokenizer.vocab_size} ids but the model's embedding has "
                          f"{model.vocab_size} rows (model.vocab_size)")
    if not pretrained:
        return model.replace(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, extra_eos_ids=(), pad_id=tokenizer.pad_id)
    if tokenizer.eos_id not in model.eos_ids:
        raise ConfigError(f"{where} ends turns with id {tokenizer.eos_id} ({tokenizer.eos_token!r}) but the model's "
                          f"eos_token_id is {model.eos_id if not model.extra_eos_ids else list(model.eos_ids)}")
    if tokenizer.adds_bos and tokenizer.bos_id != model.bos_id:
        raise ConfigError(f"{where} starts with BOS id {tokenizer.bos_id} ({tokenizer.bos_token!r}) but the model's "
                          f"bos_token_id is {model.bos_id}")
    return model


@dataclass(frozen=True)
class RunData:
    """The run's data bound to its tokenizer: `config` (a DataSection over the bound mixture), the task
    names as the user wrote them (`sources`), the chat template, the tokenizer path and the bound mixture
    resolved once (`binding.Resolved`: what the pipeline reads)."""

    config: object
    sources: list[str]
    template: str | None
    tokenizer: str | None
    resolved: object = None


def bind_data(config: RunConfig, tokenizer: str | None) -> RunData:
    """Register the config's own tasks (`define:`) and bind its mixture to the run (see the module doc)."""
    from instructjax.data.binding import bind, resolve, uses_model_encoder
    from instructjax.data.blends.specs import define, unknown

    define(config.define)
    resolved = resolve(config.data.mixture)  # once: bind and the pipeline take it from here
    if resolved is None:
        raise unknown(config.data.mixture)
    if uses_model_encoder(resolved):  # its encoder runs the run's model
        import instructjax.train.embed  # noqa: F401  (registers "llama-mean")
    bound = bind(resolved, tokenizer=tokenizer, template=config.template, max_length=config.data.seq_len,
                 model=config.model.init_from, on_bad_row=config.data.on_bad_row)
    return RunData(dataclasses.replace(config.data, mixture=bound.name), bound.sources,
                   config.template or bound.template, tokenizer, bound.resolved)


def tokenizer_item(tokenizer, template: str | None) -> dict:
    """The checkpoint's `tokenizer` item: the files with the run's chat template, and its name."""
    from instructjax.data.encoding.templates import jinja_template

    chat_template = jinja_template(template, bos=tokenizer.adds_bos, own=tokenizer.chat_template) if template else None
    return {"files": tokenizer.files(chat_template), "template": template}
