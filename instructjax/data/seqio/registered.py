"""Every built-in task and the papers' mixtures, registered in seqio's registries when this module is imported: the
module seqio's own scripts import by name (`--module_import`), as T5X's task modules register on import.

    python -m seqio.scripts.cache_tasks_main --module_import=instructjax.data.seqio.registered \\
        --tasks=dolly_builtin --output_cache_dir=DIR

The rest of the seqio face registers on demand and never on import (`mixtures.register_paper_mixtures`)."""

from instructjax.data.seqio.mixtures import register_paper_mixtures

register_paper_mixtures()
