"""Hypothesis strategies for message text shared by the template and encoding tests: fragments that
stress tokenizers (whitespace runs, code indentation, role markers, non-Latin scripts, emoji)."""

from hypothesis import strategies as st

FRAGMENTS = [
    "Hello", "world", "the", " ", "  ", "\n", "\n\n", "\t", "    return x", "def f():", "日本語", "café",
    "😀", "123", "4.5", ":", "###", "<|user|>", "'", '"', "{x}", "-", "*", "naïve", "Привет", "ASSISTANT:",
]  # fmt: skip
# not U+2581: SentencePiece's own space symbol, which its decoder (the tests' oracle) turns into a space
texts = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4).filter(lambda s: "</s>" not in s and "\u2581" not in s)),
    max_size=8,
).map("".join)
responses = texts.filter(lambda s: s.strip() != "")
