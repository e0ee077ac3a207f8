"""Verifiable tasks: seeded generation, disjoint splits, R1-format solutions, and verifiers that are exact and safe."""

import dataclasses
import json
import random
import time
from fractions import Fraction

import pytest

from nanoseek.tasks import (
    TASKS,
    Example,
    Reward,
    check_expression,
    extract_answer,
    format_ok,
    get_task,
    load_gsm8k,
    parse_number,
    reward,
    split_of,
)

GENERATED = ["addition", "multiplication", "countdown", "sorting", "linear_equation"]


def example(task: str, answer: str, **data) -> Example:
    return Example(id=f"{task}/test/0", task=task, prompt="?", answer=answer, data=data)


def answered(text: str) -> str:
    return f"<think>\nwork\n</think>\n\n{text}"


# ---------------------------------------------------------------------------------------------------------------
# registry and generation


def test_registry_names_and_unknown_task():
    assert set(GENERATED) | {"gsm8k", "math"} <= set(TASKS)
    assert all(task.name == name for name, task in TASKS.items())
    assert get_task("countdown") is TASKS["countdown"]
    with pytest.raises(ValueError, match=r"known tasks: .*addition"):
        get_task("additon")


@pytest.mark.parametrize("name", GENERATED)
def test_generate_is_deterministic_and_seeded(name):
    task = get_task(name)
    first = task.generate(60, split="train", seed=7)
    assert first == task.generate(60, split="train", seed=7)
    assert task.generate(30, split="train", seed=7) == first[:30]  # a longer request extends a shorter one
    assert task.generate(60, split="train", seed=7, **task.defaults) == first
    assert len(first) == 60 and len({e.id for e in first}) == 60
    assert [e.id for e in task.generate(60, seed=8)] != [e.id for e in first]
    for e in first:
        assert e.task == name and e.id.startswith(f"{name}/")
        assert json.loads(json.dumps(dataclasses.asdict(e))) == dataclasses.asdict(e)
        assert len(e.prompt) < 300


@pytest.mark.parametrize("name", GENERATED)
def test_train_and_test_never_share_a_problem(name):
    task = get_task(name)
    options = {"digits": 3} if name == "multiplication" else {}  # 2-digit products have only ~410 test problems
    train = task.generate(2000, split="train", seed=1, **options)
    test = task.generate(500, split="test", seed=1, **options)
    assert len(train) == 2000 and len(test) == 500
    assert not {e.id for e in train} & {e.id for e in test}
    train_keys, test_keys = {task.canonical(e) for e in train}, {task.canonical(e) for e in test}
    assert len(train_keys) == 2000 and len(test_keys) == 500  # distinct problems within each list, too
    assert not train_keys & test_keys
    # Membership is a property of the problem: another seed's test problems are still not train problems.
    other = task.generate(500, split="test", seed=99, **options)
    assert all(split_of(name, task.canonical(e)) == "test" for e in other)
    assert not {task.canonical(e) for e in other} & train_keys


def test_commuted_operands_are_one_problem_for_the_split():
    task = get_task("addition")
    a, b = example("addition", "10", a=3, b=7), example("addition", "10", a=7, b=3)
    assert task.canonical(a) == task.canonical(b)


@pytest.mark.parametrize("name", GENERATED)
def test_prompts_use_several_templates(name):
    prompts = [e.prompt for e in get_task(name).generate(100, seed=3)]
    assert len({p.split()[0] for p in prompts}) >= 3  # templates start differently


def test_prompts_state_the_problem():
    e = get_task("addition").generate(1, seed=5)[0]
    assert str(e.data["a"]) in e.prompt and str(e.data["b"]) in e.prompt
    for e in get_task("countdown").generate(20, seed=5):
        assert f"{e.data['target']}" in e.prompt and "exactly once" in e.prompt
        assert ", ".join(map(str, e.data["numbers"])) in e.prompt
        assert e.answer == str(e.data["target"])


def test_difficulty_options():
    add, countdown = get_task("addition"), get_task("countdown")
    assert all(len(str(e.data["a"])) == 5 for e in add.generate(20, digits=5))
    assert all(len(e.data["numbers"]) == 6 for e in countdown.generate(20, count=6, max_target=1000))
    assert all(e.data["c"] != 0 for e in get_task("linear_equation").generate(20, both_sides=True))
    assert all(len(e.data["numbers"]) == 8 for e in get_task("sorting").generate(20, count=8))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"digit": 3}, "unknown difficulty option"),
        ({"digits": "3"}, "must be int"),
        ({"digits": True}, "must be int"),
        ({"digits": 0}, "digits must be in"),
        ({"n": 200, "digits": 1}, "only 55 distinct problems"),
        ({"n": 40, "digits": 1, "split": "test"}, "found only"),
        ({"split": "validation"}, "split must be one of"),
        ({"n": -1}, "non-negative"),
    ],
)
def test_impossible_requests_are_refused(kwargs, message):
    kwargs = {"n": 5, **kwargs}
    with pytest.raises(ValueError, match=message):
        get_task("addition").generate(**kwargs)


def test_countdown_and_sorting_options_are_checked():
    with pytest.raises(ValueError, match="count must be in"):
        get_task("countdown").generate(5, count=9)
    with pytest.raises(ValueError, match="found only"):
        get_task("countdown").generate(50, count=2, max_number=1)  # only 1+1 and 1*1 exist
    with pytest.raises(ValueError, match="distinct problems"):
        get_task("sorting").generate(50, count=2, max_number=3)


# ---------------------------------------------------------------------------------------------------------------
# solutions


@pytest.mark.parametrize("name", GENERATED)
def test_solutions_verify_in_both_styles(name):
    task = get_task(name)
    for e in task.generate(150, seed=11) + task.generate(30, split="test", seed=11):
        worked, direct = task.solution(e), task.solution(e, style="direct")
        assert direct.startswith("<think>\n\n</think>\n\n")
        assert worked.startswith("<think>\n") and len(worked) > len(direct)
        assert worked.rsplit("\n", 1)[1] == direct.rsplit("\n", 1)[1]  # one final line, the same in both
        for completion in (worked, direct):
            assert format_ok(completion), completion
            assert task.verify(e, completion), completion
            assert reward(e, completion) == Reward(accuracy=1.0, format=1.0, total=1.1)


def test_hard_difficulties_still_verify():
    for name, options in [
        ("addition", {"digits": 60}),
        ("multiplication", {"digits": 6}),
        ("countdown", {"count": 6, "max_number": 100, "max_target": 1000}),
        ("linear_equation", {"both_sides": True, "max_coef": 50}),
    ]:
        task = get_task(name)
        for e in task.generate(20, seed=2, **options):
            assert task.verify(e, task.solution(e)), (name, e)


def test_worked_solution_formats():
    add = get_task("addition").solution(example("addition", "1299", a=982, b=317))
    assert add == (
        "<think>\n982 + 317\n"
        "2 + 7 + carry 0 = 9: write 9, carry 0\n"
        "8 + 1 + carry 0 = 9: write 9, carry 0\n"
        "9 + 3 + carry 0 = 12: write 2, carry 1\n"
        "final carry 1: write 1\n"
        "982 + 317 = 1299\n</think>\n\nThe answer is 1299."
    )
    mul = get_task("multiplication").solution(example("multiplication", "1692", a=47, b=36))
    assert "47 * 6 = 282\n47 * 30 = 1410\nadd 282 + 1410:\n" in mul and mul.endswith("The answer is 1692.")
    data = {"numbers": [6, 2, 3, 3], "target": 24, "expression": "(6 - 2) * (3 + 3)"}
    countdown = get_task("countdown").solution(example("countdown", "24", **data))
    assert countdown == (
        "<think>\nnumbers: 6, 2, 3, 3, target: 24\n"
        "6 - 2 = 4, left: 3, 3, 4\n"
        "3 + 3 = 6, left: 4, 6\n"
        "4 * 6 = 24, left: 24\n"
        "reached the target 24\n</think>\n\nThe answer is (6 - 2) * (3 + 3)."
    )
    sort = get_task("sorting").solution(example("sorting", "3, 17, 58", numbers=[58, 3, 17]))
    assert "smallest is 3, left: 58, 17\n" in sort and sort.endswith("The answer is 3, 17, 58.")
    eq = get_task("linear_equation").solution(example("linear_equation", "3", a=5, b=3, c=2, d=12, x=3))
    assert eq == (
        "<think>\n5x + 3 = 2x + 12\n"
        "subtract 2x from both sides: 3x + 3 = 12\n"
        "subtract 3 from both sides: 3x = 9\n"
        "divide both sides by 3: x = 3\n</think>\n\nThe answer is 3."
    )


def test_reward_reports_accuracy_and_format_separately():
    e = example("addition", "799", a=482, b=317)
    assert reward(e, "The answer is 799.") == Reward(accuracy=1.0, format=0.0, total=1.0)
    assert reward(e, answered("The answer is 799."), format_weight=0.5) == Reward(1.0, 1.0, 1.5)
    assert reward(e, answered("The answer is 800."), format_weight=0.5) == Reward(0.0, 1.0, 0.5)
    assert reward(e, "<think>\nThe answer is 799.") == Reward(0.0, 0.0, 0.0)  # never finished thinking


def test_solution_argument_errors():
    e = get_task("addition").generate(1)[0]
    with pytest.raises(ValueError, match="style must be one of"):
        get_task("addition").solution(e, style="short")
    with pytest.raises(ValueError, match="belongs to task 'addition'"):
        get_task("sorting").verify(e, "The answer is 1.")


# ---------------------------------------------------------------------------------------------------------------
# wrong answers


@pytest.mark.parametrize("name", ["addition", "multiplication", "linear_equation"])
def test_wrong_numbers_fail(name):
    task = get_task(name)
    for e in task.generate(50, seed=4):
        for wrong in (int(e.answer) + 1, int(e.answer) - 10, -int(e.answer) if e.answer != "0" else 1):
            completion = answered(f"The answer is {wrong}.")
            assert not task.verify(e, completion)
            assert reward(e, completion) == Reward(accuracy=0.0, format=1.0, total=0.1)


def test_wrong_sorting_answers_fail():
    task = get_task("sorting")
    e = example("sorting", "3, 17, 17, 58", numbers=[17, 58, 3, 17])
    assert task.verify(e, answered("The answer is [3, 17, 17, 58]."))
    assert task.verify(e, answered("The answer is 3 17 17 58"))
    for wrong in ("3, 17, 58", "3, 17, 58, 17", "58, 17, 17, 3", "3, 17, 17, 58, 99", "3, 17, 17 and 58", "58"):
        assert not task.verify(e, answered(f"The answer is {wrong}.")), wrong


def test_countdown_rules():
    e = example("countdown", "24", numbers=[6, 2, 3, 3], target=24, expression="(6 - 2) * (3 + 3)")
    task = get_task("countdown")
    good = [
        "(6 - 2) * (3 + 3)",
        "(3 + 3) * (6 - 2)",
        "6*(3+3-2)",
        "(6-2)*(3+3) = 24",
        "(６−２)×(３＋３)",
        "(٦ - ٢) * (٣ + ٣)",
    ]
    for expression in good:
        assert task.verify(e, answered(f"The answer is {expression}.")), expression
    assert task.verify(e, answered("So \\boxed{(6 - 2) * (3 + 3)}"))
    bad = [
        "24",  # numbers unused
        "6 * 2 * 2",  # 2 used twice, 3s unused
        "(6 - 2) * (3 + 3) * 1",  # a number that was not given
        "6 * 2 * 3 - 3 - 3",  # uses an extra 3
        "6 * (2 + 3) - 3",  # leaves numbers out... and misses the target
        "(6 - 2) * (3 + 3) = 25",  # claims a different target
        "(6 - 2) * (3 + 3) = ",
        "(6 - 2) * (3 + 3",
        "-(6 - 2) * -(3 + 3)",  # unary minus is not an operation here
        "6 // 2 * 3 * 3",
    ]
    for expression in bad:
        assert not task.verify(e, answered(f"The answer is {expression}.")), expression


def test_countdown_division_must_be_exact():
    assert check_expression("(7 - 1) / 2 * 1", [7, 1, 2, 1], 3)
    assert not check_expression("7 / 2 * 2 * 1", [7, 2, 2, 1], 7)  # 7 / 2 leaves a remainder
    assert not check_expression("7 / 2", [7, 2], 3)  # no floor division
    assert not check_expression("5 / (3 - 3)", [5, 3, 3], 0)  # division by zero: False, not an exception


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('echo pwned')",
        "2**99999999",
        "9**9**9",
        "x + 1",
        "().__class__",
        "(lambda: 6)() * 4",
        "[6, 2, 3, 3][0] * 4",
        "6 if 2 else 3",
        "0x18",
        "2_4",
        "6.0 * 4",
        "(" * 400 + "6" + ")" * 400,
        "6 + " * 10000 + "6",
        "'24'",
        "6\n* 4",
        "1" * 100_000,
    ],
)
def test_countdown_rejects_hostile_expressions_fast(expression):
    start = time.perf_counter()
    assert not check_expression(expression, [6, 2, 3, 3], 24)
    e = example("countdown", "24", numbers=[6, 2, 3, 3], target=24, expression="(6 - 2) * (3 + 3)")
    assert reward(e, answered(f"The answer is {expression}")).accuracy == 0.0
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------------------------------------------
# extraction and numbers


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>\nThe answer is 5.\n</think>\n\nThe answer is 7.", "7"),  # only the part after </think>
        ("<think>\n2 + 2\n</think>\n\n4", "4"),
        ("\\boxed{3} then #### 4 and The answer is 5.", "3"),  # boxed beats the rest
        ("#### 4\nThe answer is 5.", "4"),  # #### beats "The answer is"
        ("#### 4\n#### 72", "72"),  # the last ####
        ("\\boxed{1} and finally \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),  # the last boxed, braces balanced
        ("The answer is 1234. I am confident.", "1234"),
        ("The answer is 3.5.", "3.5"),
        ("the final answer is: **-12**", "-12"),
        ("The answer is:\n42", "42"),
        ("I think 12 apples, then 15 pears", "15"),  # last number
        ("The answer is (6 - 2) * (3 + 3).", "(6 - 2) * (3 + 3)"),
        ("\\boxed{unbalanced then 9", "9"),  # an unclosed box is no answer; fall through
        ("<think>\nThe answer is 5, still thinking", None),  # never closed: no answer yet
        ("<think>\n5\n</think>\n\n", None),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_answer_rules(completion, expected):
    assert extract_answer(completion) == expected


@pytest.mark.parametrize(
    "completion, ok",
    [
        ("<think>\nx\n</think>\n\nThe answer is 1.", True),
        ("<think>\n\n</think>\n\nThe answer is 1.", True),
        ("  <think>x</think>1", True),
        ("The answer is 1.", False),
        ("<think>\nx\n</think>\n\n   \n", False),
        ("<think>x</think>1<think>y</think>2", False),
        ("<think><think>x</think>1", False),
        ("x<think>y</think>1", False),
        ("</think>1", False),
        ("<think>\nx\n", False),
    ],
)
def test_format_ok(completion, ok):
    assert format_ok(completion) is ok


@pytest.mark.parametrize(
    "text, value",
    [
        ("12,345", Fraction(12345)),
        ("+12345", Fraction(12345)),
        ("-7", Fraction(-7)),
        ("0.5", Fraction(1, 2)),
        ("1/2", Fraction(1, 2)),
        (".25", Fraction(1, 4)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("-\\frac{3}{4}", Fraction(-3, 4)),
        ("$18", Fraction(18)),
        ("１２３", Fraction(123)),  # full-width
        ("١٢٣", Fraction(123)),  # Arabic-Indic
        ("−5", Fraction(-5)),  # U+2212 minus sign
        ("1" * 500, Fraction(int("1" * 500))),
        ("12,34", None),
        ("1/0", None),
        ("nan", None),
        ("NaN", None),
        ("inf", None),
        ("-Infinity", None),
        ("1e5", None),
        ("12 apples", None),
        ("", None),
        ("1" * 10**6, None),  # too long to parse
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_numeric_verification_is_exact_and_tolerant_of_presentation():
    task = get_task("addition")
    e = example("addition", "12345", a=12000, b=345)
    for good in [
        "12,345",
        "+12345",
        "**12345**",
        "$12,345",
        "12345 apples",
        "１２３４５",
        "١٢٣٤٥",
        "12345.0",
        "12345 or 0",
    ]:
        assert task.verify(e, answered(f"The answer is {good}.")), good
    assert task.verify(e, answered("First #### 1\nthen #### 12345"))
    assert task.verify(e, answered("Adding gives 12000 + 345 = 12345"))
    for bad in ["12346", "1234.5", "12,3450", "123450", "12345.000001", "#### 12345\n#### 1", "0 or 12345"]:
        assert not task.verify(e, answered(bad if "####" in bad else f"The answer is {bad}.")), bad
    big = example("addition", str(10**70 + 1), a=10**70, b=1)
    assert task.verify(big, answered(f"The answer is {10**70 + 1}."))
    assert not task.verify(big, answered(f"The answer is {10**70}."))  # no float rounding


def test_verifiers_and_reward_never_raise():
    rng = random.Random(0)
    pieces = ["<think>", "</think>", "\\boxed{", "}", "####", "The answer is", "=", "(", ")", "*", "/", "-", "1,0",
              "１", "٣", ".", "\n", " ", "\x00", "\ud800", "**", "nan", "9" * 50, "\\frac{", "{"]  # fmt: skip
    completions = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))) for _ in range(400)]
    completions += [bytes(rng.randrange(256) for _ in range(200)).decode("latin-1") for _ in range(100)]
    completions += ["<think></think>" + "9" * 10**6, "The answer is " + "1," * 10**5, "\\boxed{" * 10**5]
    examples = [get_task(name).generate(1, seed=0)[0] for name in GENERATED]
    examples += [example("gsm8k", "72", question="?", reasoning=""), example("math", "x^2", problem="?", solution="")]
    start = time.perf_counter()
    for completion in completions:
        for e in examples:
            result = reward(e, completion)
            assert result.accuracy in (0.0, 1.0) and result.format in (0.0, 1.0)
    assert time.perf_counter() - start < 10.0


# ---------------------------------------------------------------------------------------------------------------
# GSM8K and MATH files


def write_jsonl(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_load_gsm8k_and_math(tmp_path):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"question": "How many?", "answer": "48/2 = <<48/2=24>>24 each.\n#### 24"},
            "",
            {"question": "How much in total?", "answer": "#### 1\nfixed: 1,000 + 234 = 1,234\n#### 1,234"},
            {"problem": "Simplify 6/8.", "solution": "Divide: $\\boxed{\\frac{3}{4}}$."},
            {"problem": "Expand.", "solution": "So \\boxed{1} no, \\boxed{x^{2} + \\frac{1}{2}}"},
            {"problem": "Given answer.", "solution": "No box.", "answer": "0.5"},
        ],
    )
    examples = load_gsm8k(path, split_name="gsm8k-test")
    assert [e.task for e in examples] == ["gsm8k", "gsm8k", "math", "math", "math"]
    assert [e.answer for e in examples] == ["24", "1234", "\\frac{3}{4}", "x^{2} + \\frac{1}{2}", "0.5"]
    assert examples[0].id.startswith("gsm8k/gsm8k-test/") and examples[0].prompt == "How many?"
    assert examples == load_gsm8k(str(path), split_name="gsm8k-test")

    gsm, frac, poly, half = examples[1], examples[2], examples[3], examples[4]
    for e in examples:
        task = get_task(e.task)
        for style in ("worked", "direct"):
            assert task.verify(e, task.solution(e, style)) and format_ok(task.solution(e, style))
    assert "<<" not in get_task("gsm8k").solution(examples[0])  # calculator annotations stripped
    verify = lambda e, text: get_task(e.task).verify(e, answered(text))
    assert verify(gsm, "The answer is $1,234.") and verify(gsm, "#### 1234") and not verify(gsm, "#### 1235")
    for good in ["\\boxed{3/4}", "\\boxed{0.75}", "\\boxed{\\dfrac{3}{4}}", "The answer is 0.75."]:
        assert verify(frac, good), good
    assert not verify(frac, "\\boxed{3/5}") and not verify(frac, "\\boxed{3\\sqrt{4}}")
    assert verify(poly, "\\boxed{x^{2}+\\frac{1}{2}}") and not verify(poly, "\\boxed{x^{2}+\\frac{1}{3}}")
    assert verify(half, "\\boxed{1/2}") and not verify(half, "\\boxed{\\frac{1}{2} + 1}")


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"question": "Q", "answer": "no final answer"', "not valid JSON"),
        ('{"question": "Q", "answer": "no final answer"}', "no final '#### <answer>'"),
        ('{"problem": "P", "solution": "unboxed"}', "neither an 'answer' nor"),
        ('{"text": "hello"}', "expected GSM8K keys"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_load_gsm8k_names_file_and_line(tmp_path, bad_line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"question": "Q", "answer": "#### 1"}, "", bad_line])
    with pytest.raises(ValueError, match=message) as error:
        load_gsm8k(path)
    assert f"{path}:3" in str(error.value)


def test_load_gsm8k_reports_bad_bytes_with_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"question": "Q", "answer": "#### 1"}\n{"question": "caf\xe9", "answer": "#### 2"}\n'
    )
    with pytest.raises(ValueError, match="not UTF-8") as error:
        load_gsm8k(path)
    assert f"{path}:2" in str(error.value)
    path.write_bytes(b'\xef\xbb\xbf{"question": "Q", "answer": "#### 1"}\n')  # a byte-order mark is fine
    assert [e.answer for e in load_gsm8k(path)] == ["1"]


def test_file_tasks_do_not_generate():
    for name in ("gsm8k", "math"):
        with pytest.raises(ValueError, match="load_gsm8k"):
            get_task(name).generate(10)


def test_paraphrase_asks_the_same_problem_in_a_phrasing_training_never_uses():
    from nanoseek.tasks import get_task

    for name in ("addition", "multiplication"):
        task = get_task(name)
        train_prompts = {ex.prompt for ex in task.generate(2000, "train", seed=0)}
        for ex in task.generate(50, "test", seed=0):
            other = task.paraphrase(ex)
            assert other.answer == ex.answer and other.data == ex.data
            assert other.prompt not in train_prompts and str(ex.data["a"]) in other.prompt
            assert task.verify(other, task.solution(other))
    with pytest.raises(ValueError, match="held-out phrasings"):
        get_task("countdown").paraphrase(get_task("countdown").generate(1)[0])


def test_at_most_returns_the_whole_split_instead_of_failing():
    from nanoseek.tasks import get_task

    task = get_task("multiplication")
    with pytest.raises(ValueError, match="distinct problems"):
        task.generate(5000, "train")
    pool = task.generate(5000, "train", at_most=True)
    assert 3000 < len(pool) < 4095 and len({task.canonical(ex) for ex in pool}) == len(pool)


def test_multiplication_without_round_numbers_draws_no_multiple_of_ten():
    """The speedrun's task: with round_numbers=0 no operand ends in 0, the space shrinks to 81 of the 90 two-digit
    numbers (3,321 unordered pairs), and a problem keeps its split (the split hashes the problem, not the options)."""
    from nanoseek.eval.evaluate import load_examples

    task = get_task("multiplication")
    pool = load_examples("multiplication:round_numbers=0", 5000, "train", at_most=True)
    test = load_examples("multiplication:round_numbers=0", 5000, "test", at_most=True)
    assert all(ex.data["a"] % 10 and ex.data["b"] % 10 for ex in pool + test)
    assert len(pool) + len(test) == 81 * 82 // 2
    every = task.generate(5000, "test", at_most=True)  # with round numbers
    assert {task.canonical(ex) for ex in test} == {
        task.canonical(ex) for ex in every if ex.data["a"] % 10 and ex.data["b"] % 10
    }
    assert any(ex.data["a"] % 10 == 0 for ex in every)
    with pytest.raises(ValueError, match="round_numbers must be in"):
        task.generate(5, round_numbers=2)


def _word_problems(path, n):
    return write_jsonl(
        path,
        [
            {"question": f"Ann has {i} apples and buys {i + 3}. How many?", "answer": f"#### {2 * i + 3}"}
            for i in range(n)
        ],
    )


def test_file_tasks_split_train_and_test_apart(tmp_path):
    """RL trains on load_examples(file, "train") and evaluates on load_examples(file, "test"): never one problem."""
    from nanoseek.eval.evaluate import load_examples

    path = _word_problems(tmp_path / "problems.jsonl", 300)
    train, test = load_examples(str(path), 1000, "train"), load_examples(str(path), 1000, "test")
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert len(train) + len(test) == 300 and 10 <= len(test) <= 60  # every line lands somewhere; ~10% held out
    assert all(split_of("gsm8k", e.prompt) == "test" for e in test)  # the generated tasks' content-hash rule
    assert load_examples(str(path), 5, "test") == test[:5]
    assert len(load_gsm8k(path)) == 300  # no split asked: the whole file


def test_a_lines_own_split_field_wins(tmp_path):
    from nanoseek.eval.evaluate import load_examples

    lines = [json.loads(line) for line in _word_problems(tmp_path / "p.jsonl", 40).read_text().splitlines()]
    by_hash = [split_of("gsm8k", line["question"]) for line in lines]
    flipped = [{**line, "split": "train" if s == "test" else "test"} for line, s in zip(lines, by_hash)]
    path = write_jsonl(tmp_path / "flipped.jsonl", flipped)
    test = load_examples(str(path), 100, "test")
    assert {e.prompt for e in test} == {line["question"] for line, s in zip(lines, by_hash) if s == "train"}
    with pytest.raises(ValueError, match=r"holds no 'test' problems"):
        load_examples(str(write_jsonl(tmp_path / "t.jsonl", [{**lines[0], "split": "train"}])), 10, "test")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: 'split' must be one of"):
        load_gsm8k(write_jsonl(tmp_path / "bad.jsonl", [{**lines[0], "split": "validation"}]), split="test")


def test_direct_for_all_corpus_gives_every_problem_a_direct_document():
    from nanoseek.tasks import get_task
    from nanoseek.tasks.corpus import chat_document, solution_documents

    examples = get_task("multiplication").generate(400, "train")
    docs = solution_documents(examples, 0.25, seed=3, direct_for_all=True)
    assert all(chat_document(ex, "direct") in docs for ex in examples)
    worked = [d for d in docs if "\n</think>" in d and "<think>\n\n</think>" not in d]
    assert 60 < len(worked) < 140 and len(docs) == len(examples) + len(worked)
