"""Bounds checked before untrusted input is parsed: the nesting of a JSON document."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from indexer.projet import json_depth

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:'),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\x'), inner,
                                                                                max_size=3),
                    max_leaves=20)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@given(JSON)
def test_json_depth_counts_the_nesting_and_no_bracket_inside_a_string(value: Any) -> None:
    assert json_depth(json.dumps(value)) == depth(value)
    assert json_depth(json.dumps(value, ensure_ascii=False, indent=1)) == depth(value)


def test_json_depth_of_a_document_too_deep_for_the_parser() -> None:
    assert json_depth("[" * 200_000 + "]" * 200_000) == 200_000
    assert json_depth('{"a": "[[[[\\"{{"}') == 1
