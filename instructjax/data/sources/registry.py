"""The registry of sources: dataset name -> hub id, native columns and adapter (`Source`): the SFT datasets
(`SOURCES`), the preference ones (`PREFERENCE_SOURCES`), the verifiable-prompt ones (`VERIFIABLE_SOURCES`) and the
SFT sets that are built-in rows only (`BUILTIN_SOURCES`), looked up by name (`get_source`). Loading one is `load`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from instructjax.core.errors import ConfigError
from instructjax.data.sources import (
    adapters,
    chat_logs,
    dialogues,
    messages,
    preference,
    sharegpt,
    verifiable,
)


@dataclass(frozen=True)
class Source:
    """One instruction dataset: where it lives on the hub, its native columns, and its adapter."""

    name: str
    title: str
    hub_id: str | None  # None: no hub dataset, the user's own files (data_files is required)
    columns: tuple[str, ...]
    adapter: Callable[..., Any]
    hub_config: str | None = None
    hub_data_files: str | tuple[str, ...] | None = None
    hub_parts: str | None = None  # pooled: "configs" (every hub config is a part) or "files" (every hub file)
    options: dict[str, Any] = field(default_factory=dict)
    # rows are messages of trees: the columns of a message's id and its parent's (the adapter needs whole trees)
    tree: tuple[str, str] | None = None
    split_long: bool = False  # conversations longer than a row are split into blocks of whole rounds
    # (local tables or None for the hub, adapter options, share, stats) -> adapter options: a pass over every row,
    # in file order, before any row is adapted (ShareGPT's `clean: fastchat` cleans and de-duplicates the dump, the
    # cleaning mapped over the hosts of a run by `share`, its rows counted into `stats`; `sharegpt.prepare`)
    prepare: Callable[..., dict[str, Any]] | None = None
    hub_split: str = "train"  # the hub split read (UltraFeedback's pairs are `train_prefs`)


_ALPACA = ("instruction", "input", "output")
# The Flan Collection (SirNeural/flan_v2): five submixes, each zero-/few-shot and with/without answer options
# (`{submix}_{zs|fs}_{opt|noopt}_train*.jsonl.gz`; some are split into parts). Tulu's FLAN V2 samples them all.
FLAN_V2_SUBMIXES = ("flan", "t0", "niv2", "cot", "dialog")
POOL_OPTIONS = {"per_part": None, "pool_seed": 0}  # every row source takes these (see `row_read`)
SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("superni", "SuperNI", "Muennighoff/natural-instructions",
           ("task_name", "id", "definition", "inputs", "targets"), adapters.superni),
    # CoT as open-instruct's convert_cot_data: 50K zero-shot + 50K few-shot (the pool of two parts)
    Source("cot", "CoT", "SirNeural/flan_v2", ("inputs", "targets", "task"), adapters.inputs_targets,
           hub_data_files=("cot_zs_opt_train.jsonl.gz", "cot_fs_opt_train.jsonl.gz"), hub_parts="files",
           options={"per_part": 50_000, "pool_seed": 0}),
    Source("flan_v2", "Flan V2", "SirNeural/flan_v2", ("inputs", "targets", "task"), adapters.inputs_targets,
           hub_data_files=tuple(f"{m}_*_train*.jsonl.gz" for m in FLAN_V2_SUBMIXES)),
    Source("dolly", "Dolly", "databricks/databricks-dolly-15k",
           ("instruction", "context", "response", "category"), adapters.dolly),
    Source("oasst1", "Open Assistant 1", "OpenAssistant/oasst1",
           ("message_id", "parent_id", "role", "text", "rank", "lang", "message_tree_id", "deleted"),
           dialogues.oasst1_conversations, options={"top_k": None}, tree=dialogues.TREE_LINKS),
    Source("self_instruct", "Self-instruct", "yizhongw/self_instruct", ("prompt", "completion"),
           adapters.self_instruct, hub_config="self_instruct"),
    Source("unnatural_instructions", "Unnatural Instructions", "mrm8488/unnatural-instructions-core",
           ("instruction", "instances"), adapters.unnatural_instructions),
    Source("alpaca", "Alpaca", "tatsu-lab/alpaca", _ALPACA, adapters.alpaca_style),
    Source("code_alpaca", "Code-Alpaca", "sahil2801/CodeAlpaca-20k", _ALPACA, adapters.alpaca_style),
    Source("gpt4_alpaca", "GPT4-Alpaca", "vicgalle/alpaca-gpt4", _ALPACA, adapters.alpaca_style),
    Source("baize", "Baize", "taskydata/baize_chatbot", ("topic", "input"), dialogues.baize,
           hub_data_files=("alpaca_chat_data.json", "medical_chat_data.json", "quora_chat_data.json",
                           "stackoverflow_chat_data.json")),
    # the html-cleaned release as open-instruct reads it; `clean: fastchat` cleans a raw HTML dump (`sharegpt`)
    Source("sharegpt", "ShareGPT", "anon8231489123/ShareGPT_Vicuna_unfiltered", ("id", "conversations"),
           sharegpt.sharegpt,
           hub_data_files=("HTML_cleaned_raw_dataset/sg_90k_part1_html_cleaned.json",
                           "HTML_cleaned_raw_dataset/sg_90k_part2_html_cleaned.json"), split_long=True,
           options={"clean": None}, prepare=sharegpt.prepare),
    # seed 000's P3 pool: 1K rows of every prompted subtask (one hub config each)
    Source("p3", "P3", "bigscience/P3", ("inputs_pretokenized", "targets_pretokenized"), adapters.p3,
           hub_parts="configs", options={"per_part": 1000, "pool_seed": 0}),
    Source("wizardlm", "WizardLM", "WizardLM/WizardLM_evol_instruct_70k", ("instruction", "output"),
           dialogues.wizardlm),
    # seed 003's Table 3: "Vicuna 1M" is LMSYS-Chat-1M (gated on the hub: accept its terms, then log in)
    Source("lmsys_chat", "LMSYS-Chat-1M (Vicuna 1M)", "lmsys/lmsys-chat-1m",
           ("conversation_id", "model", "conversation", "turn", "language", "openai_moderation", "redacted"),
           chat_logs.lmsys_chat, split_long=True,
           options={"languages": None, "drop_flagged": False, "drop_redacted": False}),
    Source("magpie", "Magpie-Pro-300K-Filtered", "Magpie-Align/Magpie-Pro-300K-Filtered", ("uuid", "conversations"),
           chat_logs.magpie),
    # your own chats in today's standard format ({messages: [{role, content}]}): no hub dataset of its own
    Source("messages", "Your own chats (messages)", None, ("messages",), messages.messages),
]}

# Preference pairs (DPO / SimPO), apart from SOURCES: those are SFT datasets, each a task of its own and one of
# `all_builtin`'s, and SFT on a pair would train the rejected answer too. `load_conversations` reads them alike (hub,
# local files, bad rows). `preference`: UltraFeedback binarized (`train_prefs`) from the hub; through data_files, your
# own rows in its schema, open-instruct's preference mixtures' or TRL's conversational preference format (one reader).
PREFERENCE_SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("preference", "Preference pairs (UltraFeedback binarized)", "HuggingFaceH4/ultrafeedback_binarized",
           ("prompt", "chosen", "rejected"), preference.preference, hub_split="train_prefs"),
]}


# Verifiable prompts (RLVR: GRPO), apart from SOURCES as the preference pairs are: a prompt and its `ground_truth`
# for a verifier (`sources.verifiable`), no answer to train on. `verifiable`: allenai/RLVR-GSM from the hub; through
# data_files, your own rows in the same schema (RLVR-MATH's, RLVR-IFeval's: set `dataset` per row).
VERIFIABLE_SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("verifiable", "Verifiable prompts (RLVR-GSM)", "allenai/RLVR-GSM", ("messages", "ground_truth", "dataset"),
           verifiable.verifiable, options={"remap_verifier": None}),
]}

# SFT sets that exist as built-in rows only (`NAME_builtin`; not one of `all_builtin`'s): `arithmetic`, chats that
# answer the built-in verifiable prompts' kind of question (a toy model SFT'd on them, then RL'd on those prompts).
BUILTIN_SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("arithmetic", "Arithmetic chats (built-in rows)", None, ("messages",), messages.messages),
]}
ALL_SOURCES: dict[str, Source] = {**SOURCES, **PREFERENCE_SOURCES, **VERIFIABLE_SOURCES, **BUILTIN_SOURCES}


def get_source(name: str) -> Source:
    """The registered source called `name` (an SFT dataset, a preference one, a verifiable one or a built-in set);
    ConfigError listing the known names otherwise."""
    found = ALL_SOURCES.get(name)
    if found is None:
        raise ConfigError(f"unknown source {name!r}; known: {', '.join(sorted(ALL_SOURCES))}")
    return found

