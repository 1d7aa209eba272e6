"""The `verifiable` format (RLVR): a row holds a prompt and what a verifier checks an answer to it against, the
schema of allenai's RLVR sets (allenai/RLVR-GSM, RLVR-MATH, RLVR-IFeval; Tulu 3): `messages` (the prompt: a list
of {role, content} ending on a user turn), `ground_truth` (a string) and `dataset` (the verifier's name,
`data.verifiers`; lower-cased as open-instruct looks it up).

One row -> one Conversation of the prompt turns; its meta holds `ground_truth`, `verifier` and `prompt_turns` (all
its messages: `Conversation.prompt_only`). Bad rows (a DataError naming file, row and problem): `messages` missing,
not a list of {role, content} strings, empty or not ending on a user turn; `ground_truth` missing, null or not a
string; `dataset` missing, or naming a verifier nobody registered (the known ones are named); a ground truth its
verifier can tell is not its own (`ifeval`'s: `data.verifiers.check_ground_truth`). The source option
`remap_verifier` ("old=new", open-instruct's `--remap_verifier`) sends rows of verifier `old` to `new`.
"""

from __future__ import annotations

from instructjax.core.errors import ConfigError, DataError
from instructjax.data.schema import Conversation
from instructjax.data.sources.adapters import row_id, row_meta
from instructjax.data.sources.preference import checked_turns


def _remap(remap_verifier: str | None) -> tuple[str, str] | None:
    if remap_verifier is None:
        return None
    parts = str(remap_verifier).split("=")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ConfigError(f"source 'verifiable': remap_verifier must be 'old=new', got {remap_verifier!r}")
    return parts[0].strip().lower(), parts[1].strip().lower()


def verifiable(row: dict, name: str, index: int, remap_verifier: str | None = None) -> list[Conversation]:
    """One verifiable-prompt row -> [its prompt Conversation] (see the module doc)."""
    from instructjax.data.verifiers import check_ground_truth, known_verifier, verifier_names

    prompt = checked_turns(row.get("messages"), "messages")
    if not prompt or prompt[-1]["role"] != "user":
        last = prompt[-1]["role"] if prompt else "nothing"
        raise DataError(f"'messages' must end on a user turn (the prompt), it ends on {last}", reason="role_order")
    truth = row.get("ground_truth")
    if truth is None:
        raise DataError("missing field 'ground_truth' (absent or null)", reason="missing_field")
    if not isinstance(truth, str):
        raise DataError(f"field 'ground_truth' is {type(truth).__name__}, expected str", reason="wrong_type")
    dataset = row.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        raise DataError("missing field 'dataset' (the verifier's name)", reason="missing_field")
    verifier = dataset.lower()
    remap = _remap(remap_verifier)
    if remap is not None and verifier == remap[0]:
        verifier = remap[1]
    if not known_verifier(verifier):
        raise DataError(f"'dataset' names verifier {dataset!r}, which nobody registered (known: "
                        f"{', '.join(verifier_names())})", reason="unknown_verifier")
    check_ground_truth(verifier, truth)
    meta = row_meta(row, ground_truth=truth, verifier=verifier, prompt_turns=len(prompt))
    return [Conversation(prompt, name, row_id(name, row, index), meta)]
