"""llama.cpp's GBNF grammars over a model's vocabulary, as a kvcpu.sampling Constraint, and JSON
schemas made into GBNF by llama-cpp-python's converter (the one llama.cpp's server uses too).

A grammar that has matched all it can allows only end-of-generation tokens, so constrained
output ends by itself when it is complete.
"""

from __future__ import annotations

import ctypes
import json

import numpy as np

from ..errors import KVCPUError

# llama_token_data as NumPy sees it: int32 id, float logit, float p (12 bytes, no padding)
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class Grammar:
    """A GBNF grammar in force over one engine's vocabulary; free it with close()."""

    def __init__(self, engine, gbnf: str, root: str = "root"):
        import llama_cpp

        self._lib = llama_cpp
        vocab = llama_cpp.llama_model_get_vocab(engine.llama.model)
        self._sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), root.encode())
        if not self._sampler:
            raise KVCPUError("llama.cpp could not parse the grammar (its log says where)")
        self._one = np.zeros(1, dtype=TOKEN_DATA)
        self._all = np.zeros(engine.info.n_vocab, dtype=TOKEN_DATA)
        self._all["id"] = np.arange(engine.info.n_vocab, dtype=np.int32)

    def _apply(self, data: np.ndarray) -> None:
        array = self._lib.llama_token_data_array(
            data=data.ctypes.data_as(self._lib.llama_token_data_p), size=len(data), selected=-1, sorted=False)
        self._lib.llama_sampler_apply(self._sampler, ctypes.byref(array))

    def allows(self, token: int) -> bool:
        """Whether the grammar lets `token` come next."""
        self._one[0] = (token, 0.0, 0.0)
        self._apply(self._one)
        return bool(np.isfinite(self._one["logit"][0]))

    def mask(self, logits: np.ndarray) -> None:
        """Set the (n_vocab,) logits of the tokens the grammar refuses to -inf, in place."""
        self._all["logit"] = logits
        self._apply(self._all)
        logits[~np.isfinite(self._all["logit"])] = -np.inf

    def accept(self, token: int) -> None:
        """Advance the grammar past a chosen token."""
        self._lib.llama_sampler_accept(self._sampler, token)

    def close(self) -> None:
        if self._sampler:
            self._lib.llama_sampler_free(self._sampler)
            self._sampler = None

    def __del__(self):
        self.close()


def schema_gbnf(schema: dict, prefix: str = "", suffix: str = "", repeat_sep: str | None = None) -> str:
    """GBNF for text that is `prefix`, a JSON value valid under `schema`, then `suffix`; with
    `repeat_sep`, one or more such pieces separated by it. Raises KVCPUError for a schema the
    converter cannot take."""
    from llama_cpp.llama_grammar import SchemaConverter

    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    try:
        resolved = converter.resolve_refs(json.loads(json.dumps(schema)), "schema")
        value = converter.visit(resolved, "payload")
    except (ValueError, KeyError, TypeError, AssertionError, NotImplementedError, RecursionError) as exc:
        raise KVCPUError(f"this JSON schema cannot be made into a grammar: {exc!r}") from None
    piece = " ".join(part for part in (_literal(prefix), value, _literal(suffix)) if part)
    if repeat_sep is None:
        converter._add_rule("root", piece)
    else:
        converter._add_rule("piece", piece)
        converter._add_rule("root", f"piece ({_literal(repeat_sep)} piece)*")
    return _canonical(converter.format_grammar())


def _canonical(gbnf: str) -> str:
    """The converter's grammar, made to write JSON as json.dumps does (", " and ": ", no other
    whitespace) and to refuse raw control characters in strings, as JSON does: the text a chat
    template renders from the parsed value is then the text the model wrote, token for token."""
    gbnf = gbnf.replace('space ":" space', '": "').replace('"," space', '", "')
    gbnf = gbnf.replace('space ::= " "?', 'space ::= ""')
    return gbnf.replace('char ::= [^"\\\\]', 'char ::= [^"\\\\\\x7F\\x00-\\x1F]')


def _literal(text: str) -> str:
    return json.dumps(text) if text else ""
