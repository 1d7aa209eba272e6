"""lm-evaluation-harness model "instructjax": evaluates a checkpoint (or HF directory) with the JAX model.

Tokenization, context/continuation splitting, rolling windows and the maximum length follow lm-eval's
`hf` backend (HFLM), so the two backends score the same token sequences:
`lm_eval --model instructjax --model_args pretrained=RUN_DIR[/STEP] --tasks ...` (after importing this
module, e.g. through `instructjax eval`).
"""

from __future__ import annotations

from collections import defaultdict

import lm_eval.models  # noqa: F401  (fills lm-eval's lazy registry first, so "hf" etc. stay available)
from lm_eval import utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from instructjax.eval.interface import Sampling


@register_model("instructjax")
class InstructJaxLM(TemplateLM):
    """lm-eval LM over `instructjax.eval.generate.load_generator(pretrained)` (`mesh`: axis sizes as `--mesh`)."""

    def __init__(self, pretrained: str, tokenizer: str | None = None, batch_size: int | str = 8,
                 max_length: int | None = None, max_gen_toks: int = 256, dtype: str | None = None,
                 add_bos_token: bool = True, mesh: str | None = None, **kwargs):
        super().__init__()
        from instructjax.eval.generate import load_generator
        from instructjax.eval.placement import parse_mesh

        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8  # "auto" -> a fixed size
        # the model on every device of the job, sharded by the training rules (eval/placement.py)
        self.generator, _ = load_generator(pretrained, tokenizer=tokenizer, batch_size=self.batch_size, dtype=dtype,
                                           mesh=parse_mesh(mesh))
        self.model, self.tokenizer = self.generator.model, self.generator.tokenizer
        self._max_length = int(max_length or self.model.config.max_position_embeddings)
        self.max_gen_toks = int(max_gen_toks)
        self.add_bos_token = add_bos_token

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        return self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        add = self.add_bos_token if add_special_tokens is None else add_special_tokens
        bos = self.tokenizer.bos_token
        if add_special_tokens is None and bos and string.startswith(bos):
            add = False  # the string already carries BOS (as HFLM does)
        return self.tokenizer.encode(string, add_special_tokens=add)

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        sequences, n_cont = [], []
        for _, context_enc, continuation_enc in requests:
            sequences.append((context_enc + continuation_enc)[-(self.max_length + 1):])
            n_cont.append(len(continuation_enc))
        scores = self.generator.score(sequences)
        results = []
        for (cache_key, _, _), s, n in zip(requests, scores, n_cont, strict=True):
            answer = (float(s.logprobs[-n:].sum()), bool(s.is_greedy[-n:].all()))
            results.append(answer)
            if cache_key is not None:
                self.cache_hook.add_partial("loglikelihood", cache_key, answer)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for i, (string,) in enumerate(tqdm([r.args for r in requests], disable=disable_tqdm)):
            for window in map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None,) + window)
                owners.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm=True), strict=True):
            totals[i] += logprob
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (request.args[0],), total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, request in enumerate(requests):
            groups[repr(sorted(request.args[1].items()))].append(i)
        results: list[str] = [""] * len(requests)
        for members in groups.values():
            kwargs = dict(requests[members[0]].args[1])
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            eos_text = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
            until = until + ([eos_text] if eos_text not in until else [])
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            sampling = Sampling(max_new_tokens=max_new,
                                temperature=float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0,
                                top_p=float(kwargs.get("top_p", 1.0)))
            prompts = [self.tok_encode(requests[i].args[0])[-(self.max_length - max_new):] for i in members]
            for i, text in zip(members, self.generator.generate(prompts, sampling, until=until), strict=True):
                results[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return results

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "instructjax").replace("/", "__")
