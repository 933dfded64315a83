"""The demo's skills: item templates for code, db and os, the generic format tasks, and the splits.

Three miniature skills mirror the paper's (coding, database, operating system). Each is a list of
templates; a template enumerates all of its items deterministically, and every item is a question in a
small phrase language with a reference answer and what its checker needs:

- ``code``: a phrase (``add 3 then mul 2``) becomes the body of ``def f(x): return ...`` and is run
  against test inputs (``python_code`` kind);
- ``db``: a question about a table ``t(n, a, c)`` (name, age, city) becomes a SQL query, run on SQLite
  and judged by its rows (``sql`` kind);
- ``os``: an instruction about files becomes a shell command, run in a folder made from the item's
  files and judged by its output and the folder it leaves (``shell`` kind).

Half of each skill's templates are *basic*: with the recipe's ``base_templates="basic"`` the base model
is pretrained on them only and the expert of the skill learns the rest (by default the base sees every
template; see :mod:`cycleqd.demo.recipe`). Expected values of the code tests come from a
Python function written next to each answer text, not from evaluating the text.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

SKILLS: tuple[str, ...] = ("code", "db", "os")
"""The skill names, in archive order."""

#: Characters the demo's models know: every question and answer is written with these only.
ALPHABET = string.ascii_lowercase + string.digits + " ()[]*+-/%<>=!',.:_|QA"

#: ``Q:{question} A:{answer}``: the format every item is trained and asked in.
PROMPT = "Q:{question} A:"

#: The code skill's answers complete this line (the python_code task's ``answer_prefix``).
CODE_PREFIX = "def f(x): return "


@dataclass(frozen=True)
class SkillItem:
    """One item of a skill.

    Attributes:
        id: Unique within the skill (``<template>-<index>``).
        skill: ``code``, ``db``, ``os`` or ``format``.
        template: The template it comes from.
        question: The question (without the ``Q:`` format).
        answer: The reference answer (the training target).
        check: What the checker needs: ``tests`` (code), ``tables`` (db) or ``files`` (os).
    """

    id: str
    skill: str
    template: str
    question: str
    answer: str
    check: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The question in the demo's format, as the model sees it."""
        return PROMPT.format(question=self.question)


@dataclass(frozen=True)
class Template:
    """A family of items of one skill.

    Attributes:
        name: Template name, unique within its skill.
        skill: The skill.
        basic: Whether it is in the basic half (all the base sees with ``base_templates="basic"``).
        make: Enumerates its items as (question, answer, check) given a seeded generator.
    """

    name: str
    skill: str
    basic: bool
    make: Callable[[random.Random], list[tuple[str, str, dict[str, Any]]]]


# -- code ------------------------------------------------------------------------------------------
IntFn = Callable[[int], Any]

_UNARY: dict[str, tuple[str, Callable[[int], IntFn]]] = {
    "add": ("x+{n}", lambda n: lambda x: x + n),
    "sub": ("x-{n}", lambda n: lambda x: x - n),
    "mul": ("x*{n}", lambda n: lambda x: x * n),
    "mod": ("x%{n}", lambda n: lambda x: x % n),
    "div": ("x//{n}", lambda n: lambda x: x // n),
    "max": ("max(x,{n})", lambda n: lambda x: max(x, n)),
    "min": ("min(x,{n})", lambda n: lambda x: min(x, n)),
}


def _int_tests(fn: IntFn, rng: random.Random, *, around: int = 0) -> list[str]:
    # Inputs on both sides of the item's constant, so that conditions and max/min are exercised.
    xs = sorted({around - rng.randint(1, 9), around + rng.randint(1, 9), rng.randint(-20, 60), 0})
    return [f"assert f({x}) == {fn(x)!r}" for x in xs]


def _list_tests(
    fn: Callable[[list[int]], Any], rng: random.Random, *, hi: int = 9, include: int | None = None
) -> list[str]:
    lists = [[rng.randint(0, hi) for _ in range(rng.randint(4, 8))] for _ in range(3)]
    if include is not None:  # make the item's constant occur, so that counting it is tested
        lists[0][rng.randrange(len(lists[0]))] = include
    return [f"assert f({xs!r}) == {fn(list(xs))!r}" for xs in lists]


def _code_unary(ops: Sequence[str], values: range) -> Callable[[random.Random], list]:
    def make(rng: random.Random) -> list[tuple[str, str, dict[str, Any]]]:
        out = []
        for op in ops:
            text, fn = _UNARY[op]
            for n in values:
                out.append((f"{op} {n}", text.format(n=n), {"tests": _int_tests(fn(n), rng, around=n)}))
        return out

    return make


def _code_two_steps(rng: random.Random) -> list[tuple[str, str, dict[str, Any]]]:
    forms: list[tuple[str, str, Callable[[int, int], IntFn]]] = [
        ("add {n} then mul {m}", "(x+{n})*{m}", lambda n, m: lambda x: (x + n) * m),
        ("sub {n} then mul {m}", "(x-{n})*{m}", lambda n, m: lambda x: (x - n) * m),
        ("mul {n} then add {m}", "x*{n}+{m}", lambda n, m: lambda x: x * n + m),
        ("mul {n} then sub {m}", "x*{n}-{m}", lambda n, m: lambda x: x * n - m),
    ]
    out = []
    for q, a, fn in forms:
        for n in range(2, 16):
            for m in range(2, 16):
                tests = _int_tests(fn(n, m), rng, around=n)
                out.append((q.format(n=n, m=m), a.format(n=n, m=m), {"tests": tests}))
    return out


def _code_lists(rng: random.Random) -> list[tuple[str, str, dict[str, Any]]]:
    fixed: list[tuple[str, str, Callable[[list[int]], Any]]] = [
        ("sum of list", "sum(x)", sum),
        ("max of list", "max(x)", max),
        ("min of list", "min(x)", min),
        ("len of list", "len(x)", len),
        ("sorted list", "sorted(x)", sorted),
        ("reversed list", "x[::-1]", lambda xs: xs[::-1]),
    ]
    with_n: list[tuple[str, str, Callable[[int], Callable[[list[int]], Any]]]] = [
        ("first {n} of list", "x[:{n}]", lambda n: lambda xs: xs[:n]),
        ("last {n} of list", "x[-{n}:]", lambda n: lambda xs: xs[-n:]),
        ("drop {n} of list", "x[{n}:]", lambda n: lambda xs: xs[n:]),
        ("count {n} in list", "x.count({n})", lambda n: lambda xs: xs.count(n)),
        ("item {n} of list", "x[{n}]", lambda n: lambda xs: xs[n]),
        ("sum of first {n}", "sum(x[:{n}])", lambda n: lambda xs: sum(xs[:n])),
        ("sorted first {n}", "sorted(x)[:{n}]", lambda n: lambda xs: sorted(xs)[:n]),
        ("every {n}th of list", "x[::{n}]", lambda n: lambda xs: xs[::n]),
    ]
    out = [(q, a, {"tests": _list_tests(fn, rng)}) for q, a, fn in fixed]
    for q, a, make in with_n:
        top = 4 if q.startswith("item") else 10  # lists have at least 4 items
        for n in range(1 if not q.startswith("every") else 2, top):
            tests = _list_tests(make(n), rng, include=n if q.startswith("count") else None)
            out.append((q.format(n=n), a.format(n=n), {"tests": tests}))
    return out


def _code_each(rng: random.Random) -> list[tuple[str, str, dict[str, Any]]]:
    forms: list[tuple[str, str, Callable[[int], Callable[[list[int]], Any]]]] = [
        ("add {n} to each", "[v+{n} for v in x]", lambda n: lambda xs: [v + n for v in xs]),
        ("mul each by {n}", "[v*{n} for v in x]", lambda n: lambda xs: [v * n for v in xs]),
        ("keep over {n}", "[v for v in x if v>{n}]", lambda n: lambda xs: [v for v in xs if v > n]),
        ("keep under {n}", "[v for v in x if v<{n}]", lambda n: lambda xs: [v for v in xs if v < n]),
    ]
    out = []
    for q, a, make in forms:
        for n in range(1, 31):
            out.append((q.format(n=n), a.format(n=n), {"tests": _list_tests(make(n), rng, hi=30)}))
    return out


def _code_conditional(rng: random.Random) -> list[tuple[str, str, dict[str, Any]]]:
    forms: list[tuple[str, str, Callable[[int], IntFn]]] = [
        ("double if over {n}", "x*2 if x>{n} else x", lambda n: lambda x: x * 2 if x > n else x),
        ("zero if under {n}", "0 if x<{n} else x", lambda n: lambda x: 0 if x < n else x),
        ("negate if over {n}", "-x if x>{n} else x", lambda n: lambda x: -x if x > n else x),
    ]
    out = []
    for q, a, make in forms:
        for n in range(2, 41):
            out.append((q.format(n=n), a.format(n=n), {"tests": _int_tests(make(n), rng, around=n)}))
    return out


# -- db --------------------------------------------------------------------------------------------
_NAMES = [
    "ann",
    "bob",
    "cy",
    "dan",
    "eve",
    "fay",
    "gus",
    "hal",
    "ivy",
    "jo",
    "kim",
    "lea",
    "max",
    "ned",
    "oli",
    "pam",
    "quin",
    "rex",
    "sue",
    "tom",
    "uma",
    "vic",
    "wes",
    "zoe",
]
_CITIES = [
    "rome",
    "oslo",
    "lima",
    "kyiv",
    "baku",
    "doha",
    "riga",
    "bern",
    "sofia",
    "minsk",
    "quito",
    "tunis",
    "dakar",
    "hanoi",
    "cairo",
    "paris",
    "tokyo",
    "delhi",
    "seoul",
    "perth",
    "milan",
    "porto",
    "turin",
    "lyon",
    "nice",
    "malmo",
    "bonn",
    "graz",
    "split",
    "akko",
]
_AGES = range(15, 66)


def _table(rng: random.Random, *, city: str | None = None, age: int | None = None) -> dict[str, Any]:
    """A table ``t`` of 8 people, with rows in ``city`` and rows on both sides of ``age``."""
    names = rng.sample(_NAMES, 8)
    cities = [city] * 3 if city else []
    cities += [rng.choice(_CITIES) for _ in range(8 - len(cities))]
    rng.shuffle(cities)
    ages = [rng.randint(15, 70) for _ in range(8)]
    if age is not None:
        ages[0], ages[1] = age - rng.randint(1, 8), age + rng.randint(1, 8)
        rng.shuffle(ages)
    rows = [[n, a, c] for n, a, c in zip(names, ages, cities, strict=True)]
    return {"t": {"columns": ["n", "a", "c"], "types": ["text", "integer", "text"], "rows": rows}}


def _db_age(forms: Sequence[tuple[str, str]]) -> Callable[[random.Random], list]:
    def make(rng: random.Random) -> list[tuple[str, str, dict[str, Any]]]:
        out = []
        for q, a in forms:
            for n in _AGES:
                out.append((q.format(n=n), a.format(n=n), {"tables": _table(rng, age=n)}))
        return out

    return make


def _db_city(forms: Sequence[tuple[str, str]]) -> Callable[[random.Random], list]:
    def make(rng: random.Random) -> list[tuple[str, str, dict[str, Any]]]:
        out = []
        for q, a in forms:
            for c in _CITIES:
                out.append((q.format(c=c), a.format(c=c), {"tables": _table(rng, city=c)}))
        return out

    return make


def _db_city_age(rng: random.Random) -> list[tuple[str, str, dict[str, Any]]]:
    forms = [
        ("names in {c} over {n}", "select n from t where c='{c}' and a>{n}"),
        ("names in {c} under {n}", "select n from t where c='{c}' and a<{n}"),
    ]
    out = []
    for q, a in forms:
        for c in _CITIES:
            for n in _AGES:
                out.append((q.format(c=c, n=n), a.format(c=c, n=n), {"tables": _table(rng, city=c, age=n)}))
    return out


# -- os --------------------------------------------------------------------------------------------
_FILES = [
    f"{w}{e}"
    for w in ("a", "b", "c", "d", "log", "data", "notes", "todo", "out", "tmp", "src", "docs")
    for e in ("", ".txt", ".md")
]
_WORDS = ["apple", "pear", "plum", "fig", "kiwi", "lime", "date"]


def _folder(rng: random.Random, must: Sequence[str], *, avoid: Sequence[str] = ()) -> dict[str, str]:
    """Files for an os item: those in ``must``, one or two others, none of ``avoid``."""
    others = [f for f in _FILES if f not in must and f not in avoid]
    names = list(must) + rng.sample(others, rng.randint(1, 2))
    return {n: "".join(rng.choice(_WORDS) + "\n" for _ in range(rng.randint(3, 7))) for n in sorted(names)}


def _os_new(rng: random.Random) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for name in _FILES:
        out.append((f"make dir {name}", f"mkdir {name}", {"files": _folder(rng, [], avoid=[name])}))
        out.append((f"make file {name}", f"touch {name}", {"files": _folder(rng, [], avoid=[name])}))
    return out


def _os_pairs(forms: Sequence[tuple[str, str]]) -> Callable[[random.Random], list]:
    def make(rng: random.Random) -> list[tuple[str, str, dict[str, Any]]]:
        out = []
        for q, a in forms:
            for src in _FILES:
                for dst in _FILES:
                    if src != dst:
                        files = _folder(rng, [src], avoid=[dst])
                        out.append((q.format(f=src, g=dst), a.format(f=src, g=dst), {"files": files}))
        return out

    return make


def _os_lines(rng: random.Random) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for q, a in (("first {n} lines of {f}", "head -{n} {f}"), ("last {n} lines of {f}", "tail -{n} {f}")):
        for f in _FILES:
            for n in range(1, 6):
                out.append((q.format(f=f, n=n), a.format(f=f, n=n), {"files": _folder(rng, [f])}))
    return out


def _os_delete(rng: random.Random) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for f in _FILES:
        for q, a in (("delete {f}", "rm {f}"), ("show {f}", "cat {f}"), ("sort {f}", "sort {f}")):
            out.append((q.format(f=f), a.format(f=f), {"files": _folder(rng, [f])}))
    return out


def _os_count(rng: random.Random) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for f in _FILES:
        for q, a in (("count lines in {f}", "wc -l <{f}"), ("count words in {f}", "wc -w <{f}")):
            out.append((q.format(f=f), a.format(f=f), {"files": _folder(rng, [f])}))
        for w in _WORDS:
            files = _folder(rng, [f])
            files[f] += w + "\n"  # the word occurs at least once
            out.append((f"find {w} in {f}", f"grep {w} {f}", {"files": files}))
    return out


# -- the skills ------------------------------------------------------------------------------------
TEMPLATES: dict[str, list[Template]] = {
    "code": [
        Template("arith", "code", True, _code_unary(("add", "sub", "mul"), range(2, 41))),
        Template("two-steps", "code", True, _code_two_steps),
        Template("lists", "code", True, _code_lists),
        Template("other", "code", False, _code_unary(("mod", "div", "max", "min"), range(2, 31))),
        Template("each", "code", False, _code_each),
        Template("conditional", "code", False, _code_conditional),
    ],
    "db": [
        Template(
            "names-age",
            "db",
            True,
            _db_age(
                [
                    ("names over {n}", "select n from t where a>{n}"),
                    ("names under {n}", "select n from t where a<{n}"),
                ]
            ),
        ),
        Template(
            "city",
            "db",
            True,
            _db_city(
                [
                    ("names in {c}", "select n from t where c='{c}'"),
                    ("count in {c}", "select count(*) from t where c='{c}'"),
                    ("names not in {c}", "select n from t where c!='{c}'"),
                    ("count not in {c}", "select count(*) from t where c!='{c}'"),
                ]
            ),
        ),
        Template(
            "count-age",
            "db",
            True,
            _db_age(
                [
                    ("count over {n}", "select count(*) from t where a>{n}"),
                    ("count under {n}", "select count(*) from t where a<{n}"),
                ]
            ),
        ),
        Template(
            "aggregate",
            "db",
            False,
            _db_city(
                [
                    ("oldest age in {c}", "select max(a) from t where c='{c}'"),
                    ("youngest age in {c}", "select min(a) from t where c='{c}'"),
                    ("total age in {c}", "select sum(a) from t where c='{c}'"),
                ]
            ),
        ),
        Template(
            "columns",
            "db",
            False,
            _db_age(
                [
                    ("cities over {n}", "select c from t where a>{n}"),
                    ("ages over {n}", "select a from t where a>{n}"),
                    ("cities under {n}", "select c from t where a<{n}"),
                ]
            ),
        ),
        Template("city-age", "db", False, _db_city_age),
    ],
    "os": [
        Template("new", "os", True, _os_new),
        Template("copy", "os", True, _os_pairs([("copy {f} to {g}", "cp {f} {g}")])),
        Template("lines", "os", True, _os_lines),
        Template("rename", "os", False, _os_pairs([("rename {f} to {g}", "mv {f} {g}")])),
        Template("delete-show", "os", False, _os_delete),
        Template("count-find", "os", False, _os_count),
    ],
}


def enumerate_items(skill: str, *, seed: int) -> list[SkillItem]:
    """Every item of a skill, in template order (the same for the same seed).

    Args:
        skill: ``code``, ``db`` or ``os``.
        seed: Seed of the random parts (test inputs, tables, file contents).

    Returns:
        The items; questions are unique within the skill.

    Raises:
        ValueError: For an unknown skill, or templates that repeat a question (a bug in this module).
    """
    if skill not in TEMPLATES:
        raise ValueError(f"unknown skill {skill!r}; the skills are {', '.join(SKILLS)}")
    items: list[SkillItem] = []
    seen: set[str] = set()
    for template in TEMPLATES[skill]:
        rng = random.Random(f"{seed}/{skill}/{template.name}")
        for i, (question, answer, check) in enumerate(template.make(rng)):
            if question in seen:
                raise ValueError(f"skill {skill}: question {question!r} appears twice")
            seen.add(question)
            items.append(SkillItem(f"{template.name}-{i:04d}", skill, template.name, question, answer, check))
    for item in items:
        bad = set(item.question + item.answer) - set(ALPHABET)
        if bad:
            raise ValueError(f"item {item.id} uses characters outside the alphabet: {sorted(bad)}")
    return items


@dataclass(frozen=True)
class SkillSplits:
    """The disjoint splits of one skill.

    Attributes:
        skill: The skill.
        train: Items to train on.
        validation: Items that drive evolution and every grid search of the baselines.
        select: Items that choose among the few best candidates (never seen by evolution).
        test: Held-out items, only for reporting.
    """

    skill: str
    train: list[SkillItem]
    validation: list[SkillItem]
    select: list[SkillItem]
    test: list[SkillItem]

    def split(self, name: str) -> list[SkillItem]:
        """Items of a split by name (``train``, ``validation``, ``select``, ``test``)."""
        return {"train": self.train, "validation": self.validation, "select": self.select, "test": self.test}[
            name
        ]


def make_splits(skill: str, *, seed: int, validation: int, test: int, select: int = 0) -> SkillSplits:
    """Cut a skill's items into disjoint train, validation, select and test splits.

    The evaluation splits take items from the templates in turn (each template's items shuffled with
    the seed), so every template is about equally represented in them, and no template gives more
    than two thirds of its items to them: the rest is training data, with every template in it.

    Args:
        skill: The skill.
        seed: Data seed.
        validation: Number of validation items.
        test: Number of test items.
        select: Number of select items (0: no select split).

    Returns:
        The splits.

    Raises:
        ValueError: When the sizes are not positive or the templates cannot fill them.
    """
    if validation < 1 or test < 1 or select < 0:
        raise ValueError(
            f"validation and test sizes must be positive and select not negative, got {validation}, "
            f"{test} and {select}"
        )
    items = enumerate_items(skill, seed=seed)
    pools: dict[str, list[SkillItem]] = {}
    for item in items:
        pools.setdefault(item.template, []).append(item)
    rng = random.Random(f"{seed}/{skill}/splits")
    for pool in pools.values():
        rng.shuffle(pool)
    # Items are popped from the end: the first third of each shuffled pool stays for training.
    eligible = [pool[len(pool) // 3 :] for pool in pools.values()]
    sizes = {"validation": validation, "select": select, "test": test}
    taken: dict[str, list[SkillItem]] = {name: [] for name in sizes}
    # Each pass gives every split that still needs items one item of every template in turn, so that
    # the splits get the same mix of templates.
    while any(len(taken[n]) < sizes[n] for n in sizes) and any(eligible):
        for pool in eligible:
            for name in sizes:
                if pool and len(taken[name]) < sizes[name]:
                    taken[name].append(pool.pop())
    if any(len(taken[n]) < sizes[n] for n in sizes):
        raise ValueError(
            f"skill {skill}: its {len(items)} items cannot give {sum(sizes.values())} evaluation items and "
            "keep a third of every template for training; use smaller splits"
        )
    used = {i.id for part in taken.values() for i in part}
    train = [i for i in items if i.id not in used]
    return SkillSplits(skill=skill, train=train, **taken)


def basic_templates(skill: str) -> set[str]:
    """Names of the templates of a skill that the base model learns."""
    return {t.name for t in TEMPLATES[skill] if t.basic}


# -- generic format tasks --------------------------------------------------------------------------
_CHARS = string.ascii_lowercase + string.digits


def _word(rng: random.Random, lo: int = 2, hi: int = 9) -> str:
    return "".join(rng.choice(_CHARS) for _ in range(rng.randint(lo, hi)))


_FORMATS: list[tuple[str, Callable[[random.Random], tuple[str, str]]]] = [
    ("copy", lambda r: (lambda w: (f"copy {w}", w))(_word(r))),
    ("rev", lambda r: (lambda w: (f"rev {w}", w[::-1]))(_word(r))),
    ("order", lambda r: (lambda w: (f"order {w}", "".join(sorted(w))))(_word(r))),
    ("pair", lambda r: (lambda w, v: (f"pair {w} {v}", f"{v} {w}"))(_word(r, 1, 5), _word(r, 1, 5))),
    ("wrap", lambda r: (lambda w: (f"wrap {w}", f"({w})"))(_word(r))),
    ("quote", lambda r: (lambda w: (f"quote {w}", f"'{w}'"))(_word(r))),
    ("list", lambda r: (lambda w: (f"list {w}", "[" + ",".join(w) + "]"))(_word(r, 1, 5))),
    ("eq", lambda r: (lambda w, v: (f"eq {w} {v}", f"{w}={v}"))(_word(r, 1, 4), _word(r, 1, 4))),
]


def format_item(rng: random.Random) -> SkillItem:
    """One random generic format item (copy, reverse, sort, wrap, quote ... a short string).

    They teach the ``Q: A:`` format and the characters of the skills' answers without any skill.

    Args:
        rng: The generator.

    Returns:
        The item (skill ``format``).
    """
    name, make = _FORMATS[rng.randrange(len(_FORMATS))]
    question, answer = make(rng)
    return SkillItem(id=f"format-{name}", skill="format", template=name, question=question, answer=answer)
