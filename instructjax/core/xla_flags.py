"""XLA flags per platform: what the launchers and the accelerator benchmarks set before JAX starts.

Users never type these. `launch/gpu.py` puts them in the training process's environment, and
`benchmarks/accelerator_check.py` / `gpu_mfu.py` in their children's; flags already in the user's
`XLA_FLAGS` win (the same flag is never given twice). The GPU set is MaxText's for LLaMA on H100s
(`configs/gpu/models/llama2_7b.yml`, `1vm.sh`) less one: the latency-hiding scheduler, no command buffers,
double-buffered while loops (the scanned layers), and no XLA rematerialisation pass (the model's remat
policy decides what is recomputed); with several GPUs, collectives combined into large transfers and
pipelined with the layers' compute. MaxText's `--xla_gpu_enable_triton_gemm=false` is left out: on an H200
(jax 0.11.2) it alone made the TinyLlama step 8% slower (0.1553 -> 0.1677 s), each other flag within 0.5%
of none (benchmarks/RESULTS.md, 2026-11-26).
"""

from __future__ import annotations

GPU = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_gpu_enable_command_buffer=",
    "--xla_gpu_enable_while_loop_double_buffering=true",
    "--xla_disable_hlo_passes=rematerialization",
)
MULTI_GPU = (
    "--xla_gpu_enable_pipelined_all_gather=true",
    "--xla_gpu_enable_pipelined_reduce_scatter=true",
    "--xla_gpu_enable_pipelined_all_reduce=true",
    "--xla_gpu_all_reduce_combine_threshold_bytes=134217728",
    "--xla_gpu_all_gather_combine_threshold_bytes=134217728",
    "--xla_gpu_reduce_scatter_combine_threshold_bytes=67108864",
)


def gpu_flags(num_gpus: int = 1) -> tuple[str, ...]:
    """The GPU flag set for a process that sees `num_gpus` GPUs (collective flags from 2 on)."""
    return GPU + (MULTI_GPU if num_gpus > 1 else ())


def merged(existing: str | None, flags: tuple[str, ...]) -> str:
    """`existing` XLA_FLAGS with `flags` added, except those whose name the user already set."""
    current = (existing or "").split()
    names = {flag.split("=", 1)[0] for flag in current}
    return " ".join(current + [flag for flag in flags if flag.split("=", 1)[0] not in names])


def gpu_environment(env: dict[str, str], num_gpus: int = 1) -> dict[str, str]:
    """A copy of `env` whose XLA_FLAGS carry the GPU flag set."""
    return {**env, "XLA_FLAGS": merged(env.get("XLA_FLAGS"), gpu_flags(num_gpus))}
