"""Rebuild the `mixlab-bpe` tokenizer (byte-level BPE, 1024 tokens) from a deterministic built-in corpus.

    .venv/bin/python model/tokenizers/build_mixlab_bpe.py [--out model/tokenizers/mixlab-bpe] [--check]

No network and no benchmark data (training a tokenizer on eval sets would leak them): the corpus is assembled
here from printable ASCII, numbers and arithmetic, common English words and sentence templates, Python keywords,
builtins and code idioms, instruction-following vocabulary and the chat markup. Digits are split one per token
(arithmetic generalises better when numbers are not merged into arbitrary chunks).

Vocabulary: 256 byte tokens + 760 merges = ids 0..1015, then the 8 special tokens at the end, like Kimi's
tokenizer puts them after the regular vocabulary:
    1016 [BOS]  1017 [EOS]  1018 <|im_end|> (eos)  1019 <|im_user|>  1020 <|im_assistant|>
    1021 <|im_system|>  1022 <|im_middle|>  1023 [PAD] (pad)
`--check` rebuilds into a temp folder and fails if the result differs from the committed tokenizer.json.
"""

from __future__ import annotations

import argparse
import filecmp
import itertools
import random
import sys
import tempfile
from pathlib import Path

REGULAR_VOCAB = 1016
SPECIAL_TOKENS = ["[BOS]", "[EOS]", "<|im_end|>", "<|im_user|>", "<|im_assistant|>", "<|im_system|>",
                  "<|im_middle|>", "[PAD]"]

# Kimi's chat format; assistant turns are wrapped in {% generation %} so TRL's assistant_only_loss works.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set content = message['content'] -%}"
    "{%- else -%}{%- set content = message['content'] | map(attribute='text') | join('') -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}<|im_system|>system<|im_middle|>{{ content }}<|im_end|>"
    "{%- elif message['role'] == 'user' -%}<|im_user|>user<|im_middle|>{{ content }}<|im_end|>"
    "{%- elif message['role'] == 'tool' -%}<|im_system|>tool<|im_middle|>{{ content }}<|im_end|>"
    "{%- elif message['role'] == 'assistant' -%}<|im_assistant|>assistant<|im_middle|>"
    "{% generation %}{{ content }}<|im_end|>{% endgeneration %}"
    "{%- else -%}{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_assistant|>assistant<|im_middle|>{%- endif -%}"
)

WORDS = """
the be to of and a in that have I it for not on with he as you do at this but his by from they we say her she or
an will my one all would there their what so up out if about who get which go me when make can like time no just
him know take people into year your good some could them see other than then now look only come its over think
also back after use two how our work first well way even new want because any these give day most us is are was
were been has had did does done said made number numbers answer question problem solve solution step steps total
sum difference product quotient equal equals plus minus times divided add subtract multiply divide result final
each every more less many much few half double triple percent ratio price cost costs buy sells bought sold left
remaining apples books students hours minutes days weeks money dollars cents miles meters kilograms items boxes
write function return list string integer float value values input output example examples test tests code program
python variable loop condition true false none error check sort sorted reverse count length maximum minimum
average element elements index array dictionary key keys set sets tuple character characters word words sentence
sentences paragraph paragraphs response respond answer answers format bullet bullets points point title section
sections lowercase uppercase capital letters letter comma commas quote quotes quotation json markdown highlight
highlighted exactly least most end ending start starting begin include including keyword keywords mention placeholder
please thank thanks help helpful assistant user system hello hi sure yes here there okay great happy glad sorry
explain describe summary summarize brief short long detailed simple clear reason reasoning because therefore since
so thus first second third next finally then before after while during between among under above below near far
world country city name person people friend family child children man woman school teacher student class book
story poem letter email essay article note plan list recipe idea ideas advice tip tips way ways thing things place
""".split()

PY_KEYWORDS = """False None True and as assert async await break class continue def del elif else except finally for
from global if import in is lambda nonlocal not or pass raise return try while with yield""".split()
PY_BUILTINS = """abs all any bool dict enumerate filter float int isinstance len list map max min print range reversed
round set sorted str sum tuple zip append extend insert pop remove join split strip replace lower upper startswith
endswith items keys values get format count index self __init__ __name__ __main__ math collections itertools""".split()

CODE_SNIPPETS = [
    "def {f}({a}):\n    return {a} + 1\n",
    "def {f}({a}, {b}):\n    if {a} > {b}:\n        return {a}\n    return {b}\n",
    "def {f}({a}):\n    result = []\n    for x in {a}:\n        if x % 2 == 0:\n            result.append(x)\n    return result\n",
    "def {f}({a}):\n    total = 0\n    for i in range(len({a})):\n        total += {a}[i]\n    return total\n",
    "def {f}(s):\n    return s[::-1] == s\n",
    "def {f}({a}):\n    counts = {{}}\n    for x in {a}:\n        counts[x] = counts.get(x, 0) + 1\n    return counts\n",
    "assert {f}([1, 2, 3]) == 6\n",
    "class {F}:\n    def __init__(self, {a}):\n        self.{a} = {a}\n",
    "import math\nprint(math.sqrt({n}))\n",
    "while {a} < {n}:\n    {a} = {a} * 2\n",
    "try:\n    x = int(s)\nexcept ValueError:\n    x = None\n",
    "return sorted({a}, key=lambda x: x[1], reverse=True)\n",
    "```python\n{code}```\n",
]

SENTENCES = [
    "What is {x} {op} {y}?", "{x} {op} {y} = {z}", "The answer is {z}.", "Compute {x} {op} {y}.",
    "{name} has {x} {thing}. {name} buys {y} more {thing}. How many {thing} does {name} have now?",
    "{name} had {x} {thing} and gave away {y}. So {name} has {x} - {y} = {z} {thing} left.",
    "Write a function that returns the {adj} value in a list.",
    "Answer in exactly {x} bullet points.", "Respond in all lowercase letters.", "Use at most {x} words.",
    "Wrap your entire response in double quotation marks.", "End your response with the phrase \"Is there anything else?\"",
    "Include the keywords {w1} and {w2} in your response.", "Your answer must contain a title, wrapped in << >>.",
    "Sure! Here is a short {w1} about {w2}.", "Thank you for your question. {w1} is {adj}.",
    "Let's think step by step. First, {x} {op} {y} = {z}. So the final answer is {z}.",
    "#### {z}", "\\boxed{{{z}}}", "* {w1}\n* {w2}\n* {w3}\n", "{{\"{w1}\": {x}, \"{w2}\": [{y}, {z}]}}",
]
NAMES = ["Alice", "Bob", "Carol", "Dan", "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Tom", "Sara"]
THINGS = ["apples", "books", "marbles", "cookies", "pencils", "stickers", "coins", "cards", "eggs", "toys"]
ADJ = ["largest", "smallest", "average", "first", "last", "total", "simple", "important", "useful", "good"]


def build_corpus(seed: int = 0) -> list[str]:
    """Deterministic training text (a list of documents)."""
    rng = random.Random(seed)
    docs: list[str] = []
    printable = "".join(chr(c) for c in range(32, 127))
    docs += [printable] * 4 + ["\n\t" * 8]
    docs += [" ".join(str(n) for n in range(1000))]
    docs += [" ".join(WORDS)] * 6 + [" ".join(w.capitalize() for w in WORDS)] * 2
    docs += [" ".join(PY_KEYWORDS + PY_BUILTINS)] * 6
    for role in ("system", "user", "assistant", "tool"):
        docs.append(f"{role} " * 20)
    for _ in range(3000):
        x, y = rng.randint(0, 999), rng.randint(0, 99)
        op = rng.choice(["+", "-", "*", "/"])
        z = {"+": x + y, "-": x - y, "*": x * y, "/": round(x / max(y, 1), 2)}[op]
        w1, w2, w3 = rng.sample(WORDS, 3)
        sent = rng.choice(SENTENCES).format(
            x=x, y=y, z=z, op=op, name=rng.choice(NAMES), thing=rng.choice(THINGS), adj=rng.choice(ADJ),
            w1=w1, w2=w2, w3=w3)
        docs.append(sent)
    for _ in range(1500):
        f = rng.choice(["solve", "count_items", "is_valid", "max_value", "add", "merge", "parse", "helper"])
        a, b = rng.sample(["nums", "items", "n", "x", "y", "values", "data", "words", "text", "k"], 2)
        snippet = rng.choice(CODE_SNIPPETS)
        code = rng.choice(CODE_SNIPPETS[:6]).format(f=f, F=f.title().replace("_", ""), a=a, b=b, n=rng.randint(1, 99),
                                                     code="")
        docs.append(snippet.format(f=f, F=f.title().replace("_", ""), a=a, b=b, n=rng.randint(1, 99), code=code))
    for _ in range(400):  # a few sentences in running prose
        docs.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))).capitalize() + ".")
    return docs


def build(out_dir: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=REGULAR_VOCAB, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
    )
    tok.train_from_iterator(build_corpus(), trainer=trainer)
    if tok.get_vocab_size() != REGULAR_VOCAB:
        raise SystemExit(f"BPE reached only {tok.get_vocab_size()} tokens, expected {REGULAR_VOCAB}: grow the corpus")
    tok.add_special_tokens(SPECIAL_TOKENS)
    assert tok.token_to_id("[BOS]") == REGULAR_VOCAB and tok.token_to_id("[PAD]") == REGULAR_VOCAB + 7
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="[BOS]", eos_token="<|im_end|>", pad_token="[PAD]", unk_token=None,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("[BOS]", "<|im_end|>", "[PAD]")],
        model_max_length=4096, padding_side="left", clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "mixlab-bpe")
    ap.add_argument("--check", action="store_true", help="rebuild to a temp folder and compare tokenizer.json")
    args = ap.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            build(Path(tmp))
            same = filecmp.cmp(Path(tmp) / "tokenizer.json", args.out / "tokenizer.json", shallow=False)
        print("identical" if same else "DIFFERENT")
        sys.exit(0 if same else 1)
    build(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
