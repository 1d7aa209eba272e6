"""lm-eval task YAMLs of ours (seed 004's Direct and closed-book settings); `harness.TASKS_DIR` is passed to
lm-eval's TaskManager as an include path, so these tasks are found by name beside lm-eval's own."""
