"""`instructjax plan`: memory per device, steps and tokens of a config on a TPU slice, GPUs, or this machine."""

from __future__ import annotations

import dataclasses
import json
import sys

from instructjax.cli import add_on_bad_row, load_run_config, on_bad_row_overrides
from instructjax.core import storage
from instructjax.core.errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="pre-flight: per-device memory, fit, steps and tokens on a topology, "
                                           "and a mesh that serves the batch better where there is one")
    p.add_argument("--config", required=True, help="a run config YAML (see configs/), or a swarm's directory (`mix "
                                                    "swarm`: a proxy's plan, and the swarm's compute beside one full "
                                                    "run of its base config)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--topology", help="a TPU slice: v4-64, v5e-16, v5p-128, v6e-8 (default: this machine)")
    where.add_argument("--gpus", type=int, help="number of GPUs (8 per node; default: this machine)")
    p.add_argument("--gpu-type", default="h100", help="h100, h200, a100-40, a100-80 (with --gpus)")
    p.add_argument("--real-data", action="store_true",
                   help="read every task as train will, hub datasets too (without it: local, bucket and built-in "
                        "data are read, the tokenized cache is used, and hub datasets not in it take the papers' "
                        "sizes; each task's line says which)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--compile", action="store_true",
                   help="build the run's own train step for the --topology slice with the TPU compiler (libtpu; no "
                        "TPU needed), or for this machine, and print its memory per device beside plan's, its kernels "
                        "and collectives")
    p.add_argument("--eval", action="store_true",
                   help="with --compile: build the evaluation engine's fill and decode steps instead of the train "
                        "step, beside plan's evaluation figures")
    p.add_argument("--rollout", action="store_true",
                   help="with --compile, for objective.loss: grpo: build its rollout engine's fill and decode steps "
                        "(the trained model as it lies on the run's mesh) instead of the train step")
    p.add_argument("--less", action="store_true",
                   help="LESS's feature pass instead of the train step (`data select --method less`): the config's "
                        "model with LESS's LoRA (a task's selection.less, else its defaults), its memory per device; "
                        "with --compile built by the compiler beside it")
    p.add_argument("--packed", type=int, default=0, metavar="K",
                   help="with --compile: build the step of K proxies of this config stacked (`mix train --packed K`) "
                        "and say how many fit")
    p.add_argument("--save-executable", metavar="FILE",
                   help="with --compile: write the compiled step (of the largest step shape; the epoch counted by the "
                        "real pipeline) to FILE, for a run's `compiled: FILE` on the same slice")
    add_on_bad_row(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.micro_batches=4")
    p.set_defaults(func=run)


def run(args) -> int:
    from instructjax.cli.plan_eval import eval_plan, format_eval_plan
    from instructjax.train.plan import format_plan, plan_with_proposal
    from instructjax.train.topology import gpu_topology, local_topology, tpu_topology

    if storage.path(args.config).is_dir():
        return swarm(args)
    config = load_run_config(args.config, [*args.overrides, *on_bad_row_overrides(args)])
    if args.eval and not args.compile:
        raise ConfigError("plan --eval goes with --compile (plan itself always prints the evaluation's figures)")
    if args.rollout and not (args.compile and config.objective.rollouts):
        raise ConfigError("plan --rollout goes with --compile, for a config of objective.loss: grpo")
    if args.packed and not args.compile or args.packed < 0 or args.packed and (args.eval or args.rollout):
        raise ConfigError("plan --packed K (K >= 1) goes with --compile, for the train step")
    if args.less:
        return less_features(args, config)
    if args.eval or args.rollout:
        return compiled_eval(args, config)
    if args.compile or args.save_executable:
        return compiled(args, config)
    topology = tpu_topology(args.topology) if args.topology else gpu_topology(args.gpus, args.gpu_type) \
        if args.gpus else local_topology()
    plan = plan_with_proposal(config, topology, real_data=args.real_data, name=args.config)
    evaluation = eval_plan(config, topology)
    print(json.dumps({**plan.to_dict(), "eval": evaluation.to_dict()}, indent=2) if args.json
          else f"{format_plan(plan)}\n{format_eval_plan(evaluation)}")
    return 0 if plan.fits and not plan.proposed else 1  # a proposed mesh: the config as given does not run here


def swarm(args) -> int:
    """`plan --config SWARM_DIR`: the first proxy's plan, then the swarm's tokens and training FLOPs (6 x parameters x
    tokens) beside those of one full run of the base config `mix swarm` drew it from (as that config is written)."""
    from instructjax.train.plan import format_plan, plan_with_proposal
    from instructjax.train.topology import gpu_topology, local_topology, tpu_topology

    try:
        manifest = json.loads(storage.path(storage.join(args.config, "swarm.json")).read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {args.config} is a directory without swarm.json: give a run config YAML, or a "
                          "directory `mix swarm` wrote") from None
    if args.compile or args.eval or args.rollout or args.save_executable or args.json:
        raise ConfigError("plan --config SWARM_DIR prints the swarm's figures; --compile, --eval, --rollout, "
                          "--save-executable and --json take one proxy's config (SWARM_DIR/NAME.yaml)")
    topology = tpu_topology(args.topology) if args.topology else gpu_topology(args.gpus, args.gpu_type) \
        if args.gpus else local_topology()
    overrides = [*args.overrides, *on_bad_row_overrides(args)]
    first = storage.join(args.config, manifest["proxies"][0]["file"])
    proxy = plan_with_proposal(load_run_config(first, overrides), topology, real_data=args.real_data, name=first)
    full = plan_with_proposal(load_run_config(manifest["base_config"], overrides), topology,
                              real_data=args.real_data, name=manifest["base_config"])
    runs = len(manifest["proxies"])
    proxy_tokens, full_tokens = proxy.data.run_tokens, full.data.run_tokens

    def flops(plan, tokens: int) -> float:
        return 6.0 * plan.memory["params"] * tokens

    swarm_flops = runs * flops(proxy, proxy_tokens)
    print(format_plan(proxy))
    print(f"swarm       {runs} proxies like it: about {runs * proxy_tokens:,} tokens, {swarm_flops:.3g} training "
          f"FLOPs (6 x {proxy.memory['params']:,} parameters x tokens)")
    print(f"full run    {manifest['base_config']}: {full.memory['params']:,} parameters, about {full_tokens:,} "
          f"tokens, {flops(full, full_tokens):.3g} FLOPs; the swarm is "
          f"{swarm_flops / max(flops(full, full_tokens), 1):.1%} of one full run")
    return 0 if proxy.fits else 1


def compiled(args, config) -> int:
    """`plan --compile`: the compiler's figures (train.compile); exit 1 with one line when a step does not fit."""
    from instructjax.train.compile import compile_run, does_not_fit, format_report
    from instructjax.train.topology import local_topology, tpu_topology

    if args.gpus:
        raise ConfigError("--compile builds the step for a TPU slice (--topology v4-64, v5e-8, ...) or, without "
                          "--topology, for this machine; not for --gpus")
    topology = tpu_topology(args.topology) if args.topology else local_topology()
    if config.objective.rollouts and config.objective.options.rollout_devices:
        return compiled_apart(args, config, topology)
    report = compile_run(config, topology, name=args.config, real_data=args.real_data,
                         save_executable=args.save_executable, packed=args.packed)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    if not report.fits:
        print(f"instructjax: {does_not_fit(report)}", file=sys.stderr, flush=True)
        return 1
    return 0


def less_features(args, config) -> int:
    """`plan --less [--compile]`: LESS's feature pass (train/less_plan.py); exit 1 where it does not fit."""
    from instructjax.train.less_plan import compile_features, format_feature_plan, plan_features
    from instructjax.train.topology import gpu_topology, local_topology, tpu_topology

    if args.eval or args.rollout or args.packed or args.save_executable or args.real_data:
        raise ConfigError("plan --less plans LESS's feature pass: not with --eval, --rollout, --packed, "
                          "--save-executable or --real-data")
    if args.compile and args.gpus:
        raise ConfigError("--compile builds for a TPU slice (--topology v4-64, v5e-8, ...) or this machine; not --gpus")
    topology = tpu_topology(args.topology) if args.topology else gpu_topology(args.gpus, args.gpu_type) \
        if args.gpus else local_topology()
    plan = (compile_features if args.compile else plan_features)(config, topology)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else format_feature_plan(plan))
    return 0 if plan.fits else 1


def compiled_eval(args, config) -> int:
    """`plan --compile --eval` (or `--rollout`): the evaluation (or rollout) engine's steps by the compiler
    (cli/plan_eval.py)."""
    from instructjax.cli.plan_eval import compile_eval, format_compiled
    from instructjax.train.topology import local_topology, tpu_topology

    if args.gpus:
        raise ConfigError("--compile builds for a TPU slice (--topology v4-64, v5e-8, ...) or this machine; not --gpus")
    plan, steps = compile_eval(config, tpu_topology(args.topology) if args.topology else local_topology(),
                               rollout=args.rollout)
    print(json.dumps({"plan": plan.to_dict(), "steps": [dataclasses.asdict(s) for s in steps]}, indent=2)
          if args.json else format_compiled(plan, steps))
    return 0 if plan.fits else 1


def compiled_apart(args, config, topology) -> int:
    """`plan --compile` of a grpo run whose rollout engine has devices of its own (`objective.grpo.rollout_devices`):
    the update step built for the learner's part of the slice, the engine's fill and decode steps for the other part
    (its own fsdp mesh), and whether each fits; exit 1 where one does not."""
    from instructjax.cli.plan_eval import compile_eval, format_compiled
    from instructjax.train.compile import compile_run, does_not_fit, format_report
    from instructjax.train.rollout_devices import split_topology

    if not topology.shape or args.packed or args.save_executable:
        raise ConfigError("plan --compile with objective.grpo.rollout_devices builds both parts for a TPU slice "
                          "(--topology v5e-32, ...), without --packed or --save-executable")
    part = (f"objective.grpo.rollout_devices={config.objective.options.rollout_devices}: XLA:TPU builds no program "
            f"over part of a {topology.name} (its chips' ICI routing is limited): there the engine needs a slice of "
            "its own")
    if topology.generation in ("v5e", "v6e") and topology.hosts > 1:  # refused (v5e-32), or libtpu aborts (v5e-16)
        raise ConfigError(part)
    learner, engine = split_topology(topology, config)
    try:
        report = compile_run(config, learner, name=args.config, real_data=args.real_data)
        plan, steps = compile_eval(dataclasses.replace(config, mesh="auto"), engine, rollout=True)
    except Exception as e:  # XLA:TPU's refusal of a program over part of a slice whose ICI routing is limited (v5e)
        if "should include all slice devices" not in str(e):
            raise
        raise ConfigError(part) from None
    if args.json:
        print(json.dumps({"learner": report.to_dict(), "engine": {
            "plan": plan.to_dict(), "steps": [dataclasses.asdict(s) for s in steps]}}, indent=2))
    else:
        print(f"{format_report(report)}\n{engine.name}\n{format_compiled(plan, steps)}")
    if not report.fits:
        print(f"instructjax: {does_not_fit(report)}", file=sys.stderr, flush=True)
    return 0 if report.fits and plan.fits else 1
