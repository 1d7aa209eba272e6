# Derived from open-instruct (https://github.com/allenai/open-instruct), Copyright 2024 AllenAI, Apache-2.0.
# Modified for instructjax. See NOTICE.

"""TydiQA as open-instruct's eval/tydiqa/run_eval.py (e44fcf5) with --n_shot 1 --max_num_examples_per_lang 100
--max_context_length 512: the gold-passage dev questions, 100 per language drawn by one `random.seed(42)` generator
language after language, then one training exemplar per language from the same generator; passages cut to their
first 512 tokens (the tokenizer's `encode`, BOS included where it adds one, then `decode`); the language's own
instruction and Passage/Question/Answer words; closed book (--no_context): the question alone; greedy generation up
to the first newline or 50 tokens; SQuAD v1.1 F1 and exact match per language, and their mean over languages."""

from __future__ import annotations

import random
from collections.abc import Sequence

import instructjax.eval.tulu.files as files
from instructjax.core.errors import ConfigError
from instructjax.eval.tulu.metrics import squad
from instructjax.eval.tulu.request import Request, Turn, format_prompt

PER_LANGUAGE = 100
SEED = 42
MAX_CONTEXT_TOKENS = 512
MAX_NEW_TOKENS = 50

# language: (instruction, passage, question, answer) with the passage; the script's own words
WITH_PASSAGE = {
    "english": ("Answer the following question based on the information in the given passage.", "Passage:",
                "Question:", "Answer:"),
    "arabic": ("أجب على السؤال التالي بناءً على المعلومات في المقطع المعطى.", "المقطع:", "السؤال:", "الإجابة:"),
    "bengali": ("প্রদত্ত অধ্যায়ের তথ্যের উপর ভিত্তি করে নিম্নলিখিত প্রশ্নের উত্তর দিন।", "অধ্যায়:", "প্রশ্ন:", "উত্তর:"),
    "finnish": ("Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.", "Kappale:", "Kysymys:",
                "Vastaus:"),
    "indonesian": ("Jawab pertanyaan berikut berdasarkan informasi di bagian yang diberikan.", "Bagian:",
                   "Pertanyaan:", "Jawaban:"),
    "korean": ("주어진 문단의 정보에 기반하여 다음 질문에 답하십시오.", "문단:", "질문:", "답변:"),
    "russian": ("Ответьте на следующий вопрос на основе информации в данном отрывке.", "Отрывок:", "Вопрос:",
                "Ответ:"),
    "swahili": ("Jibu swali lifuatalo kulingana na habari kwenye kifungu kilichotolewa.", "Kifungu:", "Swali:",
                "Jibu:"),
    "telugu": ("ఇచ్చిన పేరాలోని సమాచారం ఆధారంగా కింది ప్రశ్నకు సమాధానం ఇవ్వండి.", "పేరా:", "ప్రశ్న:", "సమాధానం:"),
}
# language: (instruction, question, answer) without it
CLOSED_BOOK = {
    "english": ("Answer the following question.", "Question:", "Answer:"),
    "arabic": ("أجب على السؤال التالي.", "السؤال:", "الإجابة:"),
    "bengali": ("নিম্নলিখিত প্রশ্নের উত্তর দিন।", "প্রশ্ন:", "উত্তর:"),
    "finnish": ("Vastaa seuraavaan kysymykseen.", "Kysymys:", "Vastaus:"),
    "indonesian": ("Jawab pertanyaan berikut.", "Pertanyaan:", "Jawaban:"),
    "korean": ("다음 질문에 답하십시오.", "질문:", "답변:"),
    "russian": ("Ответьте на следующий вопрос.", "Вопрос:", "Ответ:"),
    "swahili": ("Jibu swali lifuatalo.", "Swali:", "Jibu:"),
    "telugu": ("క్రింది ప్రశ్నకు సమాధానం ఇవ్వండి.", "ప్రశ్న:", "సమాధానం:"),
}


def _questions(path: str) -> list[dict]:
    out = []
    for article in files.read_json(path)["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                out.append({"id": qa["id"], "lang": qa["id"].split("-")[0], "context": paragraph["context"],
                            "question": qa["question"], "answers": qa["answers"]})
    return out


def _split(data_dir: str, split: str) -> list[dict]:
    """TydiQA GoldP's `split` (dev, train): the data_dir's file, else the hub's gold passage task (its answers a
    {text, answer_start} of lists, turned into the file's list of answers)."""
    if files.local(data_dir, "tydiqa"):
        return _questions(files.need(data_dir, "tydiqa", f"tydiqa-goldp-v1.1-{split}.json"))
    rows = files.hub_rows("tydiqa", {"dev": "validation", "train": "train"}[split], data_dir)
    return [{"id": r["id"], "lang": r["id"].split("-")[0], "context": r["context"], "question": r["question"],
             "answers": [{"text": t, "answer_start": a} for t, a in zip(r["answers"]["text"],
                                                                         r["answers"]["answer_start"], strict=True)]}
            for r in rows]


def _cut(text: str, hf_tokenizer) -> str:
    ids = hf_tokenizer.encode(text)
    return hf_tokenizer.decode(ids[:MAX_CONTEXT_TOKENS]) if len(ids) > MAX_CONTEXT_TOKENS else text


def questions(data_dir: str, hf_tokenizer, *, per_language: int | None = PER_LANGUAGE,
              shots: int = 1) -> tuple[list[dict], dict[str, list[dict]]]:
    """(the questions evaluated, in the script's order; {language: its exemplars}), passages cut."""
    dev = _split(data_dir, "dev")
    languages = sorted({q["lang"] for q in dev})
    unknown = [lang for lang in languages if lang not in WITH_PASSAGE]
    if unknown:
        raise ConfigError(f"Tulu suite: TydiQA language {unknown[0]!r} has no prompt words (the script knows "
                                f"{', '.join(WITH_PASSAGE)})")
    rng = random.Random(SEED)
    chosen = []
    for lang in languages:
        mine = [q for q in dev if q["lang"] == lang]
        chosen += rng.sample(mine, per_language) if per_language and len(mine) > per_language else mine
    exemplars: dict[str, list[dict]] = {lang: [] for lang in languages}
    if shots > 0:
        for q in _split(data_dir, "train"):
            if q["lang"] in exemplars:
                exemplars[q["lang"]].append(q)
        for lang in languages:
            exemplars[lang] = rng.sample(exemplars[lang], shots)
    for q in chosen + [e for lang in languages for e in exemplars[lang]]:
        q["context"] = _cut(q["context"], hf_tokenizer)
    return chosen, exemplars


def requests(data_dir: str, hf_tokenizer, chat_format: str, *, passage: bool, protocol: str,
             per_language: int | None = PER_LANGUAGE, shots: int = 1) -> list[Request]:
    chosen, exemplars = questions(data_dir, hf_tokenizer, per_language=per_language, shots=shots)
    out = []
    for q in chosen:
        if passage:
            instruction, p_word, q_word, a_word = WITH_PASSAGE[q["lang"]]
        else:
            (instruction, q_word, a_word), p_word = CLOSED_BOOK[q["lang"]], ""
        prompt = instruction + "\n\n"
        if shots > 0:
            demos = [(p_word + " " + e["context"] + "\n" if passage else "") + q_word + " " + e["question"] + "\n"
                     + a_word + " " + e["answers"][0]["text"] for e in exemplars[q["lang"]]]
            prompt += "\n\n".join(demos) + "\n\n"
        if passage:
            prompt += p_word + " " + q["context"] + "\n"
        prompt += q_word + " " + q["question"] + "\n"
        turn = Turn(user=prompt.strip(), reply_start=a_word, raw=prompt + a_word)
        out.append(Request(protocol, q["id"], format_prompt(turn, chat_format, hf_tokenizer), stop=("\n",),
                           max_new_tokens=MAX_NEW_TOKENS, target=[a["text"] for a in q["answers"]], group=q["lang"]))
    return out


def score(reqs: Sequence[Request], responses: Sequence[str]) -> dict:
    """SQuAD F1 and exact match (0-100) per language and their mean over languages."""
    by_language: dict[str, tuple[list[str], list[list[str]]]] = {}
    for r, text in zip(reqs, responses, strict=True):
        predicted, answers = by_language.setdefault(r.group, ([], []))
        predicted.append(text.strip())
        answers.append(r.target)
    languages = {lang: squad(p, a) for lang, (p, a) in by_language.items()}
    mean = {m: sum(s[m] for s in languages.values()) / len(languages) if languages else float("nan")
            for m in ("f1", "exact_match")}
    return {**mean, "n": len(reqs), "languages": languages}
