"""Tests of text generation metrics: n-gram statistics, the sentence encoder and MAUVE."""

from __future__ import annotations

import math
import random
import string

import numpy as np
import pytest

from sequencematch.evaluation.text_metrics import (
    EMBEDDING_DIM,
    MauveResult,
    SentenceEncoder,
    diversity,
    mauve_score,
    minilm_path,
    ngram_entropy,
    rep_n,
    text_statistics,
    whitespace_tokens,
)

# ------------------------------------------------------------------------------- helpers

SUBJECTS = ["The old man", "A young girl", "My neighbour", "The teacher", "Our dog",
            "The farmer", "A tired doctor", "The little boy", "His sister", "The cook"]  # fmt: skip
VERBS = ["walked to", "looked at", "talked about", "painted", "cleaned", "visited",
         "remembered", "photographed", "described", "waited near"]  # fmt: skip
OBJECTS = ["the river", "a small house", "the busy market", "the garden", "an empty station",
           "the red barn", "the library", "a quiet beach", "the school", "the bakery"]  # fmt: skip
ENDINGS = ["in the morning.", "after lunch.", "before the rain started.", "with a smile.",
           "on Sunday.", "during the summer.", "late at night.", "without a word."]  # fmt: skip


def english(rng: random.Random, n: int) -> list[str]:
    """Short English sentences from one template distribution."""
    return [
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)}"
        for _ in range(n)
    ]


def gibberish(rng: random.Random, n: int) -> list[str]:
    """Strings of random letters and digits: far from English in encoder space."""
    chars = string.ascii_lowercase + string.digits

    def word() -> str:
        return "".join(rng.choice(chars) for _ in range(rng.randint(3, 9)))

    return [" ".join(word() for _ in range(rng.randint(4, 9))) for _ in range(n)]


def gaussian_clusters(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """``[n, 16]`` points from a mixture of 4 well separated Gaussians, moved by ``shift``."""
    centers = np.eye(4, 16) * 8.0  # [4, 16]
    labels = rng.integers(0, 4, size=n)  # [n]
    return centers[labels] + rng.normal(size=(n, 16)) + shift  # [n, 16]


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder(batch_size=32)


# ------------------------------------------------------------------------------- n-grams


def test_whitespace_tokens():
    assert whitespace_tokens("  a  b\nc\t") == ["a", "b", "c"]
    assert whitespace_tokens("") == []


def test_rep_n_single_text_by_hand():
    tokens = [["a", "b", "a", "b"]]
    assert rep_n(tokens, 2) == pytest.approx(1 / 3)  # bigrams ab, ba, ab: 2 unique of 3
    assert rep_n(tokens, 1) == pytest.approx(0.5)  # 2 unique of 4
    assert rep_n(tokens, 3) == pytest.approx(0.0)  # aba, bab
    assert rep_n([[1, 2, 1, 2]], 2) == pytest.approx(1 / 3)  # int tokens work alike


def test_rep_n_pools_counts_over_texts():
    # text 1: 2 unique of 3 bigrams; text 2: 2 of 2. "a b" in both texts is no repetition.
    tokens = [["a", "b", "a", "b"], ["a", "b", "c"]]
    assert rep_n(tokens, 2) == pytest.approx(1 - 4 / 5)
    # pooled, not a mean of per-text rates (that would be (1/3 + 0) / 2)
    assert rep_n(tokens, 2) != pytest.approx((1 / 3 + 0) / 2)


def test_rep_n_short_texts():
    assert rep_n([["a"], [], ["x", "x", "x"]], 2) == pytest.approx(0.5)  # only xx, xx count
    assert math.isnan(rep_n([["a"], ["b"]], 2))  # no bigram at all


def test_rep_n_drop_last_reproduces_the_shorter_loop():
    assert rep_n([["a", "b", "a", "b"]], 2, drop_last=True) == pytest.approx(0.0)  # ab, ba
    assert rep_n([["x", "x", "x", "x"]], 2, drop_last=True) == pytest.approx(0.5)  # xx, xx


def test_diversity_by_hand():
    tokens = [["a", "b", "a", "b", "a"]]
    # rep-2: ab ba ab ba -> 1 - 2/4; rep-3: aba bab aba -> 1 - 2/3; rep-4: abab baba -> 0
    assert diversity(tokens) == pytest.approx(0.5 * (2 / 3) * 1.0)
    assert diversity([["a", "b", "c", "d", "e"]]) == pytest.approx(1.0)


def test_ngram_entropy_by_hand():
    tokens = [["a", "b"], ["a", "c"]]
    # unigrams a:2 b:1 c:1 of 4 -> -(1/2 ln 1/2 + 2 * 1/4 ln 1/4) = 1.5 ln 2 nats
    assert ngram_entropy(tokens, 1) == pytest.approx(1.5 * math.log(2))
    assert ngram_entropy(tokens, 2) == pytest.approx(math.log(2))  # ab, ac
    assert ngram_entropy([["x", "x", "x"]], 1) == pytest.approx(0.0)
    assert math.isnan(ngram_entropy(tokens, 3))


@pytest.mark.parametrize("function", [rep_n, ngram_entropy])
def test_ngram_metrics_errors(function):
    with pytest.raises(ValueError, match="non-empty"):
        function([], 2)
    with pytest.raises(ValueError, match="positive integer"):
        function([["a", "b"]], 0)
    with pytest.raises(ValueError, match="positive integer"):
        function([["a", "b"]], True)
    with pytest.raises(TypeError, match="tokenize"):
        function(["a b c"], 2)  # strings, not token lists


def test_text_statistics_by_hand():
    stats = text_statistics(["a b a b", "c d"])
    assert set(stats) == {
        "rep_2", "rep_3", "rep_4", "diversity",
        "entropy_1", "entropy_2", "entropy_3", "entropy_4", "mean_length",
    }  # fmt: skip
    assert stats["rep_2"] == pytest.approx(1 - 3 / 4)  # ab ba ab | cd
    assert stats["rep_3"] == pytest.approx(0.0)
    assert stats["rep_4"] == pytest.approx(0.0)
    assert stats["diversity"] == pytest.approx(0.75)
    # unigrams a:2 b:2 c:1 d:1 of 6
    entropy_1 = -2 * (2 / 6) * math.log(2 / 6) - 2 * (1 / 6) * math.log(1 / 6)
    assert stats["entropy_1"] == pytest.approx(entropy_1)
    assert stats["entropy_4"] == pytest.approx(0.0)  # one 4-gram
    assert stats["mean_length"] == pytest.approx(3.0)


def test_text_statistics_custom_tokenizer_and_errors():
    assert text_statistics(["abab"], tokenize=list)["rep_2"] == pytest.approx(1 / 3)
    assert math.isnan(text_statistics(["one"])["rep_2"])
    with pytest.raises(ValueError, match="empty"):
        text_statistics([])
    with pytest.raises(TypeError):
        text_statistics("a b c")


# ------------------------------------------------------------------------------- encoder


def test_minilm_files_ship_with_the_package():
    path = minilm_path()
    assert (path / "model.safetensors").is_file()
    assert (path / "tokenizer.json").is_file()


def test_encoder_shape_and_norms(encoder):
    embeddings = encoder.encode(["A man is playing a guitar.", "Hello.", ""])
    assert embeddings.shape == (3, EMBEDDING_DIM)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, EMBEDDING_DIM)


def test_encoder_similar_sentences_are_closer(encoder):
    guitar, plays, market = encoder.encode(
        ["A man is playing a guitar.", "Someone plays the guitar.", "Stock prices fell sharply."]
    )
    assert guitar @ plays > 0.6
    assert guitar @ plays > guitar @ market + 0.3
    assert plays @ market < 0.3


def test_encoder_keeps_input_order_across_batches(encoder, monkeypatch):
    texts = ["short", "a much longer sentence than the others here", "mid length one", "x"]
    monkeypatch.setattr(encoder, "batch_size", 3)
    batched = encoder.encode(texts)
    single = np.concatenate([encoder.encode([text]) for text in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_encoder_refuses_a_bare_string(encoder):
    with pytest.raises(TypeError, match="one string"):
        encoder.encode("a sentence")


# ---------------------------------------------------------------------------------- MAUVE


def test_mauve_on_features_same_and_far():
    rng = np.random.default_rng(0)
    p = gaussian_clusters(rng, 200)
    same = mauve_score(p_features=p, q_features=gaussian_clusters(rng, 200), seeds=(0, 1, 2))
    far = mauve_score(p_features=p, q_features=gaussian_clusters(rng, 150, shift=20.0))
    assert same.mean > 0.9
    assert far.mean < 0.1
    assert len(same.scores) == len(same.seeds) == 3
    assert len(far.scores) == len(far.seeds) == 5
    assert same.num_buckets == 20 and far.num_buckets == 15  # "auto": min(n_p, n_q) / 10
    assert same.std == pytest.approx(np.std(same.scores, ddof=1))


def test_mauve_result_as_dict_and_single_seed():
    rng = np.random.default_rng(1)
    result = mauve_score(
        p_features=gaussian_clusters(rng, 60), q_features=gaussian_clusters(rng, 60), seeds=[7]
    )
    assert isinstance(result, MauveResult)
    assert result.std == 0.0 and result.mean == result.scores[0]
    assert result.as_dict() == {
        "mean": result.mean, "std": 0.0, "scores": [result.mean], "seeds": [7], "num_buckets": 6,
    }  # fmt: skip


def test_mauve_is_quiet(capfd):
    rng = np.random.default_rng(2)
    mauve_score(p_features=gaussian_clusters(rng, 50), q_features=gaussian_clusters(rng, 50))
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_mauve_on_texts(encoder):
    rng = random.Random(0)
    human, model, noise = english(rng, 80), english(rng, 80), gibberish(rng, 80)
    itself = mauve_score(human, human, encoder=encoder, seeds=(0, 1))
    halves = mauve_score(human, model, encoder=encoder, seeds=(0, 1, 2))
    disjoint = mauve_score(human, noise, encoder=encoder, seeds=(0, 1, 2))
    assert itself.mean == pytest.approx(1.0, abs=1e-6)
    assert halves.mean > 0.9
    assert disjoint.mean < 0.1
    assert len(halves.scores) == len(halves.seeds) == 3


def test_mauve_mixes_texts_and_features(encoder):
    rng = random.Random(1)
    human = english(rng, 40)
    result = mauve_score(human, q_features=encoder.encode(human), encoder=encoder, seeds=(0,))
    assert result.mean == pytest.approx(1.0, abs=1e-6)


def test_mauve_errors():
    rng = np.random.default_rng(3)
    p, q = gaussian_clusters(rng, 40), gaussian_clusters(rng, 40)
    with pytest.raises(ValueError, match="exactly one"):
        mauve_score(q_features=q)
    with pytest.raises(ValueError, match="exactly one"):
        mauve_score(["a"], p_features=p, q_features=q)
    with pytest.raises(ValueError, match="empty"):
        mauve_score(p_features=np.zeros((0, 16)), q_features=q)
    with pytest.raises(ValueError, match="p_texts is empty"):
        mauve_score([], q_features=q)
    with pytest.raises(ValueError, match="2-D"):
        mauve_score(p_features=p[0], q_features=q)
    with pytest.raises(ValueError, match="feature sizes differ"):
        mauve_score(p_features=p, q_features=q[:, :8])
    with pytest.raises(ValueError, match="too few texts"):
        mauve_score(p_features=p, q_features=q[:5], num_buckets=10)
    with pytest.raises(ValueError, match="'auto'"):
        mauve_score(p_features=p, q_features=q, num_buckets="many")
    with pytest.raises(ValueError, match="at least 2"):
        mauve_score(p_features=p, q_features=q, num_buckets=1)
    with pytest.raises(ValueError, match="seeds is empty"):
        mauve_score(p_features=p, q_features=q, seeds=())
    with pytest.raises(ValueError, match="NaN"):
        mauve_score(p_features=np.full((40, 16), np.nan), q_features=q)
