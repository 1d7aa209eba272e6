"""Orbax checkpoints of a run: one CheckpointManager at RUN_DIR/checkpoints.

Each step directory holds these items:
- `params`: the model parameters as a plain nested dict (nnx pure dict, names as in the model);
- `opt_state`: the optax state (absent in a params-only checkpoint, e.g. one imported from HF);
- `data`: the global data position (epoch, window, row) as every host holds it, int64 `[process_count, 3]`
  (the rows are equal: the data plan is global, so any number of hosts resumes from row 0);
- `meta`: JSON {step, run_config, model_config} (the model config as a plain dict: `LlamaConfig(**d)`);
- `tokenizer`: JSON {files, template}: the HF tokenizer files the run trained with (`Tokenizer.files`,
  the chat template included) and the name of its chat template (None for an import, which keeps the
  model's own). Export, generation and evaluation read it (`read_tokenizer`), never a default.

This module knows the format only: it imports neither the model nor the data layer.

`Checkpointer` is what the trainer uses; `save_params` / `load_params` are the params-only view
that HF import/export and `model.init_from` use.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from instructjax.core.errors import ConfigError, InstructJaxError


def checkpoints_dir(directory: str | Path) -> Path:
    """RUN_DIR/checkpoints for a run dir; the directory itself if it already is a checkpoints dir."""
    path = Path(directory).absolute()
    if path.name == "checkpoints" or (not (path / "checkpoints").exists() and _has_steps(path)):
        return path
    return path / "checkpoints"


def _has_steps(path: Path) -> bool:
    return path.is_dir() and any(p.name.isdigit() for p in path.iterdir())


def _int_keys(tree: Any) -> Any:
    """Orbax stores dict keys as strings; give `nnx.List` indices ("0", "1", ...) back as ints."""
    if isinstance(tree, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v) for k, v in tree.items()}
    return tree


def _str_keys(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {str(k): _str_keys(v) for k, v in tree.items()}
    return tree


def gather_data_state(host_state: np.ndarray) -> np.ndarray:
    """Every host's `[3]` iterator state, stacked to int64 `[process_count, 3]` (a collective)."""
    gathered = multihost_utils.process_allgather(np.asarray(host_state, np.int32))
    return np.asarray(gathered, np.int64).reshape(jax.process_count(), 3)


def _failed_on_any_host(failed: bool) -> bool:
    """Whether any host reports a failure (a collective with several hosts)."""
    if jax.process_count() == 1:
        return failed
    return bool(np.max(multihost_utils.process_allgather(np.array([int(failed)], np.int32))))


class CheckpointError(InstructJaxError):
    """Saving a checkpoint failed (e.g. no space left): the run stops; earlier complete steps are intact."""


_FULL = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded", errno.EFBIG: "File too large"}


def _disk_full(exc: BaseException) -> str | None:
    """"No space left on device" (or quota / file size limit) if that is what `exc` or its chain says."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for code, text in _FULL.items():
            if getattr(exc, "errno", None) == code or text in str(exc):
                return text
        exc = exc.__cause__ or exc.__context__
    return None


class Checkpointer:
    """The run's checkpoint manager: async saves, keep-N, restore of the latest complete step."""

    def __init__(self, run_dir: str | Path, *, keep: int | None = 3, async_save: bool = True,
                 tokenizer: dict | None = None):
        """`tokenizer`: the `tokenizer` item saved with every step (see the module doc)."""
        self.directory = checkpoints_dir(run_dir)
        self.tokenizer = tokenizer
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, data_state: np.ndarray, meta: dict) -> None:
        """Start saving `step` (returns once the arrays are copied off the device when async)."""
        with self._save_errors(step):
            self._save(step, params, opt_state, data_state, meta)

    def _save_errors(self, step: int):
        """Turn a failed write (this step's, or the previous async one surfacing now) into a one-line
        CheckpointError naming the step and the last complete checkpoint."""
        import contextlib

        @contextlib.contextmanager
        def guard():
            try:
                yield
            except Exception as exc:  # orbax re-raises the background thread's error here
                problem = _disk_full(exc)
                if problem is None:
                    raise
                done = {int(d.name) for d in self.directory.iterdir() if d.name.isdigit()}  # on disk: orbax
                # drops the steps a save will rotate out from its own list before that save commits
                pending = getattr(self, "_saving", None)  # an async save may fail only now
                failed = pending if pending is not None and pending not in done else step
                complete = [s for s in done if s != failed]
                raise CheckpointError(
                    f"{problem.lower()} while saving checkpoint step {failed} to {self.directory}; "
                    f"stopped, the last complete checkpoint is {'step ' + str(max(complete)) if complete else 'none'}"
                ) from None

        return guard()

    def _save(self, step: int, params: Any, opt_state: Any, data_state: np.ndarray, meta: dict) -> None:
        items = dict(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            data=ocp.args.StandardSave(np.asarray(data_state, np.int64)),
            meta=ocp.args.JsonSave({**meta, "step": step}),
        )
        if self.tokenizer is not None:
            items["tokenizer"] = ocp.args.JsonSave(self.tokenizer)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._saving = step

    def restore_latest(self, abstract_params: Any, abstract_opt_state: Any) -> tuple[int, Any, Any, np.ndarray, dict]:
        """(step, params, opt_state, data, meta) of the newest step that restores; a torn or corrupted newer
        step is reported on stderr and skipped (the run resumes from the one before it). With several hosts
        a step counts as restored only when every host restored it, so all hosts fall back to the same step."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            raise ConfigError(f"no complete checkpoint in {self.directory} to resume from")
        if jax.process_count() > 1:  # every host starts from the same list (a step committed late on one host)
            newest = multihost_utils.process_allgather(np.array([steps[0]], np.int32))
            steps = [s for s in steps if s <= int(np.min(newest))]
        for i, step in enumerate(steps):
            try:
                restored, problem = self.restore(step, abstract_params, abstract_opt_state), None
            except Exception as exc:  # noqa: BLE001 - any unreadable step: try the previous one
                restored, problem = None, exc
            if not _failed_on_any_host(problem is not None):
                return step, *restored
            kind = type(problem).__name__ if problem is not None else "elsewhere"
            reason = " ".join(str(problem).split())[:300] if problem is not None else "another host could not read it"
            if i + 1 == len(steps):
                raise ConfigError(f"no checkpoint in {self.directory} can be restored; step {step}: {reason}") from None
            aside = self._set_aside(step)
            print(f"instructjax: warning: checkpoint step {step} in {self.directory} cannot be restored "
                  f"({kind}: {reason}); falling back to step {steps[i + 1]}"
                  + (f" (the unreadable step is kept as {aside.name})" if aside else ""), file=sys.stderr)
        raise AssertionError("unreachable")

    def _set_aside(self, step: int) -> Path | None:
        """Rename an unreadable step out of the manager's view (so the resumed run can save that step
        again) without deleting anything; the primary host does it once every host is done reading."""
        source = self.directory / str(step)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"instructjax set aside step {step}")
        if jax.process_index() != 0 or not source.exists():
            self.manager.reload()
            return None
        target = source.with_name(f"{step}.unreadable")
        n = 1
        while target.exists():
            target, n = source.with_name(f"{step}.unreadable{n}"), n + 1
        source.rename(target)
        self.manager.reload()
        return target

    def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any) -> tuple[Any, Any, np.ndarray, dict]:
        """(params, opt_state, data [process_count, 3], meta) of `step`, laid out as the abstract targets say."""
        if not (self.directory / str(step) / "opt_state").exists():
            raise ConfigError(f"checkpoint step {step} in {self.directory} has no optimizer state to resume from")
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_params),
                opt_state=ocp.args.StandardRestore(abstract_opt_state),
                data=ocp.args.StandardRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        data = np.asarray(restored["data"], np.int64).reshape(-1, 3)
        return restored["params"], restored["opt_state"], data, restored["meta"]

    def wait(self) -> None:
        with self._save_errors(getattr(self, "_saving", None)):
            self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def save_params(
    directory: str | Path,
    params: Any,
    model_config: dict,
    run_config: dict | None = None,
    step: int = 0,
    tokenizer: dict | None = None,
) -> Path:
    """Write a params-only checkpoint (what HF import produces) under `directory` (a run dir), with the
    `tokenizer` item when given. Returns the checkpoints dir."""
    path = checkpoints_dir(directory)
    with ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(create=True)) as manager:
        meta = {"step": step, "run_config": run_config, "model_config": model_config}
        items = dict(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta))
        if tokenizer is not None:
            items["tokenizer"] = ocp.args.JsonSave(tokenizer)
        manager.save(step, args=ocp.args.Composite(**items), force=True)
        manager.wait_until_finished()
    return path


def _resolve_step(manager: ocp.CheckpointManager, step: int | None, path: Path) -> int:
    resolved = manager.latest_step() if step is None else step
    if resolved is None or resolved not in manager.all_steps():
        raise ConfigError(f"no complete checkpoint{'' if step is None else f' at step {step}'} in {path}")
    return resolved


def _reader(directory: str | Path) -> ocp.CheckpointManager:
    path = checkpoints_dir(directory)
    if not _has_steps(path):
        raise ConfigError(f"no checkpoint found in {directory}")
    handlers = {"params": ocp.PyTreeCheckpointHandler(), "opt_state": ocp.StandardCheckpointHandler(),
                "data": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
                "tokenizer": ocp.JsonCheckpointHandler()}  # every item, so reading some warns about none
    return ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(create=False), item_handlers=handlers)


def _stacked_layers(params_tree: Any) -> bool:
    """Whether a stored params tree keeps its decoder layers stacked (scanned) or as a list ("0", "1", ...)."""
    layers = params_tree.get("layers", {}) if isinstance(params_tree, dict) else {}
    return not (layers and all(str(k).isdigit() for k in layers))


def read_meta(directory: str | Path, step: int | None = None) -> tuple[dict, dict | None, int]:
    """(model config dict, run_config dict or None, step) of a checkpoint, without reading any array. The
    model config's `scan_layers` says how the stored parameters are laid out (for checkpoints written before
    the option existed, read from the stored tree)."""
    with _reader(directory) as manager:
        step = _resolve_step(manager, step, manager.directory)
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        model_config = meta["model_config"]
        if "scan_layers" not in model_config:
            model_config = {**model_config,
                            "scan_layers": _stacked_layers(manager.item_metadata(step)["params"].tree)}
    return model_config, meta.get("run_config"), int(meta["step"])


def read_tokenizer(directory: str | Path, step: int | None = None) -> dict | None:
    """The `tokenizer` item saved with a checkpoint ({files, template}), or None when it carries none
    (`data.tokenizer.materialize(item["files"])` makes a tokenizer directory of it)."""
    with _reader(directory) as manager:
        step = _resolve_step(manager, step, manager.directory)
        if not (Path(manager.directory) / str(step) / "tokenizer").is_dir():
            return None
        return manager.restore(step, args=ocp.args.Composite(tokenizer=ocp.args.JsonRestore()))["tokenizer"]


def load_params(
    directory: str | Path, step: int | None = None, shardings: Any = None
) -> tuple[Any, dict, dict | None, int]:
    """(params, model config dict, run_config dict or None, step) from a run dir or its checkpoints dir.

    `step=None` takes the latest complete step. `shardings` (a pytree of NamedShardings shaped like the
    params) places the arrays; without it they come back as numpy arrays.
    """
    model_config, run_config, step = read_meta(directory, step)
    with _reader(directory) as manager:
        tree = manager.item_metadata(step)["params"].tree  # keys as stored: strings
        is_leaf = lambda x: hasattr(x, "shape")  # noqa: E731
        if shardings is None:
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree, is_leaf=is_leaf)
            args = ocp.args.PyTreeRestore(restore_args=restore_args)
        else:
            target = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s), tree,
                                  _str_keys(shardings), is_leaf=is_leaf)  # fmt: skip
            args = ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))
        params = manager.restore(step, args=ocp.args.Composite(params=args))["params"]
    return _int_keys(params), model_config, run_config, step
