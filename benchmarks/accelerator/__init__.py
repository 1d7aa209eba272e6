"""The parts of benchmarks/accelerator_check.py, one job each.

- kernels.py: the attention kernels against float64 numpy and the dense implementation, and the leak test;
- train_step.py: the training step through benchmarks/gpu_mfu.py, per model shape;
- decode.py: greedy decoding tokens/s, instructjax and transformers;
- real_run.py: the quickstart through the CLI, resumed, exported, against the CPU's losses;
- children.py: the probe and the child processes each section runs in (time limits, one-line errors);
- report.py: the markdown summary.

accelerator_check.py (the command) parses the flags, runs the sections and writes the report.
"""
