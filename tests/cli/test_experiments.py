"""The papers' configs: committed files equal the generated ones, each loads, and matches its paper table."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import REPO

from instructjax import cli
from instructjax.cli import experiments
from instructjax.core.config import load_config
from instructjax.data.blends import specs
from instructjax.data.blends.specs import define as define_data
from instructjax.eval.config import eval_section
from instructjax.eval.suite import SUITE_NAMES
from instructjax.model.presets import PRESETS

ROOT = REPO / "configs"
SEEDS = REPO.parent / "shared" / "seeds"  # the papers' text, beside a developer's checkout
EXPS = experiments.experiments()
BY_PATH = {e.path: e for e in EXPS}


def load(path: str):
    return load_config(ROOT / path)


def test_committed_files_equal_generated():
    assert experiments.differences(ROOT) == []


def test_family_sizes():
    groups = [e.path.split("/")[0] for e in EXPS]
    # seed 000: 8 settings x 2 models + 4 ratios + 4 counts; seed 002: Base + 3 full + (2+2+1 sizes) x 5 methods
    # + 4; seed 003: 3 models x 3 datasets x 2 + 4 strategies + 5 max counts + 5 distributions + Table 3's 3 models
    # x 2 datasets x 2; seed 004: 6 vanilla LLaMA (1: 7-65B, 2: 7-13B) + 12 datasets x 2 sizes + ShareGPT 30/65B
    # + Human 4 sizes + Tulu 4 sizes + Tulu-1.1 2 sizes + Table 4's OPT and Pythia + Table 8's vanilla OPT, Pythia;
    # the adapter variants: Llama-3-8B Magpie Mosaic-IT with LoRA, Tulu 65B with LoRA and with QLoRA; the DPO stages
    # after Tulu-1.1 7B and 13B.
    assert {g: groups.count(g) for g in set(groups)} == {
        "seed000_acp": 24, "seed002_selection": 33, "seed003_mosaic": 44 + 1, "seed004_tulu": 46 + 2 + 2}
    assert len({e.config["name"] for e in EXPS}) == len(EXPS)  # names (and run dirs) are unique


@pytest.mark.parametrize("path", sorted(BY_PATH))
def test_config_loads_and_refers_to_real_things(path):
    config = load(path)
    assert config.model.preset in PRESETS
    assert config.eval["suite"] in SUITE_NAMES
    assert config.name == Path(path).stem
    # every paper run starts from its base model's imported checkpoint, so it takes that model's tokenizer; a
    # preference stage continues the SFT run its tags name
    start = BY_PATH[path].tags.get("start", f"checkpoints/base/{config.model.preset}")
    assert config.model.init_from == start and config.tokenizer is None
    if config.max_steps == 0:  # eval-only (seed 000 "None")
        return
    define_data(config.define)
    assert specs.tasks_of(config.data.mixture) is not None
    assert config.optim.weight_decay == 0.0 and config.data.pack == "per_step"  # the papers' steps, packed


def test_seed000_matches_paper():
    for e in (e for e in EXPS if e.path.startswith("seed000")):
        c = load(e.path)
        assert c.model.preset in ("llama2-7b", "llama2-13b")
        if c.max_steps == 0:
            continue
        assert (c.optim.lr, c.optim.warmup_ratio, c.optim.epochs, c.data.global_batch) == (5e-5, 0.03, 2, 64)
    settings = {e.tags["setting"] for e in EXPS if "setting" in e.tags}
    assert settings == {"None", "A", "C", "P", "AC", "AP", "CP", "ACP"}
    # ratio 1.5: Alpaca fixed at 20K, specialized 1.5 x 20K = 30K split equally between CodeAlpaca and P3
    c = load("seed000_acp/acp_ratio_1.5_llama2_7b.yaml")
    assert dict(specs.lookup_mixture(c.data.mixture).counts) == {"alpaca": 20000, "code_alpaca": 15000, "p3": 15000}
    c = load("seed000_acp/acp_count_2500_llama2_7b.yaml")
    assert dict(specs.lookup_mixture(c.data.mixture).counts) == {"alpaca": 2500, "code_alpaca": 2500, "p3": 2500}


def test_seed002_matches_paper():
    expected_len = {"alpaca": 512, "dolly": 1024, "wizardlm": 2048}  # Appendix C
    expected_template = {"alpaca": "alpaca", "dolly": "alpaca", "wizardlm": "wizardlm"}  # FastChat / WizardLM prompt
    sizes = {}
    base = load("seed002_selection/base_llama2_7b.yaml")  # Tables 3, 7, 8's "Base": evaluated, not trained
    assert (base.max_steps, base.model.preset, base.eval["suite"]) == (0, "llama2-7b", "leaderboard")
    for e in (e for e in EXPS if e.path.startswith("seed002") and e.tags["method"] != "base"):
        c = load(e.path)
        (task, spec), = c.define["tasks"].items()
        ds = e.tags["dataset"]
        assert (c.optim.lr, c.optim.warmup_ratio, c.optim.epochs, c.data.global_batch) == (2e-5, 0.03, 3, 128)
        assert c.data.seq_len == spec["max_length"] == expected_len[ds] and spec["template"] == expected_template[ds]
        sel = spec.get("selection")
        assert (sel is None) == (e.tags["method"] == "full")
        if sel:
            sizes.setdefault((ds, sel["method"]), set()).add(sel["k"])
    for method in ("random", "kmeans", "kcenter", "quality"):
        assert sizes[("alpaca", method)] == {1000, 9000}
        assert sizes[("dolly", method)] == {1000, 3000}
        assert sizes[("wizardlm", method)] == {4200}  # 6% of 70K
    assert sizes[("wizardlm", "longest")] == {1000, 4200}
    assert sizes[("alpaca", "shortest")] == sizes[("dolly", "shortest")] == {1000}  # Table 4


def test_seed003_matches_paper():
    c = load("seed003_mosaic/alpaca_gpt4_mosaic_mistral_7b.yaml")
    assert (c.optim.lr, c.optim.warmup_ratio, c.optim.epochs, c.data.global_batch, c.data.seq_len) == \
        (1e-5, 0.1, 3, 128, 2048)
    m = c.data.mosaic
    assert (m.strategy, m.k_max, m.distribution, m.max_length) == ("mix", 10, "uniform", 2048)
    c = load("seed003_mosaic/wizardlm_baseline_llama2_13b.yaml")
    assert (c.optim.lr, c.optim.warmup_ratio, c.data.mosaic) == (2e-5, 0.03, None)
    assert c.define["tasks"]["wizardlm_vicuna"]["template"] == "vicuna"
    ablations = {(k, v) for e in EXPS if e.path.startswith("seed003_mosaic/ablation") for k, v in e.tags.items()
                 if k in ("strategy", "k_max", "distribution")}
    assert ablations == {("strategy", s) for s in ("primary", "format", "permute", "maskout")} | \
        {("k_max", k) for k in (2, 4, 6, 8, 12)} | \
        {("distribution", d) for d in ("fixed", "exponential", "pareto", "lognormal", "logistic")}
    c = load("seed003_mosaic/ablation_dist_pareto_mistral_7b.yaml")
    assert (c.data.mosaic.distribution, c.data.mosaic.k_max, c.model.preset) == ("pareto", 10, "mistral-7b")
    # Table 3: {Llama-3-8B, Phi-3, Gemma2-2B} x {Vicuna 1M, Magpie} x {baseline, Mosaic-IT}, 300K, 4096, 2 epochs
    table3 = {(e.tags["preset"], e.tags["dataset"], e.tags["method"]) for e in EXPS
              if e.path.startswith("seed003") and "Table 3" in e.title}
    assert table3 == {(p, d, m) for p in ("llama3-8b", "phi3-mini", "gemma2-2b") for d in ("vicuna", "magpie")
                      for m in ("baseline", "mosaic")}
    c = load("seed003_mosaic/vicuna_mosaic_gemma2_2b.yaml")
    assert (c.optim.lr, c.optim.warmup_ratio, c.optim.epochs, c.data.global_batch, c.data.seq_len) == \
        (2e-5, 0.03, 2, 128, 4096)
    assert (c.template, c.data.mosaic.max_length, c.define["tasks"]["vicuna_300k"]["source"]) == \
        ("model", 4096, "lmsys_chat")
    define_data(c.define)  # registered here too: this test does not lean on another having run first
    assert dict(specs.lookup_mixture(c.data.mixture).counts) == {"vicuna_300k": 300_000}


def test_seed004_matches_paper():
    vanilla = [e for e in EXPS if e.path.startswith("seed004") and e.tags["mixture"] is None]
    assert {e.tags["preset"] for e in vanilla} == {"llama1-7b", "llama1-13b", "llama1-33b", "llama1-65b",
                                                    "llama2-7b", "llama2-13b",  # Table 5's vanilla rows
                                                    "opt-6.7b", "pythia-6.9b"}  # and Table 8's
    for e in vanilla:  # evaluated as base models (App. C: raw prompts for ToxiGen and TruthfulQA)
        c = load(e.path)
        assert c.max_steps == 0 and c.eval["toxigen"] == {"chat": False} and c.eval["truthfulqa"] == {"chat": False}
        # and the Tulu suite's raw prompts (submit_eval_jobs.py drops --use_chat_format for the llama-* models),
        # named rather than detected
        assert c.eval["chat_format"] == "none"
    for e in (e for e in EXPS if e.path.startswith("seed004") and e.tags["mixture"] is not None
              and "objective" not in e.tags):
        c = load(e.path)
        assert c.eval["toxigen"] is True and c.eval["truthfulqa"] is True  # Table 6 for every trained model
        assert c.eval.get("chat_format", "auto") == "auto"  # the template the run trained with (Tulu)
        big = c.model.preset in ("llama1-33b", "llama1-65b")
        lr = 1e-4 if "adapter" in e.tags else 1e-5 if big else 2e-5  # open-instruct's LoRA scripts' lr
        assert (c.optim.lr, c.data.seq_len) == (lr, 1024 if big else 2048)  # Appendix D
        assert (c.optim.epochs, c.optim.warmup_ratio, c.data.global_batch) == (2, 0.03, 128)
    single = {(e.tags["mixture"], e.tags["preset"]) for e in EXPS if (e.tags.get("mixture") or "").startswith("tulu_single")}
    assert len(single) == 12 * 2 + 2
    c = load("seed004_tulu/tulu_human_gpt_llama2_13b.yaml")  # Tulu-1.1 13B
    assert c.data.mixture == "tulu_human_gpt" and c.eval["suite"] == "tulu"
    table4 = {e.tags["preset"] for e in EXPS if e.tags.get("mixture") == "tulu_human_gpt"}  # Table 4's base models
    assert {"opt-6.7b", "pythia-6.9b", "llama1-7b", "llama2-7b"} <= table4


def test_adapter_variants_are_their_runs_with_the_authors_lora_recipes():
    """A LoRA or QLoRA variant is its full fine-tune's config (data, epochs, batch, schedule, eval, paper row) with
    the recipe of the authors' code: open-instruct's finetune_lora_with_accelerate.sh (rank 256, alpha 256, dropout
    0.1, lr 1e-4) and finetune_qlora_with_accelerate.sh (NF4, rank 64, alpha 16, dropout 0.1, lr 1e-4) for Tulu;
    LLaMA-Factory's llama3_lora_sft.yaml (rank 8, alpha 16 = 2 x rank, lr 1e-4) for seed 003. Each resolves to a
    model config the trainer accepts."""
    from instructjax.model.presets import preset

    want = {"seed004_tulu/tulu_human_gpt_llama1_65b_lora.yaml": ((256, 256, 0.1), "none", 1e-4),
            "seed004_tulu/tulu_human_gpt_llama1_65b_qlora.yaml": ((64, 16, 0.1), "nf4", 1e-4),
            "seed003_mosaic/magpie_mosaic_llama3_8b_lora.yaml": ((8, 16, 0.0), "none", 1e-4)}
    variants = {e.path: e for e in EXPS if "adapter" in e.tags}
    assert set(variants) == set(want)
    for path, (recipe, quantized, lr) in want.items():
        variant = yaml.safe_load((ROOT / path).read_text())
        full = yaml.safe_load((ROOT / path.replace(f"_{variants[path].tags['adapter']}.yaml", ".yaml")).read_text())
        lora = variant["model"].pop("lora")
        assert (lora["rank"], lora["alpha"], lora["dropout"], lora["targets"]) == (*recipe, "all-linear"), path
        assert variant["model"].pop("quantize_base", "none") == quantized
        assert variant["optim"].pop("lr") == lr and full["optim"].pop("lr") != lr
        variant["optim"].pop("micro_batches", None)
        for key in ("name", "run_dir"):
            assert variant.pop(key) == f"{full.pop(key)}_{variants[path].tags['adapter']}"
        assert variant == full, path  # everything else is the paper's run
        model = preset(variant["model"]["preset"], **{k: v for k, v in load(path).model.overrides.items()})
        assert model.lora["rank"] == recipe[0] and model.quantize_base == quantized


def test_dpo_stages_continue_tulu_1_1_with_tulu_2s_recipe():
    """Tulu 2's DPO stage (open-instruct's dpo_train_with_accelerate.sh: beta 0.1, lr 5e-7, 3 epochs, 10% warmup,
    32 pairs a step, 2048 tokens a side) on UltraFeedback, continuing the Tulu-1.1 7B and 13B SFT runs (their run
    dirs as init_from); the eval is theirs, so the report sets the two side by side."""
    stages = {e.path: e for e in EXPS if e.tags.get("objective") == "dpo"}
    assert sorted(stages) == ["seed004_tulu/tulu_human_gpt_llama2_13b_dpo.yaml",
                              "seed004_tulu/tulu_human_gpt_llama2_7b_dpo.yaml"]
    for path in stages:
        c, sft = load(path), load(path.replace("_dpo.yaml", ".yaml"))
        assert c.model.init_from == sft.run_dir and c.model.preset == sft.model.preset
        assert (c.objective.loss, c.objective.options.beta, c.objective.options.reference) == ("dpo", 0.1, "cached")
        assert (c.optim.lr, c.optim.epochs, c.optim.warmup_ratio, c.data.global_batch) == (5e-7, 3, 0.1, 32)
        assert c.data.seq_len == 2 * 2048 and specs.task(c.data.mixture).preference
        assert c.eval == sft.eval


def test_selection_in_a_task_keeps_the_top_k_longest():
    from instructjax.data.blends.specs import TaskSpec
    from instructjax.data.encoding.tokenizer import Tokenizer
    from instructjax.data.tokenized.examples import encoded_examples, task_report
    from instructjax.data.tokenized.stream import read_conversations

    define_data({"tasks": {"dolly_longest_test": {"source": "dolly", "data_files": ["builtin"],
                                                  "selection": {"method": "longest", "k": 5}}}})
    tokenizer = Tokenizer.load()
    convs = list(read_conversations(TaskSpec(source="dolly", data_files=("builtin",))))
    length = {c.id: sum(len(tokenizer.encode(m["content"].strip())) for m in c.messages if m["role"] == "assistant")
              for c in convs}
    expected = sorted(length, key=lambda i: (-length[i], i))[:5]
    assert [e["id"] for e in encoded_examples("dolly_longest_test")] == expected
    assert task_report("dolly_longest_test").rows == 5


def test_generator_check_mode_reports_edits(tmp_path):
    experiments.write(tmp_path)
    assert cli.main(["experiments", "--check", "--root", str(tmp_path)]) == 0
    first = tmp_path / EXPS[0].path
    first.write_text(first.read_text() + "# edited\n")
    (tmp_path / "seed004_tulu" / "stale.yaml").write_text("name: x\n")
    assert experiments.differences(tmp_path) == sorted([EXPS[0].path, "seed004_tulu/stale.yaml"])


def test_bad_selection_is_a_config_error():
    from instructjax.core.errors import ConfigError

    for bad, match in (({"method": "longst", "k": 3}, "selection.method"), ({"method": "longest", "k": 0}, "k must")):
        with pytest.raises(ConfigError, match=match):
            define_data({"tasks": {"bad_sel": {"source": "dolly", "data_files": ["builtin"], "selection": bad}}})


def _annotator_model(annotator: str) -> str:
    """The judge model the installed alpaca_eval package's annotator config names."""
    import importlib.util

    root = Path(importlib.util.find_spec("alpaca_eval").origin).parent / "evaluators_configs"
    return yaml.safe_load((root / annotator / "configs.yaml").read_text())[annotator]["completions_kwargs"]["model_name"]


def _model_in_paper(printed: str) -> str:
    """A judge as a paper prints it ("GPT-4-0613", "GPT4-Turbo") as the API names it."""
    return printed.lower().replace("gpt4", "gpt-4")


# (config group, judged part, the judge as the paper prints it, the paper, the sentence that names it)
PAPER_JUDGES = [
    ("seed000_acp", "flask", "GPT-4-0613", "000_ee17504fde723e0b.txt",
     "We adopt the same setup as FLASK, using GPT-4-0613 to access the alignment skills"),
    ("seed002_selection", "pairwise", "GPT-4", "002_90d96a546d3b6616.txt",
     "we swap the position of two responses to let GPT-4 judge twice"),
    ("seed003_mosaic", "pairwise", "GPT4-Turbo", "003_5f58a71acda3a4fb.txt",
     "Figure 6: The prompt we used to request GPT4-Turbo to evaluate the responses."),
]
# (config group, the annotator, the paper, the sentence that names it): the judge model is the annotator's own
PAPER_ANNOTATORS = [
    # AlpacaEval 2: the length-controlled win rate is AlpacaEval 2's, computed on its weighted GPT-4 Turbo annotator
    ("seed003_mosaic", "weighted_alpaca_eval_gpt4_turbo", "003_5f58a71acda3a4fb.txt",
     "Rate(LC) in Alpaca Eval represents the length-controlled win rates"),
    ("seed004_tulu", "alpaca_eval_gpt4_0314", "004_c95fab1b15b30ce8.txt",
     'We employ the "alpaca_eval_gpt4_0314" annotator config instead of "alpaca_eval_gpt4"'),
]


def test_each_papers_judges_are_its_configs_judges():
    """Every judged part of a paper's configs asks the judge the paper names (FLASK GPT-4-0613, seed 002's pairwise
    GPT-4, seed 003's pairwise GPT-4 Turbo, seed 003's AlpacaEval 2 on weighted_alpaca_eval_gpt4_turbo with
    gpt-4-1106-preview, seed 004's AlpacaEval 1 on alpaca_eval_gpt4_0314 with gpt-4-0314); each sentence is the
    paper's own where its text is here."""
    papers = SEEDS.is_dir() and all((SEEDS / paper).is_file() for *_, paper, _ in PAPER_JUDGES)
    for group, part, printed, paper, sentence in PAPER_JUDGES:
        assert printed in sentence
        if papers:
            assert sentence in " ".join((SEEDS / paper).read_text().split()), sentence
        configs = [load(e.path) for e in EXPS if e.path.startswith(group) and e.config.get("eval", {}).get(part)]
        assert configs, (group, part)
        assert {eval_section(c.eval).judge_model(part) for c in configs} == {_model_in_paper(printed)}, (group, part)
    for group, annotator, paper, sentence in PAPER_ANNOTATORS:
        if papers:
            assert sentence in " ".join((SEEDS / paper).read_text().split()), sentence
        configs = [load(e.path) for e in EXPS if e.path.startswith(group) and e.config.get("eval", {}).get("alpaca_eval")]
        assert configs and {c.eval["alpaca_eval"]["annotator"] for c in configs} == {annotator}, group
        assert {eval_section(c.eval).judge_model("alpaca_eval") for c in configs} == {_annotator_model(annotator)}, group
    assert _annotator_model("weighted_alpaca_eval_gpt4_turbo") == "gpt-4-1106-preview"
    assert _annotator_model("alpaca_eval_gpt4_0314") == "gpt-4-0314"


def test_seed000_and_seed002_configs_record_their_papers_row():
    """What the report reads (`experiment:`, report/instruction_mixture.py and data_selection.py) is what the tables
    made each config for."""
    for e in EXPS:
        recorded = load_config(ROOT / e.path).experiment
        if e.path.startswith("seed000_"):
            assert recorded == {"family": "seed000", **{k: v for k, v in e.tags.items() if k != "preset"}}, e.path
        elif e.path.startswith("seed002_"):
            want = {"family": "seed002", "method": e.tags["method"]}
            if e.tags["method"] != "base":
                want |= {"dataset": e.tags["dataset"], "k": e.tags["k"]}
            assert recorded == want, e.path


def test_seed003_and_seed004_configs_record_their_papers_row():
    """What the report reads (`experiment:`, report/mosaic_it.py and tulu.py) is what the tables made each config
    for: seed 003's dataset and method, an ablation's data.mosaic key and value; seed 004's dataset or mix, or
    `vanilla` for a base model evaluated as it is. The model is the config's preset, not recorded."""
    for e in EXPS:
        recorded = load_config(ROOT / e.path).experiment
        if e.path.startswith("seed003_"):
            want = {"family": "seed003", "dataset": e.tags["dataset"], "method": e.tags["method"]}
            ablated = {k: v for k, v in e.tags.items() if k not in ("preset", "dataset", "method", "adapter")}
            assert len(ablated) == e.path.startswith("seed003_mosaic/ablation_"), e.path
            for key, value in ablated.items():  # strategy, k_max or distribution: the data.mosaic key it varies
                want |= {"ablation": key, "value": value}
                assert e.config["data"]["mosaic"][key] == value, e.path
            assert recorded == want, e.path
        elif e.path.startswith("seed004_"):
            mixture = e.tags["mixture"]
            data = "vanilla" if mixture is None else mixture.removeprefix("tulu_single_").removeprefix("tulu_")
            assert recorded == {"family": "seed004", "data": data}, e.path
            assert f"tulu_{data}_" in e.config["name"]  # the name says the same, though the report never reads it


def test_the_report_places_every_papers_config_in_its_family_and_no_other_config():
    """Each generated config's run is of its paper's family (report.families.family_of reads `experiment:`); the
    quickstart config records no experiment and is of none."""
    from instructjax.report.families import family_of
    from instructjax.report.runs import Run

    for e in EXPS:
        run = Run(ROOT / e.path, load_config(ROOT / e.path))
        family = family_of(run)
        assert family is not None and family.KEY == e.path[:len("seed000")], e.path
        assert family.coordinates(run) is not None
    quickstart = Run(ROOT / "quickstart.yaml", load_config(ROOT / "quickstart.yaml"))
    assert quickstart.config.experiment == {} and family_of(quickstart) is None
