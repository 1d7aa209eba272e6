"""`template: model`: the model's own chat template, against transformers' `apply_chat_template`.

Seven real template strings (Llama-3, Qwen2.5, Qwen3, Gemma-2, Gemma-3, Phi-3, Mistral;
`tests/assets/chat_templates.json`, with their special tokens) over tokenizers trained here with the `tokenizers`
library. The references are transformers'
own: the ids of `apply_chat_template(tokenize=True)`; the mask of `return_assistant_tokens_mask=True` for the
templates with `{% generation %}` blocks; and, for the real templates that have none, the mask by prefix
rendering at the token level (transformers' ids of the turns before an assistant turn with the generation
prompt, and of the turns up to it, against the whole conversation's) computed here from transformers alone.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import transformers
from helpers.chat_templates import TEMPLATES, build
from helpers.pretrained_models import torch_masked_nll

from instructjax.core.errors import DataError
from instructjax.data.encoding.encode import encode_conversation, encode_conversations
from instructjax.data.encoding.tokenizer import Tokenizer
from instructjax.data.schema import Conversation

REAL = ("llama3", "qwen2.5", "gemma2", "phi3")
FAMILIES = ("llama3", "qwen2.5", "qwen3", "gemma2", "gemma3", "phi3", "mistral")  # every real template here
NO_SYSTEM = ("gemma2", "mistral")  # their templates refuse a system turn: `data.system_turn: merge` folds it
GENERATION = ("llama3_generation", "qwen2.5_generation")

CONVERSATIONS = [
    [{"role": "user", "content": "Give three tips for staying healthy."},
     {"role": "assistant", "content": "1. Eat well.\n2. Exercise.\n3. Sleep enough."}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "  What is the capital of France?  "},
     {"role": "assistant", "content": "Paris."},
     {"role": "user", "content": "And of Italy?\n"},
     {"role": "assistant", "content": " Rome, of course. "}],
    [{"role": "user", "content": "Translate 'cat' into French."},
     {"role": "assistant", "content": "chat"},
     {"role": "user", "content": "Thanks!"},
     {"role": "assistant", "content": "You're welcome.\n\nAnything else?"}],
]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, tuple[Tokenizer, object]]:
    root = tmp_path_factory.mktemp("chat_templates")
    out = {}
    for name in (*FAMILIES, *GENERATION):
        path = build(name, root / name)
        out[name] = (Tokenizer.load(path), transformers.AutoTokenizer.from_pretrained(path))
    return out


def conversations(name: str) -> list[list[dict]]:
    if name.startswith("gemma"):  # Gemma's template refuses a system turn
        return [[m for m in c if m["role"] != "system"] for c in CONVERSATIONS]
    return CONVERSATIONS


def hf_ids(hf, messages: list[dict], **kwargs) -> list[int]:
    out = hf.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    return list(out["input_ids"])


def prefix_mask(hf, messages: list[dict]) -> np.ndarray:
    """The assistant tokens by prefix rendering, in transformers' ids: from the end of the turns before an
    assistant turn with the generation prompt to where the ids of the turns up to it stop agreeing with the
    whole conversation's."""
    full = hf_ids(hf, messages)
    mask = np.zeros(len(full), np.int32)
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            before = hf_ids(hf, messages[:i], add_generation_prompt=True)
            upto = hf_ids(hf, messages[: i + 1])
            assert full[: len(before)] == before
            agree = next((k for k, (a, b) in enumerate(zip(upto, full, strict=False)) if a != b), min(len(upto), len(full)))
            mask[len(before):agree] = 1
    return mask


@pytest.mark.parametrize("name", REAL)
def test_ids_and_mask_equal_transformers_prefix_rendering(tokenizers, name):
    ours, hf = tokenizers[name]
    for messages in conversations(name):
        encoded = encode_conversation(Conversation(messages, "t", "0"), "model", ours)
        assert encoded.tokens.tolist() == hf_ids(hf, messages), name
        expected = prefix_mask(hf, messages)
        np.testing.assert_array_equal(encoded.loss_mask, expected, err_msg=name)
        assert expected.sum() > 0


# Hand-marked: what each family's template writes around a reply that the model itself generates, read off the
# templates: the end of its turn (with the newline after it where the template writes one), Qwen3's empty thinking
# block before its last reply, Phi-3's end of text after its last; Llama-3 and Gemma trim a reply, the others do not
# (but Phi-3's `<|assistant|>` takes the whitespace after it, a reply's leading spaces too: its rstrip).
TURN_END = {"llama3": "<|eot_id|>", "qwen2.5": "<|im_end|>\n", "qwen3": "<|im_end|>\n", "gemma2": "<end_of_turn>\n",
            "gemma3": "<end_of_turn>\n", "phi3": "<|end|>\n", "mistral": "</s>"}
BEFORE_LAST = {"qwen3": "<think>\n\n</think>\n\n"}
AFTER_LAST = {"phi3": "<|endoftext|>"}
TRIMS = ("llama3", "gemma2", "gemma3")


def hand_marked_mask(name: str, hf, messages: list[dict]) -> tuple[list[int], np.ndarray]:
    """transformers' ids of the conversation, and 1 on each token inside a hand-marked reply: the reply as the
    template writes it and its turn's end (`TURN_END`...), found in order in transformers' text."""
    text = hf.apply_chat_template(messages, tokenize=False)
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    spans, at = [], 0
    for k, reply in enumerate(replies):
        last = k == len(replies) - 1
        written = reply.strip() if name in TRIMS else reply.lstrip() if name == "phi3" else reply
        marked = (BEFORE_LAST.get(name, "") if last else "") + written + \
            TURN_END[name] + (AFTER_LAST.get(name, "") if last else "")
        start = text.index(marked, at)
        spans.append((start, start + len(marked)))
        at = start + len(marked)
    out = hf(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = np.zeros(len(out["input_ids"]), np.int32)
    for t, (a, b) in enumerate(out["offset_mapping"]):
        inside = any(x <= a and b <= y for x, y in spans)
        assert inside or not any(x < b and a < y for x, y in spans), (name, text[a:b])  # no token straddles
        mask[t] = inside
    return list(out["input_ids"]), mask


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_template_on_multi_turn_chats(tokenizers, name):
    """Each family's real template on single- and multi-turn chats, with a system turn (folded into the first user
    turn where the template has no system role) and without: ids = transformers' `apply_chat_template`; each reply
    and its turn's end trained, and nothing else, by hand-marked spans. Qwen3 renders its earlier replies otherwise
    once later turns follow: its multi-turn chats train as the whole conversation renders."""
    ours, hf = tokenizers[name]
    for i, messages in enumerate(CONVERSATIONS + [[m for m in c if m["role"] != "system"] for c in CONVERSATIONS]):
        conv = Conversation(messages, "t", str(i)).with_system_turn("merge" if name in NO_SYSTEM else "keep")
        encoded = encode_conversation(conv, "model", ours)
        ids, mask = hand_marked_mask(name, hf, conv.messages)
        assert encoded.tokens.tolist() == hf_ids(hf, conv.messages) == ids, (name, i)
        np.testing.assert_array_equal(encoded.loss_mask, mask, err_msg=f"{name} {i}")


@pytest.mark.parametrize("name", GENERATION)
def test_mask_equals_transformers_generation_blocks(tokenizers, name):
    ours, hf = tokenizers[name]
    convs = [Conversation(m, "t", str(i)) for i, m in enumerate(conversations(name))]
    for conv, encoded in zip(convs, encode_conversations(convs, "model", ours), strict=True):
        out = hf.apply_chat_template(conv.messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert encoded.tokens.tolist() == list(out["input_ids"])
        np.testing.assert_array_equal(encoded.loss_mask, np.asarray(out["assistant_masks"]), err_msg=name)


@pytest.mark.parametrize("name", ["qwen2.5", "phi3", "llama3_generation"])
def test_special_token_text_inside_a_message_stays_text(tokenizers, name):
    """A user who types the template's own markers gets them as text: none of the model's special ids appear
    inside the message, and the ids around it are transformers' (which would parse them)."""
    ours, hf = tokenizers[name]
    markers = "".join(t["content"] for t in TEMPLATES[name]["special_tokens"])
    messages = [{"role": "user", "content": f"Please repeat {markers} exactly."},
                {"role": "assistant", "content": "Done."}]
    encoded = encode_conversation(Conversation(messages, "t", "0"), "model", ours)
    specials = {ours.special_id(t["content"]) for t in TEMPLATES[name]["special_tokens"]}
    clean = [{"role": "user", "content": "Please repeat  exactly."}, {"role": "assistant", "content": "Done."}]
    n_specials = sum(int(i) in specials for i in encoded.tokens)
    assert n_specials == sum(int(i) in specials for i in hf_ids(hf, clean))  # only the template's own
    text = ours.decode(encoded.tokens, skip_special_tokens=False)
    assert markers in text


def test_a_template_that_refuses_a_conversation_is_one_data_error(tokenizers):
    ours, _ = tokenizers["gemma2"]
    conv = Conversation([{"role": "system", "content": "x"}, {"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "hello"}], "t", "row-7")
    with pytest.raises(DataError, match="System role not supported"):
        encode_conversation(conv, "model", ours)


def test_a_tokenizer_without_a_template_is_one_config_error():
    from instructjax.core.errors import ConfigError

    conv = Conversation([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "t", "0")
    with pytest.raises(ConfigError, match="no chat_template"):
        encode_conversation(conv, "model", Tokenizer.load())


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2", "qwen3_moe"])
def test_a_qwen_base_trains_and_exports_with_its_own_template(tmp_path, family, capfd):
    """A small Qwen2 model, and a Qwen3-MoE (4 experts, top 2), with the Qwen2.5 tokenizer and template, through the
    CLI: import, one step with `template: model`, export. The first step's loss is transformers' over the same rows
    with the assistant tokens found by prefix rendering in transformers' ids (for the MoE, its `moe/aux_loss` is
    transformers' `load_balancing_loss_func` over every real token of the rows, padding left out); the export carries the model's own template, whose `apply_chat_template` gives the ids the run trained
    on; generation stops at its `<|im_end|>`."""
    import torch
    import yaml
    from helpers.pretrained_models import ALPACA_ROWS

    from instructjax import cli
    from instructjax.eval.generate import turn_end_ids

    path = build("qwen2.5", tmp_path / "tok")
    hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    common = dict(vocab_size=len(hf_tok) + 8, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  eos_token_id=hf_tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    if family == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common)).eval()
    else:
        model = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(
            **common, head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48,
            norm_topk_prob=True)).eval()
    model.save_pretrained(tmp_path / "hf")
    hf_tok.save_pretrained(tmp_path / "hf")
    assert cli.main(["import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")]) == 0
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in ALPACA_ROWS))
    run = {"run_dir": str(tmp_path / "run"), "max_steps": 1, "log_every": 1, "seed": 0, "template": "model",
           "model": {"init_from": str(tmp_path / "ckpt"), "dtype": "float32", "attention": "xla"},
           "data": {"mixture": "rows", "seq_len": 256, "global_batch": 8, "pack": False},
           "optim": {"lr": 1e-4},
           "define": {"tasks": {"rows": {"source": "alpaca", "data_files": [str(rows)]}},
                      "mixtures": {"rows": {"mode": "epoch", "counts": {"rows": None}}}}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    assert cli.main(["train", "--config", str(tmp_path / "run.yaml")]) == 0
    total = count = 0.0
    router_logits = []  # each row's, a tuple of its layers' [tokens, experts]
    for row in ALPACA_ROWS:
        user = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
        ids, mask = hf_ids(hf_tok, messages), prefix_mask(hf_tok, messages)
        nll, n = torch_masked_nll(model, ids, mask)
        total, count = total + nll, count + n
        if family == "qwen3_moe":
            with torch.no_grad():
                router_logits.append(model(torch.tensor([ids]), output_router_logits=True).router_logits)
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(total / count, rel=1e-4)
    # the progress line's loss is metrics.jsonl's (a mixture of experts' router penalty apart, as `aux`)
    printed = re.findall(r"train: .*?\bloss[= ]([\d.]+)", capfd.readouterr().err)
    assert printed and abs(float(printed[-1]) - first["loss"]) < 6e-5, printed
    if router_logits:  # every row's tokens at once, layer by layer, as transformers' loss takes a batch's
        from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

        layers = tuple(torch.cat(per_layer) for per_layer in zip(*router_logits, strict=True))
        assert first["moe/aux_loss"] == pytest.approx(float(load_balancing_loss_func(layers, 4, 2)), rel=1e-4)
    assert cli.main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "export")]) == 0
    exported = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    assert exported.chat_template == TEMPLATES["qwen2.5"]["chat_template"]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    ours = encode_conversation(Conversation(messages, "t", "0"), "model", Tokenizer.load(str(tmp_path / "export")))
    assert ours.tokens.tolist() == hf_ids(exported, messages)
    assert turn_end_ids(exported)[-1] == exported.convert_tokens_to_ids("<|im_end|>")


def test_generation_stops_at_the_templates_end_of_turn(tmp_path):
    """A base tokenizer whose EOS is `<|endoftext|>` with ChatML (Qwen2.5's base models): generation stops at
    EOS and at `<|im_end|>`, which ends every assistant turn the model was trained on."""
    from instructjax.eval.generate import turn_end_ids

    TEMPLATES["qwen2.5_base"] = {**TEMPLATES["qwen2.5"], "eos_token": "<|endoftext|>"}
    hf = transformers.AutoTokenizer.from_pretrained(build("qwen2.5_base", tmp_path / "tok"))
    assert turn_end_ids(hf) == [hf.convert_tokens_to_ids("<|endoftext|>"), hf.convert_tokens_to_ids("<|im_end|>")]


def test_import_takes_a_chat_template_for_a_base_tokenizer_without_one(tmp_path):
    """`import --chat-template` saves the model's tokenizer with another's template (a base model's tokenizer that
    carries none): the checkpoint's tokenizer then renders `template: model` with it."""
    import torch

    from instructjax import cli
    from instructjax.convert.saved import saved_tokenizer

    spec = dict(TEMPLATES["llama3"])
    TEMPLATES["llama3_base"] = {**spec, "chat_template": ""}
    base = build("llama3_base", tmp_path / "hf")
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=transformers.AutoTokenizer.from_pretrained(base).__len__() + 8, hidden_size=32, intermediate_size=64,
        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)).save_pretrained(base)
    (tmp_path / "llama3.jinja").write_text(spec["chat_template"])
    assert cli.main(["import", "--hf", base, "--out", str(tmp_path / "ckpt"),
                     "--chat-template", str(tmp_path / "llama3.jinja")]) == 0
    tokenizer, template = saved_tokenizer(str(tmp_path / "ckpt"))
    assert template == tokenizer.chat_template == spec["chat_template"]
    assert cli.main(["import", "--hf", base, "--out", str(tmp_path / "ckpt2"), "--chat-template",
                     str(tmp_path / "missing")]) == 2


def test_system_turn_merge_and_a_refused_chat_is_a_bad_row(tmp_path, capsys):
    """Gemma-2's template refuses a system turn. Through `data stats` / `data preview` of a config: by default the
    chat stops the run with one line naming it; `--on-bad-row skip` skips and counts it (the other chat kept);
    `data.system_turn: merge` folds the system text into the first user turn (a blank line between, as
    LLaMA-Factory does), trained as transformers renders the merged chat, written out by hand here."""
    import yaml

    from instructjax.cli import main

    path = build("gemma2", tmp_path / "tok")
    hf = transformers.AutoTokenizer.from_pretrained(path)
    chats = tmp_path / "chats.jsonl"
    system_chat = {"id": "with-system", "messages": [{"role": "system", "content": "You are terse."},
                                                    {"role": "user", "content": "Capital of France?"},
                                                    {"role": "assistant", "content": "Paris."}]}
    plain_chat = {"id": "plain", "messages": [{"role": "user", "content": "Capital of Italy?"},
                                              {"role": "assistant", "content": "Rome."}]}
    chats.write_text(json.dumps(system_chat) + "\n" + json.dumps(plain_chat) + "\n")

    def config(name: str, **data) -> str:
        body = {"model": {"preset": "tiny", "dtype": "float32"}, "tokenizer": path, "template": "model",
                "data": {"mixture": name, "seq_len": 128, "global_batch": 2, **data}, "max_steps": 1,
                "define": {"tasks": {name: {"source": "messages", "data_files": [str(chats)]}}}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(body))
        return str(tmp_path / f"{name}.yaml")

    assert main(["data", "stats", "--config", config("keep")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "with-system" in err and "System role not supported" in err, err
    assert main(["data", "stats", "--config", config("skip"), "--on-bad-row", "skip"]) == 0
    out = capsys.readouterr().out
    assert "kept 1 example(s)" in out and "skipped 1 row(s): template" in out, out
    assert main(["data", "preview", "--config", config("merge", system_turn="merge"), "-n", "2", "--json"]) == 0
    shown = {r["id"]: r for r in map(json.loads, capsys.readouterr().out.strip().splitlines())}
    merged = [{"role": "user", "content": "You are terse.\n\nCapital of France?"},
              {"role": "assistant", "content": "Paris."}]
    assert shown["messages-with-system"]["tokens"] == hf_ids(hf, merged)
    assert shown["messages-plain"]["tokens"] == hf_ids(hf, plain_chat["messages"])
    trained = hf.decode([t for t, m in zip(shown["messages-with-system"]["tokens"], shown["messages-with-system"]["loss_mask"],
                                            strict=True) if m])
    assert trained == "Paris.<end_of_turn>\n"


def tiny_hf_model(name: str, tokenizer_dir: str, generation_eos: list[int]) -> None:
    """A tiny transformers model of `name`'s family saved beside its tokenizer, with a generation_config.json
    whose end ids are `generation_eos` (Phi-3's lists `<|endoftext|>`, `<|assistant|>` and `<|end|>`)."""
    import torch

    hf_tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    common = dict(vocab_size=len(hf_tok) + 8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                  eos_token_id=hf_tok.eos_token_id, bos_token_id=hf_tok.bos_token_id)
    kind = {"phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM, {"num_key_value_heads": 2, "pad_token_id": 0}),
            "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM, {"head_dim": 16}),
            "qwen2.5": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
            "llama3": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {})}[name]
    torch.manual_seed(0)
    model = kind[1](kind[0](**{**common, **kind[2]})).eval()
    model.save_pretrained(tokenizer_dir)
    transformers.GenerationConfig(eos_token_id=generation_eos, bos_token_id=hf_tok.bos_token_id).save_pretrained(
        tokenizer_dir)


@pytest.mark.parametrize("name,end", [("phi3", "<|end|>"), ("gemma2", "<end_of_turn>"), ("qwen2.5", "<|im_end|>"),
                                      ("llama3", "<|eot_id|>")])
def test_an_export_stops_where_the_model_stops(tmp_path, name, end):
    """import, then export: generation_config.json keeps every end id the imported model had and adds the
    template's end of turn, and transformers' `generate` on the export stops there (forced at the third new token,
    it returns three tokens, not the eight it may)."""
    import torch

    from instructjax import cli

    hf_dir = build(name, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    original = [hf_tok.eos_token_id] + ([hf_tok.convert_tokens_to_ids("<|assistant|>"), hf_tok.convert_tokens_to_ids(end)]
                                        if name == "phi3" else [])
    tiny_hf_model(name, hf_dir, original)
    assert cli.main(["import", "--hf", hf_dir, "--out", str(tmp_path / "ckpt")]) == 0
    assert cli.main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "export")]) == 0
    ends = transformers.GenerationConfig.from_pretrained(tmp_path / "export").eos_token_id
    ends = ends if isinstance(ends, list) else [ends]
    end_id = hf_tok.convert_tokens_to_ids(end)
    assert set(original) | {end_id} <= set(ends), ends

    class ForceAt(transformers.LogitsProcessor):
        def __init__(self, length: int):
            self.length = length

        def __call__(self, input_ids, scores):
            if input_ids.shape[1] == self.length:
                scores = torch.full_like(scores, -1e9)
                scores[:, end_id] = 0.0
            return scores

    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    prompt = hf_tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(prompt, max_new_tokens=8, do_sample=False, min_new_tokens=0,
                         logits_processor=transformers.LogitsProcessorList([ForceAt(prompt.shape[1] + 2)]))
    assert out.shape[1] == prompt.shape[1] + 3 and int(out[0, -1]) == end_id


def test_data_preview_shows_the_templates_special_tokens(tmp_path, capsys):
    """`data preview --tokenizer T --template model` (Phi-3's): the role markers and end-of-turn tokens show, and
    the trained end of each reply is inside the trained marks; the JSON text holds them too."""
    import re

    from instructjax.cli import main

    path = build("phi3", tmp_path / "tok")
    capsys.readouterr()
    assert main(["data", "preview", "alpaca_builtin", "--tokenizer", path, "--template", "model", "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "<|user|>" in out and "<|assistant|>" in out
    assert re.search(r"\[\[[^\]]*<\|end\|>[^\]]*\]\]", out), out  # the trained end-of-turn token, marked
    assert not re.search(r"\[\[[^\]]*<\|user\|>", out)  # the prompt's markers are not
    assert main(["data", "preview", "alpaca_builtin", "--tokenizer", path, "--template", "model", "-n", "1",
                 "--json"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert "<|assistant|>" in row["text"] and "<|end|>" in row["text"]


def test_a_reply_that_cannot_be_found_is_named_by_its_number_among_replies(tokenizers):
    """The second reply of a chat with a system turn is message 5: the error names it "assistant reply 2 (message
    5)". A special token said to span the whole second reply (and what follows) leaves nothing of it to train (no
    real template's special tokens reach across a reply's text, so the spans are given here)."""
    from instructjax.data.encoding import model_template as mt

    ours, _ = tokenizers["qwen2.5"]
    messages = CONVERSATIONS[1]  # system, user, assistant, user, assistant
    text, _ = mt.render_text(messages, ours)
    structure, _ = mt.render_text([{**m, "content": mt.PLACEHOLDER.format(k)} for k, m in enumerate(messages)], ours)
    contents = mt._content_spans(text, structure, [m["content"] for m in messages])
    second = text.index("<|im_start|>assistant", contents[3][1])  # the second reply's turn, after the second user's
    assert text.index(messages[4]["content"]) > second
    with pytest.raises(DataError, match=r"assistant reply 2 \(message 5\) cannot be told apart"):
        mt._turn_spans(messages, text, contents, [(second, len(text) + 1, "<|im_start|>")], ours, "conversation 'c'")
    assert len(mt._turn_spans(messages, text, contents, [], ours, "conversation 'c'")) == 2  # without it: both found


def test_system_turn_drop(tmp_path, capsys):
    """`data.system_turn: drop` trains on the chat without its system turn: ids as transformers renders the chat
    without it (Qwen2.5's template then writes its default system prompt), while `keep` renders the system text."""
    import yaml

    from instructjax.cli import main

    path = build("qwen2.5", tmp_path / "tok")
    hf = transformers.AutoTokenizer.from_pretrained(path)
    chat = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."}]
    (tmp_path / "chats.jsonl").write_text(json.dumps({"id": "c", "messages": chat}) + "\n")
    shown = {}
    for how in ("keep", "drop"):
        body = {"model": {"preset": "tiny", "dtype": "float32"}, "tokenizer": path, "template": "model",
                "data": {"mixture": how, "seq_len": 128, "global_batch": 2, "system_turn": how},
                "define": {"tasks": {how: {"source": "messages", "data_files": [str(tmp_path / "chats.jsonl")]}}}}
        (tmp_path / f"{how}.yaml").write_text(yaml.safe_dump(body))
        capsys.readouterr()
        assert main(["data", "preview", "--config", str(tmp_path / f"{how}.yaml"), "-n", "1", "--json"]) == 0
        shown[how] = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert shown["keep"]["tokens"] == hf_ids(hf, chat)
    assert shown["drop"]["tokens"] == hf_ids(hf, chat[1:]) != hf_ids(hf, chat)
    assert "You are terse." not in shown["drop"]["text"]
    trained = hf.decode([t for t, m in zip(shown["drop"]["tokens"], shown["drop"]["loss_mask"], strict=True) if m])
    assert trained == "Paris.<|im_end|>\n"


def test_data_preview_dims_special_tokens_on_a_terminal(tmp_path, capsys, monkeypatch):
    """On a terminal, `data preview` dims every special token of the template (Phi-3's role markers and end of turn)
    and colours the trained tokens green, the trained end-of-turn token green and dimmed; text is not dimmed."""
    import re
    import sys

    from instructjax.cli import main

    dim, green, reset = "\033[2m", "\033[32m", "\033[0m"
    path = build("phi3", tmp_path / "tok")
    specials = [t["content"] for t in TEMPLATES["phi3"]["special_tokens"]]
    capsys.readouterr()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # what the preview asks to know it writes to a terminal
    assert main(["data", "preview", "alpaca_builtin", "--tokenizer", path, "--template", "model", "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert f"{dim}<|user|>{reset}" in out and f"{dim}<|assistant|>" in out
    assert f"{green}{dim}<|end|>" in out  # the reply's end of turn: trained, and a special token
    assert "[[" not in out  # the terminal's marks, not the plain ones
    plain = re.sub(r"\033\[\d+m", "", out)
    for token in specials:  # every special token shown is dimmed where it shows
        assert plain.count(token) == len(re.findall(re.escape(dim) + r"[^\033]*" + re.escape(token), out)), token
    dimmed = re.findall(re.escape(dim) + r"([^\033]*)" + re.escape(reset), out)
    assert dimmed and all(any(t in piece for t in specials) for piece in dimmed)  # only special tokens are dimmed
