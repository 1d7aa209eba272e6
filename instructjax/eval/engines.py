"""Which engine (eval/interface.py's `Engine`) generates: this process (eval/generate.py's `Generator` on the loaded
model) or an OpenAI-compatible server (eval/endpoint.py's `EndpointEngine`, `--endpoint`). The one place the choice
is made: `generate`, `eval` and an `eval:` block load their engine here, and results.json's `engine` says which it
was."""

from __future__ import annotations

from instructjax import __version__
from instructjax.eval import generate
from instructjax.eval.endpoint import Endpoint, open_endpoint
from instructjax.eval.interface import Engine


def load_engine(model: str, *, endpoint: Endpoint | None = None, tokenizer: str | None = None,
                template: str | None = None, batch_size: int = 8, **options) -> tuple[Engine, object]:
    """(engine, HF tokenizer) of `model` (`load_generator`'s, `options` passed on to it); with `endpoint`, the
    server generates and the model gives only its tokenizer and chat template."""
    if endpoint is None:
        return generate.load_generator(model, tokenizer=tokenizer, template=template, batch_size=batch_size,
                                       **options)
    generator = open_endpoint(model, endpoint, tokenizer=tokenizer, template=template)
    return generator, generator.tokenizer


def engine_record(generator: Engine | None) -> dict:
    """results.json's `engine`: the engine's own `describe()`; without one loaded (nothing generated), this
    package's engine."""
    if generator is not None:
        return generator.describe()

    return {"name": "instructjax", "version": __version__}
