"""Responses for measuring IFEval checker agreement: every one of the 25 instruction types, with passing, failing,
boundary and adversarial responses (markdown tricks, unicode, abbreviations, empty parts, near-miss markers).

Deterministic: a fixed seed, no model. `cases()` yields dicts {id, kwargs, response, note}.
"""

from __future__ import annotations

import json
import random
from typing import Any, Iterator

PARAS = [
    "The river town woke slowly. Fishermen checked their nets while the bakery sent warm air into the street.",
    "Dr. Alvarez explained the results at 9 a.m. on Monday. The U.S. team had measured 3.5 times more growth.",
    "Solar panels convert light into electricity. Their efficiency depends on temperature, angle and dust.",
    "Mr. Smith went to Washington. He met Sen. Jones and Gov. Lee, e.g. at the Capitol, before noon!",
    "Why do cats purr? Nobody is entirely sure... Some say it heals bones. Others disagree.",
    "I think the plan works. However, we need more data, more time, and more coffee.",
    "The quick brown fox jumps over the lazy dog. It was not amused. Neither was the dog.",
    "A budget is a plan for money: income, expenses, savings. Keep it simple; review it monthly.",
]
WORDS = ("alpha beta gamma delta river stone cloud light garden window paper music table simple bright "
         "quiet rapid orange silver market school summer winter friend answer").split()

_rng = random.Random(20231105)


def _words(n: int, caps_every: int = 0) -> str:
    out = []
    for i in range(n):
        w = _rng.choice(WORDS)
        out.append(w.upper() if caps_every and i % caps_every == 0 else w)
    return " ".join(out)


def _text(k: int) -> str:
    return " ".join(_rng.choice(PARAS) for _ in range(k))


def _case(iid: str, kwargs: dict[str, Any], response: str, note: str = "") -> dict[str, Any]:
    return {"id": iid, "kwargs": kwargs, "response": response, "note": note}


def _keywords() -> Iterator[dict]:
    iid = "keywords:existence"
    for kws in (["river"], ["river", "bakery"], ["Alvarez"], ["quantum"], ["solar", "dust"], ["fox", "cat"]):
        for k in range(1, 4):
            yield _case(iid, {"keywords": kws}, _text(k))
    yield _case(iid, {"keywords": ["RIVER"]}, "the river", "case-insensitive")
    yield _case(iid, {"keywords": ["art"]}, "A smart start.", "substring counts")
    yield _case(iid, {"keywords": ["naïve"]}, "A NAÏVE plan.", "unicode case")
    yield _case(iid, {"keywords": ["co-op"]}, "Join the co-op today.", "hyphen")

    iid = "keywords:frequency"
    for kw in ("the", "river", "dog", "more", "data"):
        for freq in (1, 2, 3, 5):
            for rel in ("less than", "at least"):
                yield _case(iid, {"keyword": kw, "frequency": freq, "relation": rel}, _text(_rng.randint(1, 4)))
    yield _case(iid, {"keyword": " the ", "frequency": 2, "relation": "at least"}, "Theme: the other thesis.",
                "keyword padded with spaces; substrings count")

    iid = "keywords:forbidden_words"
    for fw in (["river"], ["cat", "dog"], ["however"], ["plan", "money"], ["nothing"], ["e.g"]):
        for k in range(1, 4):
            yield _case(iid, {"forbidden_words": fw}, _text(k))
    yield _case(iid, {"forbidden_words": ["cat"]}, "Concatenate the catalog.", "word boundary: not a match")
    yield _case(iid, {"forbidden_words": ["cat"]}, "A CAT!", "case-insensitive match")
    yield _case(iid, {"forbidden_words": ["don't"]}, "I don't know.", "apostrophe")

    iid = "keywords:letter_frequency"
    for letter in ("a", "e", "z", "q", "t"):
        for freq in (1, 3, 10, 30):
            for rel in ("less than", "at least"):
                yield _case(iid, {"letter": letter, "let_frequency": freq, "let_relation": rel}, _text(_rng.randint(1, 3)))
    yield _case(iid, {"letter": "A", "let_frequency": 3, "let_relation": "at least"}, "aAa", "upper-case letter kwarg")


def _language() -> Iterator[dict]:
    iid = "language:response_language"
    samples = {
        "en": "The committee reviewed the proposal carefully and decided to fund the project for another year.",
        "fr": "Le comité a examiné attentivement la proposition et a décidé de financer le projet pour une année.",
        "de": "Der Ausschuss hat den Vorschlag sorgfältig geprüft und beschlossen, das Projekt ein weiteres Jahr zu finanzieren.",
        "es": "El comité revisó cuidadosamente la propuesta y decidió financiar el proyecto durante otro año más.",
        "it": "Il comitato ha esaminato attentamente la proposta e ha deciso di finanziare il progetto per un altro anno.",
        "pt": "O comitê revisou cuidadosamente a proposta e decidiu financiar o projeto por mais um ano inteiro.",
        "ru": "Комитет внимательно рассмотрел предложение и решил финансировать проект ещё один год.",
        "hi": "समिति ने प्रस्ताव की सावधानीपूर्वक समीक्षा की और परियोजना को एक और वर्ष के लिए वित्त पोषित करने का निर्णय लिया।",
        "ko": "위원회는 제안서를 신중하게 검토하고 프로젝트에 1년 더 자금을 지원하기로 결정했습니다.",
        "ar": "راجعت اللجنة الاقتراح بعناية وقررت تمويل المشروع لمدة عام آخر.",
    }
    langs = list(samples)
    for lang in langs:
        yield _case(iid, {"language": lang}, samples[lang])
        yield _case(iid, {"language": lang}, samples[langs[(langs.index(lang) + 3) % len(langs)]])
    yield _case(iid, {"language": "en"}, "12345 678 !!!", "no letters: langdetect has no features -> followed")
    yield _case(iid, {"language": "fr"}, samples["fr"] + " " + samples["fr"], "repeated")


def _length() -> Iterator[dict]:
    iid = "length_constraints:number_sentences"
    texts = [
        _text(1), _text(2), _text(3),
        "One. Two. Three.", "Is it? Yes! Fine.", "No terminal punctuation here",
        "Dr. Smith arrived. He sat down.", "It costs $3.50 today. Tomorrow more.", "Wait... what? Really.",
        "The U.S. economy grew. Prices rose.", "e.g. this is one. And two.", "He said \"Stop.\" Then left.",
        "1. First item\n2. Second item\n3. Third item", "Line one\nLine two\nLine three.",
        "Mr. and Mrs. Jones met Prof. Xu at 5 p.m. They talked.", "Hello!!! How are you??? Good.",
        "", "   ", "A sentence.\n\nAnother paragraph sentence. And more.",
    ]
    for t in texts:
        for n, rel in ((1, "at least"), (2, "less than"), (3, "at least"), (4, "less than")):
            if t.strip():
                yield _case(iid, {"num_sentences": n, "relation": rel}, t)

    iid = "length_constraints:number_paragraphs"
    for n in (1, 2, 3, 4):
        for k in (1, 2, 3, 4):
            yield _case(iid, {"num_paragraphs": n}, " *** ".join(_text(1) for _ in range(k)))
    yield _case(iid, {"num_paragraphs": 2}, "A\n***\nB", "newlines around divider")
    yield _case(iid, {"num_paragraphs": 2}, "***\nA\n***\nB\n***", "leading and trailing divider")
    yield _case(iid, {"num_paragraphs": 3}, "A *** *** B", "empty middle paragraph fails")
    yield _case(iid, {"num_paragraphs": 2}, "A ****** B", "six stars")
    yield _case(iid, {"num_paragraphs": 1}, "Just one paragraph with **bold** text.")

    iid = "length_constraints:number_words"
    for n in (5, 20, 50, 100):
        for words in (4, 5, 19, 20, 21, 60, 99, 100, 150):
            for rel in ("less than", "at least"):
                if _rng.random() < 0.3:
                    yield _case(iid, {"num_words": n, "relation": rel}, _words(words))
    yield _case(iid, {"num_words": 3, "relation": "less than"}, "don't-stop e-mail", "hyphens and apostrophes split")
    yield _case(iid, {"num_words": 4, "relation": "at least"}, "snake_case_word and 42", "underscores are \\w")
    yield _case(iid, {"num_words": 2, "relation": "at least"}, "日本語 テキスト", "non-Latin words")

    iid = "length_constraints:nth_paragraph_first_word"
    for n_par, nth, first in ((3, 1, "the"), (3, 2, "solar"), (2, 2, "why"), (4, 4, "i"), (3, 3, "mr")):
        paras = [PARAS[0], PARAS[2], PARAS[4]]
        yield _case(iid, {"num_paragraphs": n_par, "nth_paragraph": nth, "first_word": first}, "\n\n".join(paras))
        paras2 = [PARAS[0], PARAS[2], PARAS[3], PARAS[5]]
        yield _case(iid, {"num_paragraphs": n_par, "nth_paragraph": nth, "first_word": first}, "\n\n".join(paras2))
        yield _case(iid, {"num_paragraphs": n_par, "nth_paragraph": nth, "first_word": first},
                    "\n\n".join([PARAS[4], PARAS[2], PARAS[3]]))
    yield _case(iid, {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "hello"}, "A.\n\n\"Hello, world.\"",
                "quoted first word")
    yield _case(iid, {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "hello"}, "A.\n\n\n\nHello there.",
                "empty paragraph in between")
    yield _case(iid, {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "a"}, "A.\n\nB.", "nth beyond count")
    yield _case(iid, {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "hello"}, "A.\n\n'Hello!' she said.",
                "single-quoted")
    yield _case(iid, {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "one"}, "One,two\n\nB.",
                "punctuation glued to the word")


def _content() -> Iterator[dict]:
    iid = "detectable_content:number_placeholders"
    for n in (1, 2, 3, 4):
        for resp in ("Dear [name], meet me at [place].", "No placeholders here.", "[a] [b] [c]",
                     "Nested [[x]] and [y", "Empty [] counts?", "Multi\n[line\nbreak] [ok]"):
            yield _case(iid, {"num_placeholders": n}, resp)

    iid = "detectable_content:postscript"
    for marker in ("P.S.", "P.P.S", "PS:"):
        for resp in (_text(1) + "\n\nP.S. Call me.", _text(1) + "\nP.P.S. Also this.", _text(1) + "\nps: later",
                     _text(1), _text(1) + " p. s. spaced", "P.S. at the very start", _text(1) + "\n  P.P.S second",
                     _text(1) + "\nPS: note"):
            yield _case(iid, {"postscript_marker": marker}, resp)


def _format() -> Iterator[dict]:
    iid = "detectable_format:number_bullet_lists"
    lists = ["* one\n* two\n* three", "- one\n- two", "* one\n- two\n* three\n- four", "*bold* not a bullet\n* real",
             "**bold line**\n* a\n* b", "  * indented\n  * twice", "No bullets at all.", "1. one\n2. two",
             "- a\n\n- b\n\n- c\n- d\n- e", "---\n- item", "•  unicode bullet\n• another"]
    for resp in lists:
        for n in (1, 2, 3, 4, 5):
            if _rng.random() < 0.6 or n == 2:
                yield _case(iid, {"num_bullets": n}, resp)

    iid = "detectable_format:constrained_response"
    for resp in ("My answer is yes.", "My answer is no.", "My answer is maybe.", "my answer is yes.",
                 "I think... My answer is no. Because reasons.", "My answer is yes", "Yes.", "  My answer is maybe.  ",
                 "My answer is: yes.", "MY ANSWER IS NO.", "My answer is yes.\nMy answer is no.", "The answer is yes."):
        yield _case(iid, {}, resp)

    iid = "detectable_format:number_highlighted_sections"
    highlights = ["*one* and *two*", "**bold** and *it*", "* not closed", "*a*\n*b*\n*c*", "** **", "*  *",
                  "***triple***", "*multi\nline*", "No highlights.", "*x* *y* *z* *w*", "**a****b**", "*a**b*"]
    for resp in highlights:
        for n in (1, 2, 3):
            yield _case(iid, {"num_highlights": n}, resp)

    iid = "detectable_format:multiple_sections"
    for spl in ("Section", "SECTION", "Part"):
        for resp in ("Section 1\nIntro\nSection 2\nBody", "SECTION 1 a SECTION 2 b SECTION 3 c", "Part 1: x\nPart 2: y",
                     "Section one\nSection two", "Section 1\nSection 1", "No sections.", "Section1 text Section2 more",
                     "Sections 1 and 2"):
            for n in (1, 2, 3):
                if _rng.random() < 0.4:
                    yield _case(iid, {"section_spliter": spl, "num_sections": n}, resp)

    iid = "detectable_format:json_format"
    objs = [json.dumps({"a": 1}), "```json\n{\"a\": [1, 2]}\n```", "```\n{\"b\": null}\n```", "```JSON\n[1,2]\n```",
            "{'a': 1}", "Here is JSON: {\"a\": 1}", "\"just a string\"", "42", "```json\n{\"a\": 1}", "{\"a\": 1}\n```",
            "```Json{\"x\": true}```", "{\"a\": 1,}", "  \n{\"nested\": {\"k\": [\"v\"]}}\n  ", "```json```{}```",
            "null", "NaN", "{\"a\": NaN}", "```python\n{\"a\": 1}\n```"]
    for resp in objs:
        yield _case(iid, {}, resp)

    iid = "detectable_format:title"
    for resp in ("<<My Title>>\nBody", "No title", "<< >>", "<<>>", "<<<Deep>>>", "<<a\nb>>", "Text <<Mid Title>> more",
                 "<<<>>>", "<<   spaced   >>", "< <not> >", "<<Title>> and <<Another>>", "<<\u00e9t\u00e9>>"):
        yield _case(iid, {}, resp)


def _combination() -> Iterator[dict]:
    iid = "combination:two_responses"
    for resp in ("First answer.\n******\nSecond answer.", "Same.\n******\nSame.", "Only one answer.",
                 "A\n******\nB\n******\nC", "******\nA\n******\nB", "A\n******\n\n******\nB", "A******B",
                 "A\n*****\nB", "A\n******\nB\n******", "  A  \n******\n A ", "A\n*******\nB", "A\n******\nb"):
        yield _case(iid, {}, resp)

    iid = "combination:repeat_prompt"
    prompt = "Write a haiku about the sea. Then explain it."
    for resp in (prompt + "\nWaves fold...", "  " + prompt.upper() + " ok", "Write a haiku about the sea.",
                 "Sure! " + prompt, prompt, prompt[:-1], "\n" + prompt + "\n\nAnswer", "write a HAIKU about the sea. then explain it. x"):
        yield _case(iid, {"prompt_to_repeat": prompt}, resp)


def _startend() -> Iterator[dict]:
    iid = "startend:end_checker"
    for phrase in ("Is there anything else I can help with?", "Peace.", "Any other questions?"):
        for resp in (_text(1) + " " + phrase, _text(1) + " " + phrase.lower(), _text(1) + " " + phrase + "  \n",
                     "\"" + _text(1) + " " + phrase + "\"", _text(1) + " " + phrase + "!", _text(1),
                     phrase + " " + _text(1), _text(1) + " " + phrase.rstrip("?.") ):
            yield _case(iid, {"end_phrase": phrase}, resp)

    iid = "startend:quotation"
    for resp in ('"Quoted answer."', '"', '""', ' "spaced" ', "'single'", '"unbalanced', 'unbalanced"', "“curly”",
                 '"multi\nline"', '"a" and "b"', "No quotes."):
        yield _case(iid, {}, resp)


def _case_change() -> Iterator[dict]:
    iid = "change_case:capital_word_frequency"
    for n in (2, 5, 10, 20):
        for every in (0, 2, 3, 5, 10):
            for rel in ("less than", "at least"):
                if _rng.random() < 0.4:
                    yield _case(iid, {"capital_frequency": n, "capital_relation": rel}, _words(30, every) + ".")
    for resp in ("The U.S.A. and the UK met.", "I AM HERE. OK?", "NASA's rover and the FBI's car.", "A-OK! USB-C cable.",
                 "THE END.", "x Y Z", "It's 5 PM.", "HELLO,WORLD", "CO2 and H2O", "e.g. NOT THIS", "Mr. BIG."):
        for n, rel in ((2, "at least"), (3, "less than"), (4, "at least")):
            yield _case(iid, {"capital_frequency": n, "capital_relation": rel}, resp, "tokenisation edge")

    iid = "change_case:english_capital"
    for resp in ("THIS IS ALL CAPITAL LETTERS IN ENGLISH TEXT.", "THIS IS MOSTLY Capital.", "123 456",
                 "LE COMITÉ A EXAMINÉ ATTENTIVEMENT LA PROPOSITION ET A DÉCIDÉ DE FINANCER LE PROJET.",
                 "HELLO WORLD, THE WEATHER IS NICE TODAY AND WE ARE GOING TO THE PARK.", "ÉTÉ", "A"):
        yield _case(iid, {}, resp)

    iid = "change_case:english_lowercase"
    for resp in ("this is all lowercase english text about the weather and the park.", "this has One capital.",
                 "le comité a examiné attentivement la proposition et a décidé de financer le projet.", "123 456",
                 "hello world, the weather is nice today and we are going to the park.", "ß straße", "a"):
        yield _case(iid, {}, resp)

    iid = "punctuation:no_comma"
    for resp in (_text(1), "No commas here.", "One, comma.", "Fullwidth，comma", "Arabic، comma", "A;B:C", "1,000"):
        yield _case(iid, {}, resp)


def _more() -> Iterator[dict]:
    """Second helpings for the instruction types with few natural variants, so each has 20+ cases."""
    upper = ["THE MEETING STARTS AT NOON AND EVERYONE SHOULD BRING THEIR NOTES.",
             "WE REVIEWED THE BUDGET AND FOUND SEVERAL ERRORS IN THE SPREADSHEET.", "OK", "I AGREE, MOSTLY.",
             "DAS IST EIN DEUTSCHER SATZ UND KEIN ENGLISCHER TEXT HIER.", "THIS IS FINE!\n\nSECOND PARAGRAPH.",
             "SHOUTING 123 ABOUT 456 NUMBERS.", "MIXED Case HERE.", "ÅNGSTRÖM", "THE END", "SPACES   EVERYWHERE   ",
             "P.S. ALL CAPS POSTSCRIPT.", "ПРИВЕТ МИР, ЭТО РУССКИЙ ТЕКСТ.", "E = MC^2 IS A FAMOUS EQUATION."]
    for resp in upper:
        yield _case("change_case:english_capital", {}, resp)
        yield _case("change_case:english_lowercase", {}, resp.lower())
    for resp in (_text(2), _text(3), "a,b", "no comma; semicolons only", "Lists: a and b", "“quoted, comma”", ",",
                 "Trailing comma,", "Comma\n,\nnewline", "1 000 000", "Décimal 3,14", "¸ cedilla", "﹐ small comma"):
        yield _case("punctuation:no_comma", {}, resp)
    prompts = ["What is 2+2?", "Describe (briefly) the [moon].", "List *three* colors.", "Say hi.\nThen bye."]
    for prompt in prompts:
        for resp in (prompt + " 4", prompt.upper(), prompt[:-1], "\t" + prompt, "Q: " + prompt, prompt.replace(" ", "  ")):
            yield _case("combination:repeat_prompt", {"prompt_to_repeat": prompt}, resp)
    for resp in ('"a"', '""""', '"\n"', '"  spaced inside  "', '"ends with quote" ', '""x', 'x""', '"“mixed”"',
                 '"He said "hi""', "\"\"\"triple\"\"\"", "«guillemets»"):
        yield _case("startend:quotation", {}, resp)
    for resp in ("<<A>>", "<<Title with <<nested>> >>", "<<1>>", "<<\u200b>>", "<<<<>>>>", "<< a >>\n<<>>",
                 "Title: <<Report>>", "<<unclosed", "unopened>>", "<<tab\t>>"):
        yield _case("detectable_format:title", {}, resp)
    for resp in ("My answer is yes.My answer is no.", "my answer is maybe.", "Answer: My answer is maybe.",
                 "My answer is no.\n\nExplanation follows.", "My answer is yes!", "My answer is Yes.",
                 "My  answer is yes.", "My answer is yes..", "\"My answer is no.\""):
        yield _case("detectable_format:constrained_response", {}, resp)
    for resp in ("{}", "[]", "```json\n{}\n```\nextra", "true", "```\n```", "", " ", "{\"a\": \"unterminated}",
                 "```json\n[1, 2, 3]\n```  "):
        if resp.strip():
            yield _case("detectable_format:json_format", {}, resp)
    for resp in ("A\n******\nB\n", "\n******\n", "A ****** B", "A\n******\nB\n\n******\n",
                 "Response 1: yes\n******\nResponse 2: no", "x\n******\n x", "A\n******\n******\nB",
                 "******", "A\n******\nB\n******\nB"):
        yield _case("combination:two_responses", {}, resp)


# Keywords used as regular expressions by the reference (documented differences; see test_ifeval_agreement).
REGEX_KEYWORDS = [
    ("keywords:existence", {"keywords": ["a.c"]}, "The abc song.", "'.' is a wildcard for the reference"),
    ("keywords:existence", {"keywords": ["c++"]}, "I write c++ daily.", "'+' is a quantifier for the reference"),
    ("keywords:frequency", {"keyword": "a.c", "frequency": 1, "relation": "at least"}, "abc", "wildcard"),
    ("keywords:forbidden_words", {"forbidden_words": ["b.d"]}, "A bad day.", "wildcard"),
]


def cases() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for part in (_keywords, _language, _length, _content, _format, _combination, _startend, _case_change, _more):
        out.extend(part())
    out.extend(_case(i, k, r, 'regex keyword: ' + n) for i, k, r, n in REGEX_KEYWORDS)
    return out
