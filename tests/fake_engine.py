"""An engine without a model, for tests of the chat and the session that need no llama.cpp.

Its tokens are the UTF-8 bytes of the text (ChatML's two markers are tokens of their own), its
KV state is a small synthetic one whose values follow from the tokens (so a restore is exact and
checkable), and its replies are scripted: "You said: <the last user message>", or whatever the
test sets in `replies`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from synth import SynthStream, write_state

from kvcpu.engine import Engine, EngineConfig, ModelInfo, SamplingConfig
from kvcpu.errors import EngineError
from kvcpu.state import KVState

START, END = 256, 257
SPECIAL = {"<|im_start|>": START, "<|im_end|>": END}
N_EMBD, N_LAYER = 8, 2


class FakeEngine(Engine):
    """Scripted replies over a byte tokenizer and a synthetic KV cache."""

    def __init__(self, n_ctx: int = 2048, stop_after: int | None = None):
        info = ModelInfo(arch="fake", n_layer=N_LAYER, n_head_kv=1, head_dim=N_EMBD, n_ctx_train=n_ctx, n_vocab=258,
                         path="fake.gguf", fingerprint="fa" * 16)
        super().__init__(None, info, EngineConfig(n_ctx=n_ctx))
        self._tokens: list[int] = []
        self.replies: list[str] = []  # next replies, in order; then "You said: ..."
        self.stop_after = stop_after  # raise KeyboardInterrupt after this many reply tokens (Ctrl-C)
        self.evaluated = 0  # tokens evaluated in all: what a restore saves shows here

    # -- tokens ------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
        out, i = [], 0
        while i < len(text):
            marker = next((m for m in SPECIAL if special and text.startswith(m, i)), None)
            if marker:
                out.append(SPECIAL[marker])
                i += len(marker)
            else:
                out += list(text[i].encode())
                i += 1
        return out

    def token_bytes(self, tokens: Sequence[int]) -> bytes:
        names = {v: k.encode() for k, v in SPECIAL.items()}
        return b"".join(names[t] if t in names else bytes([t]) for t in tokens)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.token_bytes(tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return token == END

    @property
    def chat_template(self) -> str | None:
        return None  # kvcpu's ChatML

    def special_text(self, which: str) -> str:
        return ""

    @property
    def n_past(self) -> int:
        return len(self._tokens)

    @property
    def tokens(self) -> list[int]:
        return list(self._tokens)

    # -- evaluation ----------------------------------------------------------------------------

    def reset(self) -> None:
        self._tokens = []

    def eval(self, tokens: Sequence[int]):
        if self.n_past + len(tokens) > self.config.n_ctx:
            raise EngineError(f"{self.n_past} + {len(tokens)} tokens exceed n_ctx={self.config.n_ctx}")
        self._tokens += list(tokens)
        self.evaluated += len(tokens)

    def generate(self, max_tokens: int, sampling: SamplingConfig | None = None) -> Iterator[int]:
        text = self.detokenize(self._tokens)
        last = text.rsplit("<|im_start|>user\n", 1)[-1].split("<|im_end|>", 1)[0]
        reply = self.replies.pop(0) if self.replies else f"You said: {last}"
        for i, token in enumerate(self.tokenize(reply, special=False)[:max_tokens]):
            if self.stop_after is not None and i == self.stop_after:
                raise KeyboardInterrupt
            self.eval([token])
            yield token

    # -- state ---------------------------------------------------------------------------------

    def get_state(self, seq_id: int = 0) -> KVState:
        n = self.n_past
        values = np.repeat(np.asarray(self._tokens, dtype=np.float32)[:, None] / 256, N_EMBD, axis=1)
        layers = [values + layer for layer in range(N_LAYER)]
        stream = SynthStream(list(range(n)), [[0]] * n, layers, [v * -1 for v in layers])
        state = KVState.from_bytes(write_state(0, [[stream]] if n else [[None]]))
        state.tokens = np.asarray(self._tokens, dtype=np.int32)
        return state

    def set_state(self, state: KVState, seq_id: int = 0, tokens=None) -> None:
        tokens = state.tokens if tokens is None else tokens
        values = state.blocks[0].streams[0].k[0].values()[:, 0].astype(np.float32) * 256
        if not np.array_equal(np.rint(values).astype(np.int64), np.asarray(tokens)):
            raise EngineError("the state's values are not its tokens': a restore went wrong")
        self._tokens = [int(t) for t in tokens]

    def warm_up(self) -> KVState:
        self._tokens = [START]
        state = self.get_state()
        self._tokens = []
        return state

    def truncate(self, n: int) -> None:
        self._tokens = self._tokens[: max(n, 0)]

    def shift_context(self, keep: int, n_drop: int) -> None:
        self._tokens = self._tokens[:keep] + self._tokens[keep + n_drop :]

    def close(self) -> None:
        pass
