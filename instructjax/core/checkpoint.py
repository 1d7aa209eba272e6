"""Orbax checkpoints of a run: one CheckpointManager at RUN_DIR/checkpoints.

Each step directory holds these items:
- `params`: the model parameters as a plain nested dict (nnx pure dict, names as in the model);
- `opt_state`: the optax state (absent in a params-only checkpoint, e.g. one imported from HF);
- `data`: the global data position (epoch, window, row) as every host holds it, int64 `[process_count, 3]`
  (the rows are equal: the data plan is global, so any number of hosts resumes from row 0);
- `meta`: JSON {step, run_config, model_config} (the model config as a plain dict: `DecoderConfig.from_dict(d)`);
- `tokenizer`: JSON {files, template}: the HF tokenizer files the run trained with (`Tokenizer.files`,
  the chat template included) and the name of its chat template (None for an import, which keeps the
  model's own). Export, generation and evaluation read it (`read_tokenizer`), never a default.
- `instructjax.manifest`: every file of the step with its size and digest, written once Orbax has committed
  the step: each host digests what it wrote, host 0 writes the manifest (`core/integrity.py`).

Every reader opens the step `integrity.intact_step` names: the one asked for, or the newest intact one
(damaged newer steps are named in one warning line; resume renames them to `STEP.unreadable`, kept).
Rotation (`keep`) is done here, not by Orbax: it counts usable steps only (sealed by a manifest, or
written before manifests), so a step committed without its manifest never pushes out the last sealed one.

The directory may be local or in a bucket (`core/storage.py`; Orbax reads and writes gs:// itself).
This module knows the format only: it imports neither the model nor the data layer.

`Checkpointer` is what the trainer uses; `save_params` / `load_params` are the params-only view
that HF import/export and `model.init_from` use.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import errno
import os
import threading
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint._src.metadata import array_metadata_store  # the default handler's store, kept

from instructjax.core import context, integrity, storage
from instructjax.core.errors import ConfigError, InstructJaxError


def checkpoints_dir(directory: str | os.PathLike) -> storage.Path:
    """RUN_DIR/checkpoints for a run dir; the directory itself if it already is a checkpoints dir."""
    path = storage.path(directory)
    if path.name == "checkpoints" or (not (path / "checkpoints").exists() and _has_steps(path)):
        return path
    return path / "checkpoints"


def _has_steps(path: storage.Path) -> bool:
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


_ITEMS = {"params": ocp.PyTreeCheckpointHandler, "opt_state": ocp.StandardCheckpointHandler,
          "data": ocp.StandardCheckpointHandler, "meta": ocp.JsonCheckpointHandler,
          "tokenizer": ocp.JsonCheckpointHandler}  # fmt: skip


def _open_step(step_dir: storage.Path) -> ocp.Checkpointer:
    """An Orbax reader of one step directory (every item registered, so reading some warns about none)."""
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(**{name: make() for name, make in _ITEMS.items()}))


def _read(step_dir: storage.Path, **items: Any) -> dict:
    """Items of one step (name -> Orbax restore args), opening that step directory only."""
    with _open_step(step_dir) as reader:
        return reader.restore(step_dir, args=ocp.args.Composite(**items))


def _json_item(step_dir: storage.Path, name: str) -> dict:
    """A JSON item (`meta`, `tokenizer`) of one step, read once per command: a sealed step is known by its
    manifest's digest, so a step rewritten meanwhile is read again (an unsealed one is read every time)."""
    identity = integrity.manifest_digest(step_dir)
    if identity is None:
        return _read(step_dir, **{name: ocp.args.JsonRestore()})[name]
    read = context.current().slot("checkpoint.json_items", lambda _: {})  # (step dir, item) -> (identity, value)
    key = (str(step_dir), name)
    if key not in read or read[key][0] != identity:
        read[key] = (identity, _read(step_dir, **{name: ocp.args.JsonRestore()})[name])
    return copy.deepcopy(read[key][1])  # the caller's own


def _params_tree(step_dir: storage.Path) -> Any:
    with _open_step(step_dir) as reader:
        return reader.metadata(step_dir).item_metadata["params"].tree  # keys as stored: strings


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


def _save_whole_arrays_on_cpu() -> None:
    """On CPU, save each replicated array whole from its first replica (as Orbax does on GPUs): replica-parallel
    saving slices it once per device, each slice a program compiled on first use (seconds per save on 8 devices)."""
    if jax.default_backend() == "cpu":
        handler = ocp.type_handlers.ArrayHandler(array_metadata_store=array_metadata_store.Store(),
                                                 use_replica_parallel=False)
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


class Checkpointer:
    """The run's checkpoint manager: async saves sealed by a manifest, keep-N, restore of the newest intact
    step.

    A save is sealed by a thread of every host as soon as Orbax has committed the step (`_seal`: each host digests
    what it wrote, host 0 writes the manifest); the next `save` and `wait` wait for it, then rotate out the steps
    beyond `keep`."""

    def __init__(self, run_dir: str | os.PathLike, *, keep: int | None = 3, async_save: bool = True,
                 tokenizer: dict | None = None):
        """`tokenizer`: the `tokenizer` item saved with every step (see the module doc)."""
        self.directory = checkpoints_dir(run_dir)
        self.tokenizer, self.keep = tokenizer, keep
        options = ocp.CheckpointManagerOptions(max_to_keep=None, enable_async_checkpointing=async_save,
                                               create=True, lightweight_initialize=True)  # reads no step
        _save_whole_arrays_on_cpu()
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._saving: int | None = None  # the step of the last save started
        self._sealer: threading.Thread | None = None
        self._seal_error: BaseException | None = None
        self._unrestorable: dict[int, str] = {}  # steps without a manifest that Orbax could not restore

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, data_state: np.ndarray, meta: dict) -> None:
        """Start saving `step` (returns once the arrays are copied off the device when async)."""
        self._finish_pending()
        with self._save_errors(step):
            self._save(step, params, opt_state, data_state, meta)
        self._saving = step
        self._sealer = threading.Thread(target=contextvars.copy_context().run, args=(self._seal, step),
                                        name=f"seal-{step}", daemon=True)  # the command's hosts (`core.context`)
        self._sealer.start()

    def _seal(self, step: int) -> None:
        """Seal `step` once Orbax has committed it (a thread of every host; `integrity.seal`)."""
        try:
            self.manager.wait_until_finished()
        except Exception:  # noqa: BLE001 - a failed save is reported by the main thread's own wait
            return
        try:
            integrity.seal(self.directory / str(step))
        except Exception as exc:  # noqa: BLE001 - raised on the main thread by `_finish_pending`
            self._seal_error = exc

    def _finish_pending(self) -> None:
        """Wait until the save in flight is committed and sealed (its errors name its step), then rotate."""
        with self._save_errors(self._saving):
            self.manager.wait_until_finished()
            if self._sealer is not None:
                self._sealer.join()
                self._sealer, error, self._seal_error = None, self._seal_error, None
                if error is not None:
                    raise error
        self._rotate()

    def _rotate(self) -> None:
        """Delete the steps older than the newest `keep` usable ones (primary host). Damaged steps set aside
        (`STEP.unreadable`) are never deleted."""
        if self.keep is None or jax.process_index() != 0:
            return
        steps = integrity.steps_on_disk(self.directory)
        unsealed = integrity.unsealed(self.directory, steps)
        usable = [s for s in steps if s not in unsealed]
        if len(usable) <= self.keep:
            return
        for step in (s for s in steps if s < usable[-self.keep]):
            storage.remove_tree(self.directory / str(step))
        self.manager.reload()

    def _save_errors(self, step: int | None):
        """A failed write of `step` as a one-line CheckpointError naming it and the last complete step."""

        @contextlib.contextmanager
        def guard():
            try:
                yield
            except Exception as exc:  # orbax re-raises the background thread's error here
                problem = _disk_full(exc)
                if problem is None:
                    raise
                steps = integrity.steps_on_disk(self.directory)
                unsealed = integrity.unsealed(self.directory, steps)
                complete = [s for s in steps if s != step and s not in unsealed]
                last = f"step {max(complete)}" if complete else "none"
                raise CheckpointError(f"{problem.lower()} while saving checkpoint step {step} to "
                                      f"{self.directory}; stopped, the last complete checkpoint is {last}"
                                      ) from None  # fmt: skip

        return guard()

    def _save(self, step: int, params: Any, opt_state: Any, data_state: np.ndarray, meta: dict) -> None:
        items = dict(params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
                     data=ocp.args.StandardSave(np.asarray(data_state, np.int64)),
                     meta=ocp.args.JsonSave({**meta, "step": step}))
        if self.tokenizer is not None:
            items["tokenizer"] = ocp.args.JsonSave(self.tokenizer)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def resume_step(self) -> int | None:
        """The newest intact step (None: no step at all); damaged newer ones are named in one warning line and
        renamed aside (`STEP.unreadable`), on every host alike (a collective with several hosts)."""
        if not integrity.steps_on_disk(self.directory):
            return None
        step = integrity.intact_step(self.directory, set_aside=True, damaged=self._unrestorable)
        self.manager.reload()  # the steps set aside are no longer the manager's
        return step

    def restore_latest(self, abstract_params: Any,
                       abstract_opt_state: Any) -> tuple[int, Any, Any, np.ndarray, dict]:
        """(step, params, opt_state, data, meta) of the newest intact step (`resume_step`). A step that
        matches its manifest but does not restore (another model or optimizer) is a ConfigError; one
        written before manifests that Orbax cannot restore counts as damaged, as a failed manifest does."""
        while True:
            step = self.resume_step()
            if step is None:
                raise ConfigError(f"no complete checkpoint in {self.directory} to resume from")
            try:
                restored, problem = self.restore(step, abstract_params, abstract_opt_state), None
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - judged below, the same way on every host
                restored, problem = None, integrity.describe(exc)
            problem = integrity.agree(problem)
            if problem is None:
                return step, *restored
            if integrity.has_manifest(self.directory / str(step)):
                raise ConfigError(f"checkpoint step {step} in {self.directory} matches its manifest but does "
                                  f"not restore into this run's model and optimizer ({problem})")
            self._unrestorable[step] = problem

    def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any) -> tuple[Any, Any, np.ndarray, dict]:
        """(params, opt_state, data [process_count, 3], meta) of `step`, laid out as the abstract targets say."""
        if not (self.directory / str(step) / "opt_state").exists():
            raise ConfigError(f"checkpoint step {step} in {self.directory} has no optimizer state to resume from")
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params), opt_state=ocp.args.StandardRestore(abstract_opt_state),
            data=ocp.args.StandardRestore()))
        data = np.asarray(restored["data"], np.int64).reshape(-1, 3)
        return restored["params"], restored["opt_state"], data, _json_item(self.directory / str(step), "meta")

    def wait(self) -> None:
        """Wait until the last save is committed and sealed (and older steps rotated out)."""
        self._finish_pending()

    def close(self) -> None:
        self.wait()
        self.manager.close()


def save_params(directory: str | os.PathLike, params: Any, model_config: dict, run_config: dict | None = None,
                step: int = 0, tokenizer: dict | None = None) -> storage.Path:
    """Write a params-only checkpoint (what HF import produces) under `directory` (a run dir), with the
    `tokenizer` item when given, sealed by its manifest. Returns the checkpoints dir."""
    path = checkpoints_dir(directory)
    _save_whole_arrays_on_cpu()
    with ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(create=True)) as manager:
        meta = {"step": step, "run_config": run_config, "model_config": model_config}
        items = dict(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta))
        if tokenizer is not None:
            items["tokenizer"] = ocp.args.JsonSave(tokenizer)
        manager.save(step, args=ocp.args.Composite(**items), force=True)
        manager.wait_until_finished()
    integrity.seal(path / str(step))
    return path


def _stacked_layers(params_tree: Any) -> bool:
    """Whether a stored params tree keeps its decoder layers stacked (scanned) or as a list ("0", "1", ...)."""
    layers = params_tree.get("layers", {}) if isinstance(params_tree, dict) else {}
    return not (layers and all(str(k).isdigit() for k in layers))


def read_meta(directory: str | os.PathLike, step: int | None = None, *,
              contents: bool = True) -> tuple[dict, dict | None, int]:
    """(model config dict, run_config dict or None, step) of a checkpoint (`step`, else the newest intact one:
    see `intact_step`), without reading any array. The model config's `scan_layers` says how the stored
    parameters are laid out (for checkpoints written before the option existed, read from the stored tree).
    `contents=False`: only the step's files and JSON items are checked (for the config alone: a later `load_params`
    may take an older step, should this one's arrays be damaged)."""
    path = checkpoints_dir(directory)
    step = integrity.intact_step(path, step, contents=contents)
    meta = _json_item(path / str(step), "meta")
    model_config = meta["model_config"]
    if "scan_layers" not in model_config:
        model_config = {**model_config, "scan_layers": _stacked_layers(_params_tree(path / str(step)))}
    return model_config, meta.get("run_config"), step


def base_reference(directory: str | os.PathLike) -> dict:
    """What a checkpoint layered on `directory` records of it (a LoRA run's adapters saved alone): the run dir,
    its newest intact step and that step's manifest digest."""
    path = checkpoints_dir(directory)
    step = integrity.intact_step(path)
    return {"checkpoint": str(directory), "step": step, "digest": integrity.manifest_digest(path / str(step))}


def read_base(directory: str | os.PathLike, step: int | None = None) -> dict | None:
    """The base a checkpoint's parameters are layered on (`base_reference`, saved in its meta), checked to be the
    same step it was trained on (one line otherwise); None for a checkpoint that holds all its parameters."""
    path = checkpoints_dir(directory)
    step = integrity.intact_step(path, step)
    base = _json_item(path / str(step), "meta").get("base")
    if base is not None:
        check_base(base, f"{directory} step {step}")
    return base


def check_base(base: dict, where: str) -> None:
    """One line unless `base` (a `base_reference`) still names the step it was made from."""
    try:
        now = integrity.manifest_digest(checkpoints_dir(base["checkpoint"]) / str(base["step"]))
    except OSError:
        now = None
    if now != base["digest"]:
        found = "is gone" if now is None else "now holds another model"
        raise ConfigError(f"{where} holds LoRA adapters trained on {base['checkpoint']} step {base['step']}, which "
                          f"{found}: put that base back (or start a new run on the new one)")


def read_opt_state(directory: str | os.PathLike, step: int, abstract_opt_state: Any) -> Any:
    """The optimizer state saved with `step`, laid out as `abstract_opt_state` says (LESS reads a warm-up's moments)."""
    return _read(checkpoints_dir(directory) / str(step), opt_state=ocp.args.StandardRestore(abstract_opt_state))[
        "opt_state"]


def read_tokenizer(directory: str | os.PathLike, step: int | None = None) -> dict | None:
    """The `tokenizer` item saved with a checkpoint ({files, template}), or None when it carries none
    (`data.tokenizer.materialize(item["files"])` makes a tokenizer directory of it). The step's files are checked
    present and its JSON items hashed, not its arrays (a run's steps share one tokenizer)."""
    path = checkpoints_dir(directory)
    step = integrity.intact_step(path, step, contents=False)
    if not (path / str(step) / "tokenizer").is_dir():
        return None
    return _json_item(path / str(step), "tokenizer")


def load_params(
    directory: str | os.PathLike, step: int | None = None, shardings: Any = None
) -> tuple[Any, dict, dict | None, int]:
    """(params, model config dict, run_config dict or None, step) from a run dir or its checkpoints dir.

    `step=None` takes the newest intact step. `shardings` (a pytree of NamedShardings shaped like the
    params) places the arrays; without it they come back as numpy arrays.
    """
    model_config, run_config, step = read_meta(directory, step)
    step_dir = checkpoints_dir(directory) / str(step)
    tree = _params_tree(step_dir)
    is_leaf = lambda x: hasattr(x, "shape")  # noqa: E731
    if shardings is None:
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree, is_leaf=is_leaf)
        args = ocp.args.PyTreeRestore(restore_args=restore_args)
    else:
        target = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s), tree,
                              _str_keys(shardings), is_leaf=is_leaf)  # fmt: skip
        args = ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))
    params = _read(step_dir, params=args)["params"]
    return _int_keys(params), model_config, run_config, step
