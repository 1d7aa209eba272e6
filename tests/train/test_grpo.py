"""GRPO's loss, advantages, KL and clip fraction against open-instruct's own functions, read at test time from the
pinned copy (tests/helpers/open_instruct_grpo.py): on fixed rollouts (log-probs, advantages, masks) of our choosing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import open_instruct_grpo

from instructjax.core.config import load_config
from instructjax.data.batches.packing import REFERENCE
from instructjax.train.objectives import objective_for
from instructjax.train.objectives.grpo import ADVANTAGES, group_advantages, token_terms


@pytest.fixture(scope="module")
def theirs():
    return open_instruct_grpo.grpo_functions()


def rollouts(seed: int, rows: int = 6, length: int = 24):
    """Log-probs of sampled tokens (new, old a step away, reference further), a group advantage per row, a mask of
    response tokens (a prompt first, padding last)."""
    rng = np.random.default_rng(seed)
    new = np.log(rng.uniform(0.02, 0.98, (rows, length))).astype(np.float32)
    old = (new + rng.normal(0, 0.25, new.shape)).clip(max=-1e-3).astype(np.float32)
    ref = (new + rng.normal(0, 0.5, new.shape)).clip(max=-1e-3).astype(np.float32)
    advantages = np.repeat(rng.normal(0, 1, (rows, 1)), length, axis=1).astype(np.float32)
    mask = np.zeros((rows, length), bool)
    for r in range(rows):
        start = rng.integers(1, length // 3)
        mask[r, start: rng.integers(start + 1, length + 1)] = True
    return new, old, ref, advantages, mask


@pytest.mark.parametrize("normalization", ["standard", "centered"])
def test_group_advantages_are_open_instructs(normalization):
    rng = np.random.default_rng(3)
    for samples in (2, 4, 8):
        scores = rng.choice([0.0, 10.0], size=5 * samples).astype(np.float64)
        scores[:samples] = 10.0  # a group all solved: zero std
        scores[samples: 2 * samples] = rng.uniform(0, 10, samples)  # graded rewards
        expected = open_instruct_grpo.advantages(scores, samples, normalization)
        np.testing.assert_allclose(group_advantages(scores, samples, normalization), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("loss_fn", ["dapo", "cispo"])
def test_token_losses_kl_and_clip_fraction_are_open_instructs(theirs, loss_fn):
    new, old, ref, adv, mask = rollouts(0)
    clip_lower, clip_higher, beta = 0.2, 0.28, 0.05
    for estimator in range(4):
        config = type("Config", (), dict(loss_fn=theirs.GRPOLossType(loss_fn), clip_lower=clip_lower,
                                          clip_higher=clip_higher, kl_estimator=estimator))()
        t_new, t_old, t_ref, t_adv = (torch.tensor(x) for x in (new, old, ref, adv))
        ratio = torch.exp(t_new - t_old)
        pg, clipfrac, kl = theirs.compute_grpo_loss(t_new, ratio, t_adv, t_ref, config, torch.ones_like(t_new))
        policy, ours_clip, ours_kl, ours_ratio = token_terms(
            jnp.asarray(new), jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv), loss_fn=loss_fn,
            clip_lower=clip_lower, clip_higher=clip_higher, kl_estimator=estimator)
        np.testing.assert_allclose(np.asarray(policy), pg.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(ours_clip), clipfrac.numpy())
        np.testing.assert_allclose(np.asarray(ours_kl[estimator]), kl.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(ours_ratio), ratio.numpy(), rtol=1e-6)
        assert 0 < float(clipfrac[torch.tensor(mask)].mean()) < 1  # the rollouts clip some tokens, not all
        # the step's loss: every sample's tokens over the accumulation group's tokens (loss_denominator: token)
        t_mask = torch.tensor(mask)
        total = float(t_mask.sum())
        theirs_loss = sum(theirs.masked_mean(pg[i] + beta * kl[i], t_mask[i], None, total) for i in range(len(new)))
        ours_loss = jnp.sum((policy + beta * ours_kl[estimator]) * mask) / mask.sum()
        np.testing.assert_allclose(float(ours_loss), float(theirs_loss), rtol=1e-5)


@pytest.mark.parametrize("loss_fn", ["dapo", "cispo"])
def test_the_objectives_loss_gradient_and_metrics_are_open_instructs_first_update(theirs, loss_fn):
    """One update a rollout (open-instruct's num_mini_batches 1): the old log-probs are the new ones, detached
    (`resolve_old_logprob` at epoch 0); the gradient of the step's loss by each token's log-prob and the logged means
    (`populate_sample_loss_stats` weighed by token counts, `compute_metrics_from_loss_stats`) agree."""
    new, _, ref, adv, mask = rollouts(1)
    config = load_config(None, ["objective.loss=grpo", f"objective.grpo.loss_fn={loss_fn}",
                                "objective.grpo.clip_higher=0.28",
                                "objective.grpo.reference=live"])
    s = config.objective.options
    objective = objective_for(config)
    mb = {"loss_weights": jnp.asarray(mask), ADVANTAGES: jnp.asarray(adv), REFERENCE: jnp.asarray(ref)}
    weights = objective.weights(mb)

    def ours(nll):
        share, sums = objective.loss(nll, mb, weights)
        return share, sums

    (share, sums), grad = jax.value_and_grad(ours, has_aux=True)(jnp.asarray(-new))
    metrics = objective.metrics(sums, weights)

    cfg = type("Config", (), dict(loss_fn=theirs.GRPOLossType(loss_fn), clip_lower=s.clip_lower,
                                  clip_higher=s.clip_higher, kl_estimator=s.kl_estimator))()
    t_new = torch.tensor(new, requires_grad=True)
    t_mask, t_ref, t_adv = torch.tensor(mask), torch.tensor(ref), torch.tensor(adv)
    total = float(t_mask.sum())
    losses, kls, clips, policies, ratios = [], [], [], [], []
    for i in range(len(new)):
        old = t_new[i].detach()
        ratio = torch.exp(t_new[i] - old)
        pg, clipfrac, kl = theirs.compute_grpo_loss(t_new[i], ratio, t_adv[i], t_ref[i], cfg, torch.ones_like(old))
        losses.append(theirs.masked_mean(pg + s.beta * kl, t_mask[i], None, total))
        diff = (t_new[i] - t_ref[i]).clamp(-40.0, 40.0)
        kls.append(theirs.masked_mean(theirs.estimate_kl(diff, ratio), t_mask[i]).detach())
        clips.append(theirs.masked_mean(clipfrac, t_mask[i]))
        policies.append(theirs.masked_mean(pg, t_mask[i]).detach())
        ratios.append(theirs.masked_mean(ratio, t_mask[i]).detach())
    loss = sum(losses)
    loss.backward()
    np.testing.assert_allclose(float(share), float(loss.detach()), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(-np.asarray(grad), t_new.grad.numpy(), rtol=1e-5, atol=1e-8)  # d/d(-nll)
    counts = t_mask.sum(-1).float()
    weigh = lambda per_sample: float((torch.stack(per_sample) * counts / counts.sum()).sum())  # noqa: E731
    tokens = float(metrics["loss_weight"])
    for j in range(4):
        np.testing.assert_allclose(float(metrics[f"objective/kl{j}_avg"]) / tokens, weigh([k[j] for k in kls]),
                                   rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(metrics["loss/kl_avg"]) / tokens, s.beta * weigh([k[2] for k in kls]),
                               rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(float(metrics["policy/clipfrac_avg"]) / tokens, weigh(clips), atol=1e-7)
    np.testing.assert_allclose(float(metrics["loss/policy_avg"]) / tokens, weigh(policies), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(metrics["val/ratio"]) / tokens, weigh(ratios), rtol=1e-6)


@pytest.mark.parametrize("loss_fn, rho", [("dapo", False), ("cispo", False), ("dapo", True)])
def test_one_update_from_fixed_rollouts_is_open_instructs_on_transformers(theirs, tmp_path, loss_fn, rho):
    """One step from fixed rollouts (6 completions of 2 prompts, packed two a row, in 2 micro-batches): our step's
    update (SGD at rate 1: the gradient itself) equals open-instruct's loop on the same tiny LLaMA in transformers
    (`forward_for_logprobs` of each completion alone at the sampling temperature, `compute_grpo_loss`, `masked_mean`
    over the step's tokens, backward), with a live reference (another LLaMA) so the KL term counts. `rho`: the
    sampler's log-probs drifted from the policy's (some tokens' weights clamped, some dropped) and
    `use_rho_correction` on, open-instruct's `compute_rho_correction` weighing its loss."""
    import optax
    import transformers
    from helpers.open_instruct_grpo import rho_correction

    from instructjax.convert.hf import hf_state, hf_to_params
    from instructjax.train.rollout import pack_rollout
    from instructjax.train.step import build_step

    hf_config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                         tie_word_embeddings=False)
    dirs = {}
    for name, seed in (("policy", 0), ("reference", 1)):
        torch.manual_seed(seed)
        transformers.LlamaForCausalLM(hf_config).save_pretrained(tmp_path / name)
        dirs[name] = str(tmp_path / name)
    params, model = hf_to_params(dirs["policy"])
    reference, _ = hf_to_params(dirs["reference"])
    temperature, samples = 0.7, 3
    rng = np.random.default_rng(5)
    prompts = [tuple(rng.integers(3, 96, rng.integers(3, 7))) for _ in range(2)]
    completions = [(p, tuple(rng.integers(3, 96, rng.integers(2, 9)))) for p in prompts for _ in range(samples)]
    advantages = group_advantages(np.array([10.0, 0.0, 0.0, 10.0, 10.0, 0.0]), samples, "standard")
    policy = transformers.LlamaForCausalLM.from_pretrained(dirs["policy"], dtype=torch.float32)
    with torch.no_grad():  # the sampler's log-probs: the policy's, drifted
        sampled = [theirs.forward_for_logprobs(policy, torch.tensor([[*p, *r]]), None, torch.arange(len(p) + len(r))[None],
                                               -1, temperature)[0][0, len(p) - 1:].numpy() for p, r in completions]
    sampled = [lp + rng.normal(0, 0.4, lp.shape).astype(np.float32) if rho else lp for lp in sampled]
    kept = [(p, r, float(a), 0, lp) for (p, r), a, lp in zip(completions, advantages, sampled, strict=True)]
    batch = pack_rollout(kept, 4, 32)
    assert batch["segment_ids"].max() >= 2  # completions share rows

    run = load_config(None, ["objective.loss=grpo", f"objective.grpo.loss_fn={loss_fn}",
                             "objective.grpo.reference=live",
                             f"objective.grpo.temperature={temperature}", "objective.grpo.clip_higher=0.28", "data.seq_len=32",
                             "optim.micro_batches=2", *([f"objective.grpo.{k}={v}" for k, v in RHO_KEYS.items()] if rho
                                                        else [])])
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1, 1), ("data", "fsdp", "expert", "tensor"))
    build = build_step(model, optax.sgd(1.0), run, 1, mesh)
    assert build.takes_reference
    before = jax.tree.map(np.array, params)  # the step donates its parameters
    with jax.set_mesh(mesh):
        updated, _, metrics = build.step(params, build.init_optimizer(params), batch, reference)
    ours = hf_state(jax.tree.map(lambda a, b: a - np.asarray(b), before, updated), model)

    frozen = transformers.LlamaForCausalLM.from_pretrained(dirs["reference"], dtype=torch.float32)
    s = run.objective.options
    cfg = type("Config", (), dict(loss_fn=theirs.GRPOLossType(loss_fn), clip_lower=s.clip_lower,
                                  clip_higher=s.clip_higher, kl_estimator=s.kl_estimator, use_rho_correction=rho,
                                  **{k: getattr(s, k) for k in RHO_FIELDS}))()
    masks = [torch.tensor([[0] * len(p) + [1] * len(r)]) for p, r in completions]
    total = float(sum(m[:, 1:].sum() for m in masks))
    step_loss, clamped = 0.0, []
    for (p, r), a, mask, lp in zip(completions, advantages, masks, sampled, strict=True):
        ids = torch.tensor([[*p, *r]])
        positions = torch.arange(ids.shape[1])[None]
        new, _ = theirs.forward_for_logprobs(policy, ids, None, positions, -1, temperature)
        with torch.no_grad():
            ref, _ = theirs.forward_for_logprobs(frozen, ids, None, positions, -1, temperature)
        response = mask[:, 1:].bool()
        ratio = torch.exp(new - new.detach())
        adv = torch.full_like(new, float(a))
        weights = torch.ones_like(new)
        if rho:
            sampler = torch.zeros_like(new)
            sampler[0, len(p) - 1:] = torch.from_numpy(lp)
            correction = rho_correction()(new.detach(), sampler, response, adv, cfg)
            weights = correction.weights
            clamped.append(correction.metrics["val/rho_clipfrac"][response].sum() + (weights[response] == 0).sum())
        pg, _, kl = theirs.compute_grpo_loss(new, ratio, adv, ref, cfg, weights)
        loss = theirs.masked_mean(pg + s.beta * kl, response, None, total)
        loss.backward()
        step_loss += float(loss.detach())
    np.testing.assert_allclose(float(metrics["loss"]), step_loss, rtol=1e-4, atol=1e-7)
    assert not rho or sum(clamped) > 0  # some weights clamped or tokens dropped
    grads = {k: v.grad.numpy() for k, v in policy.named_parameters()}
    assert set(grads) == set(ours)
    scale = max(float(np.abs(g).max()) for g in grads.values())
    for name, grad in grads.items():  # 3.5e-7 of the largest at worst, when written
        np.testing.assert_allclose(ours[name], grad, atol=1e-4 * scale, err_msg=name)


def test_plan_counts_what_a_rollout_allocates_and_the_reference():
    """`plan`'s rollout term: the KV cache a rollout's engine holds (its arrays' bytes after generating, measured) and
    the layers' sliced copy (the arrays decoding reads: counted as the whole model's, the embeddings it shares
    included); the reference's copy where beta > 0, none at beta 0."""
    from flax import nnx

    from instructjax.model import decoding
    from instructjax.model.decoder import Decoder
    from instructjax.model.engine import Sampling, SlotEngine
    from instructjax.model.presets import preset
    from instructjax.train import memory as plan_memory
    from instructjax.train.topology import local_topology

    model = preset("tiny", dtype="float32", vocab_size=256, num_layers=2)
    config = load_config(None, ["objective.loss=grpo", "objective.grpo.prompts_per_rollout=3",
                                "objective.grpo.samples_per_prompt=2",
                                "objective.grpo.response_length=40", "data.seq_len=64", "data.global_batch=6"])
    decoder = Decoder(model, rngs=nnx.Rngs(0))
    objective = objective_for(config)
    sizes = {"data": 1, "fsdp": 1, "expert": 1, "tensor": 1}
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(decoder, nnx.Param)))
    terms = objective.rollout_terms(model, sizes, 64, {"param_bytes": param_bytes})
    engine = SlotEngine(decoder, slots=objective.slots(1))
    engine.generate([[1, 5, 9, 11, 7, 3, 2, 4, 8, 6, 10, 12, 14, 13, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24]] * 6,
                    Sampling(max_new_tokens=40, temperature=0.7), [2])
    assert terms["cache"] == sum(x.nbytes for x in jax.tree.leaves(engine._cache))
    assert model.scan_layers
    sliced = nnx.to_pure_dict(nnx.state(decoding.unstacked(decoder), nnx.Param))["layers"]  # new arrays, a layer each
    assert sum(x.nbytes for x in jax.tree.leaves(sliced)) <= terms["layers"] <= param_bytes  # embeddings: shared

    shapes = [(6, 64)]
    needed, _ = plan_memory.step_needed(model, config, sizes, shapes, local_topology())
    no_kl = load_config(None, ["objective.loss=grpo", "objective.grpo.beta=0", "objective.grpo.prompts_per_rollout=3",
                               "objective.grpo.samples_per_prompt=2", "data.seq_len=64", "data.global_batch=6"])
    full = {"trained_bytes": param_bytes, "param_bytes": param_bytes, "float_bytes": param_bytes, "copy_bytes": 0}
    assert objective.reference_bytes(full) == param_bytes  # float32 compute: the reference as it is
    assert objective.reference_bytes({**full, "copy_bytes": param_bytes // 2}) == param_bytes // 2  # bfloat16
    assert objective.reference_bytes({**full, "trained_bytes": 1000}) == 1000  # a LoRA's: its starting adapters
    assert objective_for(no_kl).reference_bytes(full) == 0
    assert needed > plan_memory.step_needed(model, no_kl, sizes, shapes, local_topology())[0]


@pytest.mark.parametrize("overrides,expected", [
    (["data.mixture=arithmetic_builtin"], "rolls out verifiable prompts, but data.mixture=arithmetic_builtin has no "
                                          "verifiable task"),
    (["objective.loss=sft"], "holds verifiable prompts (no answer to train on): set objective.loss=grpo"),
    (["objective.grpo.prompts_per_rollout=4"], "data.global_batch=8 rows cannot hold a rollout's 16 completions"),
    (["objective.grpo.response_length=60"], "it needs rows of"),
    (["objective.grpo.samples_per_prompt=1"],
     "objective.grpo.samples_per_prompt=1: grpo's advantage is a completion's reward "
                                         "against its prompt's other samples"),
    (["objective.grpo.async_steps=-1"], "objective.grpo.async_steps must be >= 0 (0: synchronous), got -1"),
    (["objective.grpo.async_steps=1000"], "objective.grpo.async_steps=1000: 1000 rollouts ahead take 2000 prompts "
                                     "(objective.grpo.prompts_per_rollout=2); data.mixture=verifiable_builtin has"),
    (["objective.grpo.rollout_devices=8"],
     "objective.grpo.rollout_devices=8: the engine takes the same share of each of the 1 "
                                      "hosts' 8 devices and leaves each some to learn on: at most 7, a multiple of 1"),
    (["objective.loss=sft", "data.mixture=alpaca_builtin", "objective.grpo.async_steps=1"],
     "objective.grpo: objective.loss is sft, which reads only objective.sft: leave objective.grpo out, or set "
     "objective.loss=grpo"),
    (["objective.loss=sft", "data.mixture=alpaca_builtin", "objective.async_steps=1"],
     "objective.async_steps is an option of grpo (objective.grpo.async_steps), not of objective.loss=sft"),
])
def test_a_grpo_run_that_cannot_be_is_one_line(tmp_path, capsys, overrides, expected):
    """Bad input, one line and exit 2: grpo on a task that is not verifiable, another objective on verifiable prompts,
    a batch too small for a rollout, one sample a prompt (no spread in a group), a prompt and its response longer
    than a row (a rollout whose KV cache does not fit: below)."""
    from instructjax import cli

    argv = ["train", "--config", "/dev/null", "model.preset=tiny", "model.dtype=float32", "data.seq_len=64",
            "data.global_batch=8", "data.mixture=verifiable_builtin", "objective.loss=grpo",
            "objective.grpo.prompts_per_rollout=2", "objective.grpo.samples_per_prompt=4", "objective.grpo.response_length=16",
            "max_steps=2", f"run_dir={tmp_path / 'run'}"]
    if "objective.loss=sft" in overrides:  # grpo's own keys left out: an sft config has none
        argv = [a for a in argv if not a.startswith("objective.grpo.")]
    argv += overrides
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("instructjax: error: ") and expected in err, err


def test_a_rollout_that_does_not_fit_says_so_in_one_line():
    """The memory check's line (what `train` raises before compiling, exit 2) where a rollout's KV cache (kept through
    the steps: the engine is made once a run) is most of the need: LLaMA-2-7B on a v5e-8 decoding 64 slots of 32K
    tokens (a CPU's dense attention would make the step larger first)."""
    from instructjax.model.presets import preset
    from instructjax.train import memory
    from instructjax.train.topology import tpu_topology

    config = load_config(None, ["objective.loss=grpo", "data.seq_len=32768", "data.global_batch=64",
                                "optim.micro_batches=8", "objective.grpo.prompts_per_rollout=16"])
    sizes = {"data": 1, "fsdp": 8, "expert": 1, "tensor": 1}
    needed, line = memory.step_needed(preset("llama2-7b", remat="full"), config, sizes, [(64, 32768)],
                                      tpu_topology("v5e-8"))
    assert needed > memory.usable_bytes(tpu_topology("v5e-8"))
    assert line.count("\n") == 0 and line.startswith("out of memory: a rollout needs about"), line
    assert "objective.grpo.prompts_per_rollout x objective.grpo.samples_per_prompt" in line and "kept through the steps" in line


def test_plan_compiles_the_rollout_engine_of_a_grpo_run(capsys):
    """`plan --compile --rollout`: the rollout engine's fill and decode steps, compiled for this machine from the run's
    own model on its mesh (64 slots: 16 prompts x 4 samples; the cache rows of data.seq_len); one line for a config
    that rolls nothing out."""
    import json

    from instructjax import cli

    argv = ["plan", "--config", "/dev/null", "--compile", "--rollout", "model.preset=tiny", "data.seq_len=512",
            "data.mixture=verifiable_builtin", "data.global_batch=64", "--json"]
    assert cli.main([*argv, "objective.loss=grpo"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["plan"]["engine"], report["plan"]["slots"], report["plan"]["length"]) == ("rollout", 64, 512)
    assert [s["step"] for s in report["steps"]] == ["fill", "decode"] and all(s["xla_bytes"] > 0 for s in report["steps"])
    assert cli.main([*argv, "data.mixture=arithmetic_builtin"]) == 2
    assert "plan --rollout goes with --compile, for a config of objective.loss: grpo" in capsys.readouterr().err


def test_a_step_whose_rollouts_all_score_alike_says_so(tmp_path, capsys, monkeypatch):
    """An untrained model solves nothing: every group scores alike, the rollout is drawn again (`MAX_REDRAWS` times: 8,
    2 here, by the one engine the run makes: its compiled steps and cache kept), then the step trains on no token, and
    one warning line says so (nothing left out silently). Its `time/generation` is the draws' time; metrics.jsonl logs no loss for it (null),
    loss.png plots none (no 0) and labels GRPO's loss so, and the run dir has solve_rate.png."""
    from instructjax.train import rollout
    from instructjax.train.metrics import GRPO_LABEL, loss_figure, read_metrics
    from instructjax.train.trainer import Trainer

    assert rollout.MAX_REDRAWS == 8
    monkeypatch.setattr(rollout, "MAX_REDRAWS", 2)
    draws = []
    generate = rollout.Rollouts._generate

    def timed(self, *args):
        kept, metrics = generate(self, *args)
        draws.append(metrics["time/generation"])
        return kept, metrics

    monkeypatch.setattr(rollout.Rollouts, "_generate", timed)
    engines, made = [], rollout.ContinuousBatcher.__init__
    monkeypatch.setattr(rollout.ContinuousBatcher, "__init__", lambda self, *a, **k: engines.append(self) or made(
        self, *a, **k))
    config = load_config(None, ["model.preset=tiny", "model.dtype=float32", "data.mixture=verifiable_builtin",
                                "data.seq_len=64", "data.global_batch=8", "objective.loss=grpo",
                                "objective.grpo.prompts_per_rollout=2", "objective.grpo.samples_per_prompt=4",
                                "objective.grpo.response_length=4", "max_steps=1", f"run_dir={tmp_path / 'run'}"])
    result = Trainer(config).run()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("instructjax: warning:")]
    assert warnings == ["instructjax: warning: 2 rollouts in a row scored alike in every group (prompts 0..3 of the "
                        "run): this step trains on no token"]
    assert result.losses == {1: 0.0}
    (record,) = read_metrics(tmp_path / "run")
    assert len(draws) == 2 and record["time/generation"] == pytest.approx(sum(draws))
    assert len(engines) == 1 and engines[0].stats.prompts == 2 * 8  # one engine drew both rollouts
    assert record["loss"] is None and record["loss/policy_avg"] is None
    assert record["objective/verifiable_correct_rate"] == 0.0
    figure = loss_figure([record], "run")
    assert figure.axes[0].get_ylabel() == GRPO_LABEL and figure.axes[0].get_lines() == []
    assert (tmp_path / "run" / "loss.png").is_file() and (tmp_path / "run" / "solve_rate.png").is_file()


def test_a_verifiers_draws_are_its_keys_and_a_raise_is_0_named_or_a_stop(capsys, new_command):
    """A drawing verifier (IFEvalG's word count, its kwargs null) scores the same completion alike for one key and
    leaves Python's `random` as it found it; a verifier that raises scores 0 with one warning line naming the
    completion (the default), or stops with one error line (`objective.grpo.verifier_errors: stop`)."""
    import json
    import random

    from instructjax.core.errors import DataError
    from instructjax.data.verifiers import get_verifier, register_verifier, seeded_score
    from instructjax.train.rollout import Prompt, Rollouts

    drawn = repr([json.dumps({"instruction_id": ["length_constraints:number_words"], "kwargs": [None]})])
    ifeval = get_verifier("ifeval")
    random.seed(5)
    before = random.getstate()
    scores = [seeded_score(ifeval, "a few words", drawn, (0, 1, k, 0)) for k in range(16)]
    assert random.getstate() == before
    assert scores == [seeded_score(ifeval, "a few words", drawn, (0, 1, k, 0)) for k in range(16)]
    assert len(set(scores)) == 2  # the keys draw different relations and counts

    new_command()  # the verifier below registered in this test's command alone

    @register_verifier("raises_81")
    def raises(prediction: str, ground_truth: str) -> float:
        raise ValueError("no answer\nhere")

    prompt = Prompt((1, 2), "7", "raises_81", 0, "row-7")
    for policy in ("zero", "stop"):
        config = load_config(None, ["objective.loss=grpo", f"objective.grpo.verifier_errors={policy}"])
        made = Rollouts(config, [prompt], ["my_task"], decode=str, stop_ids=[2],
                        score=lambda name, text, truth, key: seeded_score(get_verifier(name), text, truth, key))
        words = "verifier raises_81 raised on sample 3 of prompt 11 of the run (my_task row-7): ValueError: no answer here"
        if policy == "zero":
            assert made._scored(prompt, "x", 11, 3) == 0.0
            assert capsys.readouterr().err.splitlines() == [f"instructjax: warning: {words}; scored 0 "
                                                            "(objective.grpo.verifier_errors: stop stops the run instead)"]
        else:
            with pytest.raises(DataError) as raised:
                made._scored(prompt, "x", 11, 3)
            assert str(raised.value) == f"{words} (objective.grpo.verifier_errors: stop)"


RHO_FIELDS = ("rho_clamp_lower_bound", "rho_clamp_upper_bound", "rho_mask_lower_bound", "rho_mask_upper_bound",
              "rho_mask_sequence_level", "rho_mask_tv_divergence")
RHO_KEYS = {"use_rho_correction": True, "rho_clamp_upper_bound": 1.3, "rho_mask_lower_bound": 0.5,
            "rho_mask_upper_bound": 1.6}  # the one-update test's: clamped and dropped tokens both
RHO_CASES = {  # open-instruct's defaults (clamp at 2), then its bounds at work, token and sequence level, and VACO's
    "clamp": {},
    "token": {"rho_clamp_lower_bound": 0.7, "rho_clamp_upper_bound": 1.3, "rho_mask_lower_bound": 0.5,
              "rho_mask_upper_bound": 1.6},
    "sequence": {"rho_mask_lower_bound": 0.9, "rho_mask_upper_bound": 1.1, "rho_mask_sequence_level": True},
    "tv": {"rho_mask_lower_bound": 0.5, "rho_mask_upper_bound": 1.05, "rho_mask_tv_divergence": True},
}


@pytest.mark.parametrize("case", sorted(RHO_CASES))
def test_rho_weights_and_metrics_are_open_instructs(case):
    """`rho_correction` against the pinned `compute_rho_correction` on rollouts whose sampler drifted (some weights
    clamped, some tokens dropped: asserted), within 1e-6; and two completions packed in one row (a completion is a
    segment here, a row there) weigh as each alone."""
    import types

    from helpers.open_instruct_grpo import rho_correction as pinned_rho

    from instructjax.train.objectives.grpo import rho_correction

    keys = {"use_rho_correction": True, "rho_clamp_lower_bound": 0.0, "rho_clamp_upper_bound": 2.0,
            "rho_mask_lower_bound": 0.0, "rho_mask_upper_bound": 0.0, "rho_mask_sequence_level": False,
            "rho_mask_tv_divergence": False, **RHO_CASES[case]}
    section = load_config(None, ["objective.loss=grpo", *(f"objective.grpo.{k}={v}" for k, v in keys.items())]
                          ).objective.options
    new, _, _, advantages, mask = rollouts(3, rows=8, length=24)
    sampler = (new + np.random.default_rng(4).normal(0, 0.5, new.shape)).clip(max=-1e-3).astype(np.float32)
    segments = (np.cumsum(mask, 1) > 0) & (np.cumsum(mask[:, ::-1], 1)[:, ::-1] > 0)  # each row: one completion
    theirs = pinned_rho()(torch.from_numpy(new), torch.from_numpy(sampler), torch.from_numpy(mask),
                        torch.from_numpy(advantages), types.SimpleNamespace(**keys))
    weights, metrics = rho_correction(jnp.asarray(new), jnp.asarray(sampler), jnp.asarray(mask),
                                      jnp.asarray(advantages), jnp.asarray(segments.astype(np.int32)), section)
    np.testing.assert_allclose(np.asarray(weights), theirs.weights.numpy(), rtol=1e-6, atol=1e-6)
    assert set(metrics) == set(theirs.metrics)
    for key, values in theirs.metrics.items():
        np.testing.assert_allclose(np.asarray(metrics[key])[mask], values.numpy()[mask], rtol=1e-6, atol=1e-6,
                                   err_msg=key)
    assert theirs.metrics["val/rho_drop_frac"][mask].any() or case == "clamp"
    assert theirs.metrics["val/rho_clipfrac"][mask].any() or case in ("sequence", "tv")
    # rows 0 and 1 packed into one row, completions 1 and 2
    packed = lambda x: np.concatenate([x[0], x[1]])[None]  # noqa: E731
    two = packed(segments.astype(np.int32) * np.array([[1], [2]] + [[0]] * 6))
    weights2, _ = rho_correction(*(jnp.asarray(packed(x)) for x in (new, sampler, mask, advantages)),
                                 jnp.asarray(two), section)
    np.testing.assert_allclose(np.asarray(weights2)[0], np.concatenate(np.asarray(weights)[:2]), rtol=1e-6)


def test_plan_compiles_each_half_of_a_run_whose_engine_has_devices_of_its_own(capsys):
    """`plan --compile` with `objective.grpo.rollout_devices` (`cli.plan.compiled_apart`'s parts): on a v4-8 (4 chips, 1
    host) the update step built for the learner's 2 chips and the engine's decode step for the other 2 (its fill is
    `plan --compile --rollout`'s, above), each fitting; a v5e slice of several hosts, whose compiler builds no program
    over part of it (v5e-32 refuses, libtpu aborts on a v5e-16), is one line (exit 2)."""
    import dataclasses

    from instructjax import cli
    from instructjax.cli.plan_eval import compile_eval
    from instructjax.train.compile import compile_run
    from instructjax.train.rollout_devices import split_topology
    from instructjax.train.topology import tpu_topology

    args = ["model.preset=tiny", "data.seq_len=128", "data.mixture=verifiable_builtin", "data.global_batch=8",
            "objective.loss=grpo", "objective.grpo.prompts_per_rollout=2", "objective.grpo.samples_per_prompt=4"]
    config = load_config(None, [*args, "objective.grpo.rollout_devices=2"])
    learner, engine = split_topology(tpu_topology("v4-8"), config)
    assert (learner.devices, engine.devices) == (2, 2) and set(learner.part) | set(engine.part) == {0, 1, 2, 3}
    report = compile_run(config, learner)
    assert report.fits and report.devices == 2 and report.shapes and all(s.xla_bytes > 0 for s in report.shapes)
    plan, (decode,) = compile_eval(dataclasses.replace(config, mesh="auto"), engine, ("decode",), rollout=True)
    assert plan.mesh["fsdp"] == 2 and plan.fits and decode.xla_bytes > 0
    argv = ["plan", "--config", "/dev/null", "--compile", "--topology", "v5e-16",
            *args, "objective.grpo.rollout_devices=8"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "XLA:TPU builds no program over part of a v5e-16" in err, err
