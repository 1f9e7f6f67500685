"""``check_int``: the one integer check every constructor uses."""

from __future__ import annotations

from typing import Any

import pytest

from d2lightning.utils.validation import NotAnIntError, check_int


@pytest.mark.parametrize(("value", "minimum", "allow_none"), [(0, 0, False), (3, 1, False), (None, 1, True)])
def test_accepted_values_come_back(value: Any, minimum: int, allow_none: bool) -> None:
    assert check_int("x", value, minimum, allow_none=allow_none) == value


@pytest.mark.parametrize(
    ("value", "allow_none", "error", "message"),
    [
        (0, False, ValueError, "period must be an int >= 1, got 0"),
        (2.5, False, NotAnIntError, "period must be an int >= 1, got 2.5"),
        (True, False, NotAnIntError, "period must be an int >= 1, got True"),
        ("2", False, NotAnIntError, "period must be an int >= 1, got '2'"),
        (None, False, NotAnIntError, "period must be an int >= 1, got None"),
        (0, True, ValueError, "period must be None or an int >= 1, got 0"),
    ],
)
def test_bad_values_name_the_argument_and_the_value(value: Any, allow_none: bool, error: type, message: str) -> None:
    with pytest.raises(error) as caught:
        check_int("period", value, 1, allow_none=allow_none)
    assert str(caught.value) == message


def test_a_value_that_is_not_an_int_is_both_a_type_and_a_value_error() -> None:
    assert issubclass(NotAnIntError, TypeError) and issubclass(NotAnIntError, ValueError)
