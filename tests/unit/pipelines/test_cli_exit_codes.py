"""Exit codes: one table in pcc's main(); cannot pay (402) and forbidden (403) differ; docs/cli.md lists it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipelines.cli.main import EXIT_CODES, INTERNAL, exit_code, main
from pipelines.errors import PccError
from serving.errors import (
    AuthenticationError,
    EventNotFoundError,
    ForbiddenQueryError,
    InvalidQueryError,
    PaymentRequiredError,
    PriceUnavailableError,
    TooManyRequestsError,
)

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (PaymentRequiredError("funds 3 cents, price 10", {"amount_cents": 10}), 8),
        (ForbiddenQueryError("statement", "INSTALL is not allowed"), 4),
        (AuthenticationError("request expired"), 4),
        (EventNotFoundError("no event e-1"), 3),
        (TooManyRequestsError("slow down", 2), 5),
        (InvalidQueryError("syntax error"), 2),
        (PriceUnavailableError("no price is set for data category 'fraud_score'"), 6),
    ],
)
def test_each_kind_of_refusal_has_its_code(error: PccError, code: int):
    assert exit_code(error) == code


def test_cannot_pay_and_forbidden_differ():
    assert exit_code(PaymentRequiredError("x", {})) != exit_code(ForbiddenQueryError("r", "x"))


def test_main_returns_the_code_of_the_table(capsys: pytest.CaptureFixture[str]):
    assert main(["governance", "prices", "propose", "colour=3"]) == 2
    assert "unknown data category 'colour'" in capsys.readouterr().err


def test_docs_list_every_code():
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| (\d+) \| ([^|]+)\|", text, flags=re.M))
    for _, code, _ in EXIT_CODES:
        assert str(code) in table
    for code in ("0", "1", "7", str(INTERNAL), "130"):
        assert code in table
    assert "cannot pay" in table["8"] and "forbidden" in table["4"]
