"""In-context learning for decoder tasks: few-shot prompts from the most similar examples.

For each query the labelled examples most similar to it (cosine over encoder embeddings) are
shown, as many as fit a context budget, before the query itself. The most similar example goes
last, right before the query, where decoder models attend most. Token counts come from the
caller's tokenizer so the budget is exact for the model that will read the prompt.

The generative pipeline that scores these prompts arrives with decoder adaptation (issue 6);
this module is the selection and formatting it will use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from adaptflow.advisor import ANSWER_TOKENS, FEW_SHOT_EXAMPLES

SHOT_TEMPLATE = "Input: {input}\nOutput: {output}\n\n"
QUERY_TEMPLATE = "Input: {input}\nOutput:"


@dataclass(frozen=True)
class Shot:
    """One worked example shown in the prompt."""

    input: str
    output: str


def select_shots(
    query_vector: Any,
    example_vectors: Any,
    examples: Sequence[Shot],
    query: str,
    count_tokens: Callable[[str], int],
    context_tokens: int,
    max_shots: int = FEW_SHOT_EXAMPLES,
    answer_tokens: int = ANSWER_TOKENS,
    instruction: str = "",
) -> list[Shot]:
    """The most similar examples that fit the context, in prompt order (most similar last).

    Args:
        query_vector: (d,) L2-normalised embedding of the query.
        example_vectors: (n, d) L2-normalised embeddings of ``examples``.
        examples: The labelled examples, aligned with ``example_vectors``.
        query: The query text (its tokens count against the budget).
        count_tokens: Tokens of a piece of text for the model that will read the prompt.
        context_tokens: The model's context length.
        max_shots: At most this many examples.
        answer_tokens: Room kept free for the answer.
        instruction: Optional instruction placed before the examples.

    Returns:
        The chosen shots; empty when not even one fits (the query alone is then the prompt).
    """
    import numpy as np

    similarity = np.asarray(example_vectors) @ np.asarray(query_vector)
    order = np.argsort(-similarity, kind="stable")
    fixed = (instruction + "\n\n" if instruction else "") + QUERY_TEMPLATE.format(input=query)
    left = context_tokens - answer_tokens - count_tokens(fixed)
    chosen: list[Shot] = []
    for i in order:
        if len(chosen) == max_shots:
            break
        cost = count_tokens(SHOT_TEMPLATE.format(**vars(examples[i])))
        if cost <= left:  # a long example is skipped; a shorter, less similar one may still fit
            chosen.append(examples[i])
            left -= cost
    return list(reversed(chosen))


def build_prompt(shots: Sequence[Shot], query: str, instruction: str = "") -> str:
    """The few-shot prompt: optional instruction, the shots, then the query to complete."""
    head = instruction + "\n\n" if instruction else ""
    body = "".join(SHOT_TEMPLATE.format(input=s.input, output=s.output) for s in shots)
    return head + body + QUERY_TEMPLATE.format(input=query)
