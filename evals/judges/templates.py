"""Judge prompt templates: mixlab's own, and MT-Bench's official single-answer grading prompts.

mixlab's own (written for mixlab; not copied from any harness) come in two families:
- single-answer grading on a 1-10 scale, with and without a reference answer (math/reasoning/coding), for one
  turn or for the last turn of a conversation;
- pairwise comparison of two answers with a five-level verdict; callers run both orders to cancel position bias.

MT-Bench's official prompts (`MT_BENCH`: single-v1, single-math-v1 and their multi-turn forms, verbatim from
FastChat's fastchat/llm_judge/data/judge_prompts.jsonl, Apache-2.0; a test checks them against the data root's copy)
are what `mixlab eval --suite mt-bench` grades with, so its numbers are comparable with published MT-Bench scores:
the math forms, with the reference answers, for the math, reasoning and coding categories.

Every template has a name and a version. Both are part of the judgement cache key, so editing a template's text
must bump its version (old cached verdicts then no longer match).
"""

from __future__ import annotations

from dataclasses import dataclass

from mixlab.errors import MixlabError
from mixlab.yamlio import did_you_mean

SYSTEM = (
    "You are a meticulous, impartial evaluator of AI assistant answers. You follow the grading instructions "
    "exactly and always end with the verdict in the requested format."
)

_SINGLE_RULES = """Grade the assistant's answer below the way a demanding expert user would.
Ask, in this order: Is it correct? Does it do exactly what was asked (format, length, constraints)? Is it helpful, \
clear and appropriately detailed? Penalise factual, logical or coding errors heavily. Do not reward length, \
confidence or formatting for their own sake, and do not let answers that refuse a harmless request score above 2."""

_REFERENCE_RULE = """A reference answer written by an expert is included. Use it to check correctness: an answer \
whose final result disagrees with the reference is wrong, however well written, and scores at most 3. The \
reference may be terser than a good answer needs to be."""

_SINGLE_FORMAT = """First write a short justification (a few sentences). Then give the final grade, an integer from \
1 (useless or wrong) to 10 (flawless), written exactly in double square brackets, e.g. "Grade: [[6]]"."""

_PAIRWISE_RULES = """Two AI assistants answered the same user prompt. Decide which answer is better.
Judge correctness first, then how well each follows the instructions, then helpfulness, clarity and concision. \
Before deciding, work out briefly what a good answer must contain and check both answers against it. The order in \
which the answers appear means nothing, and a longer answer is not a better answer."""

_PAIRWISE_FORMAT = """End with exactly one verdict in double square brackets:
[[A>>B]] if answer A is much better,
[[A>B]] if answer A is better,
[[A=B]] if they are about equally good,
[[B>A]] if answer B is better,
[[B>>A]] if answer B is much better."""


@dataclass(frozen=True)
class JudgeTemplate:
    name: str
    version: int
    kind: str  # single | pairwise
    multi_turn: bool = False
    needs_reference: bool = False

    @property
    def key(self) -> str:
        return f"{self.name}@v{self.version}"

    def render(
        self,
        questions: list[str],
        answers: list[str],
        reference: list[str] | None = None,
        answers_b: list[str] | None = None,
    ) -> list[dict[str, str]]:
        """Chat messages for the judge. `questions`/`answers` are the user turns and assistant turns (one each for
        single-turn templates); `answers_b` is the second answer for pairwise templates."""
        if len(questions) != len(answers) or not questions:
            raise MixlabError(f"template {self.key}: need as many answers as questions, got {len(questions)}/{len(answers)}")
        if self.needs_reference and not reference:
            raise MixlabError(f"template {self.key} needs a reference answer")
        if self.kind == "pairwise" and answers_b is None:
            raise MixlabError(f"template {self.key} needs two answers")
        parts: list[str] = []
        if self.kind == "single":
            parts.append(_SINGLE_RULES)
            if self.multi_turn:
                parts.append("Grade ONLY the assistant's final turn, in the context of the whole conversation.")
            if reference:
                parts.append(_REFERENCE_RULE)
            parts.append(_SINGLE_FORMAT)
            parts.append(_conversation(questions, answers, "assistant"))
            if reference:
                label = "reference answer to the final question" if self.multi_turn else "reference answer"
                ref_text = reference[min(len(questions), len(reference)) - 1]  # the reference for the graded turn
                parts.append(f"<{_tag(label)}>\n{ref_text}\n</{_tag(label)}>")
        else:
            parts.append(_PAIRWISE_RULES)
            parts.append(_PAIRWISE_FORMAT)
            parts.append(f"<user_prompt>\n{questions[-1]}\n</user_prompt>")
            parts.append(f"<answer_A>\n{answers[-1]}\n</answer_A>")
            parts.append(f"<answer_B>\n{answers_b[-1]}\n</answer_B>")  # type: ignore[index]
            parts.append("Now compare the two answers and give your verdict.")
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def _tag(label: str) -> str:
    return label.replace(" ", "_")


def _conversation(questions: list[str], answers: list[str], who: str) -> str:
    if len(questions) == 1:
        return f"<user_question>\n{questions[0]}\n</user_question>\n\n<{who}_answer>\n{answers[0]}\n</{who}_answer>"
    turns = []
    for i, (q, a) in enumerate(zip(questions, answers), start=1):
        turns.append(f"<user turn={i}>\n{q}\n</user>\n<{who} turn={i}>\n{a}\n</{who}>")
    return "<conversation>\n" + "\n".join(turns) + "\n</conversation>"


TEMPLATES: dict[str, JudgeTemplate] = {
    t.name: t
    for t in (
        JudgeTemplate("single", 1, "single"),
        JudgeTemplate("single-ref", 1, "single", needs_reference=True),
        JudgeTemplate("single-multiturn", 1, "single", multi_turn=True),
        JudgeTemplate("single-ref-multiturn", 1, "single", multi_turn=True, needs_reference=True),
        JudgeTemplate("pairwise", 1, "pairwise"),
    )
}


# ---------------------------------------------------------------------------------------------------------------
# MT-Bench's official single-answer grading prompts (FastChat judge_prompts.jsonl, Apache-2.0), verbatim.

_MT_INSTRUCTION = "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question displayed below. "  # noqa: E501
_MT_RATE = "After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: \"[[rating]]\", for example: \"Rating: [[5]]\"."  # noqa: E501
MT_BENCH_PROMPTS: dict[str, dict[str, str]] = {
    "single-v1": {
        "system_prompt": "You are a helpful assistant.",
        "prompt_template": "[Instruction]\n" + _MT_INSTRUCTION + "Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your evaluation by providing a short explanation. Be as objective as possible. " + _MT_RATE + "\n\n[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]",  # noqa: E501
    },
    "single-math-v1": {
        "system_prompt": "You are a helpful assistant.",
        "prompt_template": "[Instruction]\n" + _MT_INSTRUCTION + "Your evaluation should consider correctness and helpfulness. You will be given a reference answer and the assistant's answer. Begin your evaluation by comparing the assistant's answer with the reference answer. Identify and correct any mistakes. Be as objective as possible. " + _MT_RATE + "\n\n[Question]\n{question}\n\n[The Start of Reference Answer]\n{ref_answer_1}\n[The End of Reference Answer]\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]",  # noqa: E501
    },
    "single-v1-multi-turn": {
        "system_prompt": _MT_INSTRUCTION + "Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. You evaluation should focus on the assistant's answer to the second user question. Begin your evaluation by providing a short explanation. Be as objective as possible. " + _MT_RATE + "\n\n",  # noqa: E501
        "prompt_template": "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n### Assistant A:\n{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n<|The End of Assistant A's Conversation with User|>",  # noqa: E501
    },
    "single-math-v1-multi-turn": {
        "system_prompt": "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question. Your evaluation should consider correctness and helpfulness. You will be given a reference answer and the assistant's answer. You evaluation should focus on the assistant's answer to the second question. Begin your evaluation by comparing the assistant's answer with the reference answer. Identify and correct any mistakes. Be as objective as possible. " + _MT_RATE + "\n\n",  # noqa: E501
        "prompt_template": "<|The Start of Reference Answer|>\n\n### User:\n{question_1}\n\n### Reference answer:\n{ref_answer_1}\n\n### User:\n{question_2}\n\n### Reference answer:\n{ref_answer_2}\n\n<|The End of Reference Answer|>\n\n\n<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n### Assistant A:\n{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n<|The End of Assistant A's Conversation with User|>",  # noqa: E501
    },
}


@dataclass(frozen=True)
class MTBenchTemplate(JudgeTemplate):
    """One of MT-Bench's official single-answer prompts, filled exactly as FastChat fills it."""

    official: str = "single-v1"

    def render(self, questions, answers, reference=None, answers_b=None) -> list[dict[str, str]]:
        if len(questions) != len(answers) or not questions:
            raise MixlabError(f"template {self.key}: need as many answers as questions, got {len(questions)}/{len(answers)}")
        if self.needs_reference and not reference:
            raise MixlabError(f"template {self.key} needs a reference answer")
        prompt = MT_BENCH_PROMPTS[self.official]
        fields: dict[str, str] = {}
        if self.multi_turn:
            if len(questions) < 2:
                raise MixlabError(f"template {self.key} grades the second turn: need two turns")
            fields.update(question_1=questions[0], question_2=questions[1], answer_1=answers[0], answer_2=answers[1])
        else:
            fields.update(question=questions[0], answer=answers[0])
        if self.needs_reference:
            refs = list(reference or [])
            fields["ref_answer_1"] = refs[0]
            if self.multi_turn:
                fields["ref_answer_2"] = refs[1] if len(refs) > 1 else ""
        user = _fill(prompt["prompt_template"], fields)
        return [{"role": "system", "content": prompt["system_prompt"]}, {"role": "user", "content": user}]


def _fill(template: str, fields: dict[str, str]) -> str:
    """`str.format` without reading braces inside the answers (code answers are full of them)."""
    out = template
    for key, value in fields.items():
        out = out.replace("{" + key + "}", value)
    return out


MT_BENCH: dict[str, MTBenchTemplate] = {
    t.name: t
    for t in (
        MTBenchTemplate("mt-bench-single-v1", 1, "single", official="single-v1"),
        MTBenchTemplate("mt-bench-single-math-v1", 1, "single", needs_reference=True, official="single-math-v1"),
        MTBenchTemplate("mt-bench-single-v1-multi-turn", 1, "single", multi_turn=True, official="single-v1-multi-turn"),
        MTBenchTemplate("mt-bench-single-math-v1-multi-turn", 1, "single", multi_turn=True, needs_reference=True,
                        official="single-math-v1-multi-turn"),
    )
}
TEMPLATES.update(MT_BENCH)


def mt_bench_template(multi_turn: bool, with_reference: bool) -> MTBenchTemplate:
    """FastChat's choice: the math prompt (with references) for math/reasoning/coding, the general one otherwise."""
    name = "mt-bench-single-" + ("math-" if with_reference else "") + "v1" + ("-multi-turn" if multi_turn else "")
    return MT_BENCH[name]


def get_template(name: str) -> JudgeTemplate:
    if name not in TEMPLATES:
        hint = did_you_mean(name, list(TEMPLATES))
        raise MixlabError(f"unknown judge template {name!r}{hint}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def single_template(multi_turn: bool, with_reference: bool) -> JudgeTemplate:
    name = "single" + ("-ref" if with_reference else "") + ("-multiturn" if multi_turn else "")
    return TEMPLATES[name]
