"""The final-number reader of reasoning tasks on the cases that trip simple parsers."""

from __future__ import annotations

from decimal import Decimal

import pytest

from steerlab.evaluation.answers import final_number, same_number


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("Natalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72", "72"),
        ("She earns $1,250.00 a month.", "1250"),
        ("The total is 1,234,567 grains", "1234567"),
        ("We get 3,4 and 5 as the sides.", "5"),  # a list, not thousands: the last number is 5
        ("The temperature fell to -12 degrees.", "-12"),
        ("It fell to \u22123 degrees.", "-3"),  # a Unicode minus
        ("16 - 3 - 4 = 9 eggs", "9"),
        ("She works 3-4 hours.", "4"),  # a range: 4, not -4
        ("The answer is 18, since 16 - 3 - 4 = 9 and 9 * 2 = 18.", "18"),
        ("The answer is 20 eggs. Check: 5 * 4 = 20. Then 20 + 1 = 21 is wrong.", "20"),
        ("Answer: 0.5 of the cake", "0.5"),
        ("so x = \\boxed{42} and we are done at step 7", "42"),
        ("First the answer is 10; recomputing, the final answer is 12 dollars.", "12"),
        ("The answer is: -7", "-7"),
        ("He paid 18.00 dollars.", "18"),
        ("A 25% tip on 40 is 10.", "10"),
        ("No number here.", None),
        ("answer is unclear, but 5 + 6 = 11", "11"),  # a marker with no number after it falls back to the last
    ],
)
def test_final_number(text, number):
    assert final_number(text) == (None if number is None else Decimal(number))


def test_same_number_compares_exact_decimals_against_a_gsm8k_answer():
    gold = "He buys 2*5 = <<2*5=10>>10 apples.\n#### 1,000"
    assert same_number("So the answer is 1000.", gold)
    assert same_number("That makes $1,000.00 in total.", gold)
    assert not same_number("That makes 1000.5 in total.", gold)
    assert not same_number("I cannot tell.", gold)
    assert same_number("The answer is 0.30", Decimal("0.3"))
    assert not same_number("The answer is 0.1 + 0.2 = 0.30000000000000004", Decimal("0.3"))
