"""Generation quality on text: sample a completion for each held-out prompt and measure it.

The model's completions are compared with the human completions of the same prompts:
MAUVE (distribution distance in sentence-encoder space), repetition / diversity / n-gram
entropy of the completions (whitespace words, next to the same numbers for the human text),
perplexity of the human completions, and ``<bkspc>`` usage of the sampled traces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.causal_lm import valid_vocabulary
from ..core.examples import encode_example, encode_prompt
from ..core.sampling import GenerationOutput
from ..core.traces import strip_eos, trace_statistics
from .generation import generate_batched
from .perplexity import perplexity


@dataclass
class TextEval:
    """What :func:`evaluate_text` measured; ``mauve`` is ``None`` when it was not computed."""

    n: int
    mauve: dict[str, Any] | None
    statistics: dict[str, float]
    reference_statistics: dict[str, float]
    perplexity: float | None
    bkspc_rate: float
    mean_actions: float
    finished_rate: float
    examples: list[dict[str, str]] = field(default_factory=list)
    completions: list[str] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    bkspc_id: int | None,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float | None = None,
    batch_size: int = 32,
    seed: int = 0,
    noise_prob: float = 0.0,
) -> tuple[list[str], GenerationOutput]:
    """Sample one completion per prompt (ancestral sampling by default; only the tokenizer's
    ids are actions); the texts are the visible tokens after backspaces, without ``<eos>``."""
    if not prompts:
        raise ValueError("prompts is empty: nothing to generate")
    encoded = [encode_prompt(tokenizer, prompt) for prompt in prompts]
    output = generate_batched(
        model, tokenizer, encoded, batch_size=batch_size, seed=seed, bkspc_id=bkspc_id,
        max_new_tokens=max_new_tokens, do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else 1.0, top_p=top_p, noise_prob=noise_prob,
    )  # fmt: skip
    texts = [
        tokenizer.decode(strip_eos(row, tokenizer.eos_token_id), skip_special_tokens=True)
        for row in output.sequences
    ]
    return texts, output


def evaluate_text(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    *,
    bkspc_id: int | None,
    max_new_tokens: int,
    seed: int = 0,
    temperature: float = 1.0,
    top_p: float | None = None,
    batch_size: int = 32,
    with_mauve: bool = True,
    mauve_seeds: Sequence[int] = (0, 1, 2, 3, 4),
    encoder: Any = None,
    num_examples: int = 3,
    final: Sequence[bool] | None = None,
) -> TextEval:
    """Sample completions for the prompts of ``pairs`` and compare them with the pairs'
    human completions (MAUVE, repetition, diversity, entropy), plus perplexity of the
    human completions and ``<bkspc>`` usage. ``encoder`` is reused across calls when given
    (loading it is the slow part of MAUVE).

    Perplexity scores an ``<eos>`` after a human completion only where ``final`` says the
    completion ends its text (default: none does; a window cut from the middle of a text
    has no end to score)."""
    from .text_metrics import mauve_score, text_statistics

    if not pairs:
        raise ValueError("pairs is empty: nothing to evaluate")
    prompts = [prompt for prompt, _ in pairs]
    references = [completion for _, completion in pairs]
    texts, output = sample_completions(
        model, tokenizer, prompts, bkspc_id=bkspc_id, max_new_tokens=max_new_tokens,
        temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed,
    )  # fmt: skip
    ends = [False] * len(pairs) if final is None else list(final)
    if len(ends) != len(pairs):
        raise ValueError(f"{len(pairs)} pairs but {len(ends)} final flags")
    examples = [
        encode_example(tokenizer, prompt, completion, final=end)
        for (prompt, completion), end in zip(pairs, ends, strict=True)
    ]
    ppl = perplexity(
        model, [e.prompt for e in examples], [e.completion for e in examples],
        batch_size=batch_size, vocab_size=valid_vocabulary(model, tokenizer),
    )  # fmt: skip
    mauve = None
    if with_mauve:
        mauve = mauve_score(references, texts, encoder=encoder, seeds=tuple(mauve_seeds)).as_dict()
    stats = trace_statistics(output.actions, output.forced, bkspc_id)
    return TextEval(
        n=len(pairs),
        mauve=mauve,
        statistics=text_statistics(texts),
        reference_statistics=text_statistics(references),
        perplexity=ppl,
        bkspc_rate=stats.bkspc_rate,
        mean_actions=stats.mean_actions,
        finished_rate=sum(output.finished) / len(output.finished),
        examples=[
            {"prompt": p, "reference": r, "completion": t}
            for p, r, t in list(zip(prompts, references, texts, strict=True))[:num_examples]
        ],
        completions=texts,
    )
