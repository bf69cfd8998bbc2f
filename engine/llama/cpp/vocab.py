"""llama.cpp's vocabulary: tokenizing and detokenizing. Read-only after the model loads, so the async
side tokenizes prompts in worker threads while the decode thread runs (llama-server does the same)."""

from __future__ import annotations

import ctypes

import llama_cpp


class LlamaVocab:
    def __init__(self, model: llama_cpp.llama_model_p) -> None:
        self._model = model
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_tokens = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.pointer = self._vocab  # for llguidance's token table (engine/llama/cpp/constraints.py)
        # every end-of-generation token (EOS, EOT, <|im_end|>, ...): ends a sequence; ignore_eos bans them
        self.eog_tokens = frozenset(t for t in range(self.n_tokens) if llama_cpp.llama_vocab_is_eog(self._vocab, t))
        # token → bytes, filled lazily; a dict assignment is atomic under the GIL, and a racing fill
        # writes the same value.
        self._pieces: dict[int, bytes] = {}

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        while True:
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_special, parse_special)
            if n >= 0:
                return list(buf[:n])
            capacity = -n

    def token_bytes(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._piece(token, special=False)
            self._pieces[token] = piece
        return piece

    def token_text(self, token: int) -> str:
        """A special token's own text (e.g. '<|im_start|>'), for chat templates."""
        return self._piece(token, special=True).decode("utf-8", "replace")

    def _piece(self, token: int, *, special: bool) -> bytes:
        size = 32
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, size, 0, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def is_eog(self, token: int) -> bool:
        return token in self.eog_tokens

    @property
    def bos_token(self) -> int:
        return llama_cpp.llama_vocab_bos(self._vocab)

    @property
    def eos_token(self) -> int:
        return llama_cpp.llama_vocab_eos(self._vocab)

    @property
    def adds_bos(self) -> bool:
        return bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))

    def chat_template(self) -> str | None:
        raw = llama_cpp.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8", "replace") if raw else None
