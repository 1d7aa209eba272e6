"""Not open-instruct's: the recorder that stands in for its eval/utils.py (see ../README.md).

`RECORDER` holds what a script asked for; `ANSWERS` what the model answers: {prompt: completion text} for a
generation (or a list of texts, one per call that sends the prompt: Codex's sampling rounds), {prompt: choice
index} for a next-token prediction (missing: "" and 0)."""

RECORDER = {"load": [], "generate": [], "next_word": []}
ANSWERS = {}


def load_hf_lm_and_tokenizer(model_name_or_path, tokenizer_name_or_path=None, **kwargs):
    from transformers import AutoTokenizer

    RECORDER["load"].append(kwargs)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name_or_path or model_name_or_path, use_fast=False)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        tokenizer.pad_token_id = tokenizer.eos_token_id
    return None, tokenizer


def generate_completions(model, tokenizer, prompts, batch_size=1, stop_id_sequences=None, disable_tqdm=False,
                         **generation_kwargs):
    RECORDER["generate"].append({"prompts": list(prompts), "stop_id_sequences": stop_id_sequences,
                                 "kwargs": generation_kwargs})
    answers = [ANSWERS.get(p, "") for p in prompts]
    return [a.pop(0) if isinstance(a, list) else a for a in answers]


def get_next_word_predictions(model, tokenizer, prompts, candidate_token_ids=None, batch_size=1,
                              return_token_predictions=False, disable_tqdm=False):
    RECORDER["next_word"].append({"prompts": list(prompts), "candidate_token_ids": candidate_token_ids})
    picks = [ANSWERS.get(p, 0) for p in prompts]
    probs = [[1.0 if j == k else 0.0 for j in range(len(candidate_token_ids))] for k in picks]
    return picks, probs


def query_openai_chat_model(*args, **kwargs):
    raise AssertionError("the tests call no OpenAI model")
