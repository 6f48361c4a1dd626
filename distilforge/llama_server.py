"""llama-cpp-python's OpenAI server, with prompt reuse that cannot change an answer.

Why: llama-cpp-python keeps the previous request's KV cache and re-reads only the part of a new
prompt after the longest common prefix. That saves the shared instruction on every request, but
it makes the answer depend on the request *before* it: the remainder is read as one batch from
wherever the match happened to end, and a different batch split rounds differently in the last
bits. At temperature 0 greedy decoding then flips a token now and then (2 of 8 generation prompts
on the 0.5B teacher, warm server vs fresh one). A run resumed after a crash, a second replica, or
a rerun on a fresh server would write different rows from the same requests.

The fix keeps the saving and removes the dependence: a prompt is always read in fixed blocks of
`BLOCK` tokens from position 0 (the last block may be short), and a following request reuses
only whole blocks that were read that way. The state before each block is then a function of the
prompt alone, so the answer is too, whatever the server served before. The cost is at most
`BLOCK - 1` re-read tokens per request.

Run as `python -m distilforge.llama_server <llama_cpp.server arguments>`; the launcher does.
"""
from __future__ import annotations

import sys

from llama_cpp.llama import Llama

BLOCK = 32
_generate = Llama.generate


def _block_aligned_generate(self, tokens, *args, reset: bool = True, **kwargs):
    if not reset:  # a caller continuing its own state: nothing to align
        return (yield from _generate(self, tokens, *args, reset=False, **kwargs))
    tokens = list(tokens)
    n = len(tokens)
    match, limit = 0, min(self.n_tokens, n - 1)  # always read >= 1 token: fresh logits to sample
    while match < limit and self._input_ids[match] == tokens[match]:
        match += 1
    keep = min(match // BLOCK, getattr(self, "_aligned_blocks", 0)) * BLOCK
    self._aligned_blocks = 0  # invalid until this prompt's blocks are read
    if keep and self._ctx.kv_cache_seq_rm(-1, keep, -1):
        self.n_tokens = keep
    else:
        self.reset()
        keep = 0
    last = (n - 1) // BLOCK * BLOCK  # start of the final (possibly short) block
    for start in range(keep, last, BLOCK):
        self.eval(tokens[start:start + BLOCK])
    self._aligned_blocks = n // BLOCK  # blocks of this prompt now in the KV cache, read aligned
    return (yield from _generate(self, tokens[last:], *args, reset=False, **kwargs))


Llama.generate = _block_aligned_generate


def main() -> None:
    from llama_cpp.server.__main__ import main as serve

    sys.argv[0] = "llama_cpp.server"
    serve()


if __name__ == "__main__":
    main()
