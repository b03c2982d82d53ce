"""Byte-level tokens for the LRA text tasks (IMDB, AAN): one token per UTF-8 byte, written as its value.

The LRA text and retrieval tasks read characters as bytes (``ByteTextEncoder`` in the LRA code).
``fairseq-preprocess`` splits on whitespace, so each byte is written as its decimal value:
``"Hi!"`` -> ``"72 105 33"``. Sequences are cut to ``max_length`` bytes (4,000 in Mega's
``imdb-4000`` and for each AAN document).
"""


def byte_tokens(text: str, max_length: int) -> str:
    """The first ``max_length`` UTF-8 bytes of ``text`` as space-separated decimal tokens."""
    if max_length < 1:
        raise ValueError("--max-length must be >= 1, got {}".format(max_length))
    return " ".join(str(b) for b in text.encode("utf-8")[:max_length])
