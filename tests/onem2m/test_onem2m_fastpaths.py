"""The codec fast paths (shared JSON decoder/encoder, exact-type JSON model check, no second
validation in ``from_json``) accept and reject exactly what the general code does."""

from __future__ import annotations

import collections
import json
from typing import Any

import pytest

from m2msec.errors import ParseError
from m2msec.onem2m import Operation, RequestPrimitive, ResponsePrimitive, ResponseStatusCode
from m2msec.onem2m import _wire

PC = {"m2m:sgn": {"nev": {"rep": {"m2m:cin": {"con": "x", "cnf": "text/plain:0"}}, "net": 1}, "sur": "/s", "l": [1, 2.5, True, None]}}


def test_from_json_equals_the_checked_constructor_and_round_trips() -> None:
    req = RequestPrimitive(op=Operation.NOTIFY, to="/x", fr="Cae", rqi="r1", rvi="3", pc=PC, extra={"rids": ["a"]})
    back = RequestPrimitive.from_json_bytes(req.to_json_bytes())
    assert back == req and type(back) is RequestPrimitive and back.op is Operation.NOTIFY
    assert back.extra == {"rids": ["a"]} and back.ty is None and back.ot is None
    rsp = ResponsePrimitive(rsc=ResponseStatusCode.OK, rqi="r1", pc={"m2m:dbg": "ok"})
    back_rsp = ResponsePrimitive.from_json_bytes(rsp.to_json_bytes())
    assert back_rsp == rsp and back_rsp.rsc is ResponseStatusCode.OK and back_rsp.extra == {}
    assert ResponsePrimitive.from_cbor(rsp.to_cbor()) == rsp


def test_to_json_still_copies_but_bytes_match() -> None:
    pc: dict[str, Any] = {"a": {"b": [1]}}
    req = RequestPrimitive(op=Operation.NOTIFY, to="/x", rqi="r1", pc=pc)
    out = req.to_json()
    out["pc"]["a"]["b"].append(2)
    assert req.pc == {"a": {"b": [1]}}
    assert json.loads(req.to_json_bytes()) == req.to_json()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (b'{"op":5,"to":"/x","rqi":"1","pc":{"a":1e999}}', r"pc\.a: non-finite number"),
        (b'{"op":5,"to":"/x","rqi":"1","pc":{"a":[1,-1e999]}}', r"pc\.a\[1\]: non-finite number"),
        (b'{"op":5,"to":"/x","rqi":"1","pc":{"a":{"b":1,"b":2}}}', "duplicate JSON member name 'b'"),
        (b'{"op":5,"to":"/x","rqi":"1","pc":NaN}', "NaN is not valid JSON"),
        (b'{"op":5,"to":"/x","rqi":"1","zz":1}', "zz: unknown member"),
        (b'{"op":5,"to":"/x"}', "rqi: missing mandatory member"),
        (b'{"op":5,"to":"","rqi":"1"}', "to: must not be empty"),
        (b'{"op":5,"to":"/x","rqi":"1","pc":null}', "pc: null is not allowed"),
        (b'[1]', "expected an object, got array"),
        (b'\xff', "malformed JSON"),
    ],
)
def test_strict_decoding_rejections(text: bytes, match: str) -> None:
    with pytest.raises(ParseError, match=match):
        RequestPrimitive.from_json_bytes(text)


def test_json_model_check_handles_non_exact_types() -> None:
    _wire.check_json_model(collections.OrderedDict(a=[1, {"b": None}]), "pc")  # a Mapping is fine
    with pytest.raises(ParseError, match=r"pc\.a: array is not a JSON value|pc\.a: tuple is not a JSON value"):
        _wire.check_json_model({"a": (1, 2)}, "pc")
    with pytest.raises(ParseError, match=r"pc\.a\[0\]: member name must be a string"):
        _wire.check_json_model({"a": [{1: 2}]}, "pc")
    with pytest.raises(ParseError, match=r"pc: non-finite number"):
        _wire.check_json_model(float("inf"), "pc")
    with pytest.raises(ParseError, match="nested deeper than 100 levels"):
        deep: Any = []
        for _ in range(100):
            deep = [deep]
        _wire.check_json_model(deep, "pc")


def test_constructor_still_checks_pc() -> None:
    with pytest.raises(ValueError, match=r"pc\.a: bytes is not a JSON value"):
        RequestPrimitive(op=Operation.NOTIFY, to="/x", rqi="1", pc={"a": b"x"})


def test_loads_json_model_says_when_the_full_check_can_be_skipped() -> None:
    assert _wire.loads_json_model(b'{"a":[1,2.5,{"b":null}]}') == ({"a": [1, 2.5, {"b": None}]}, True)
    value, plain = _wire.loads_json_model(b'{"a":1e999}')
    assert value == {"a": float("inf")} and plain is False  # the full check names pc.a
    big = b'{"a":' + b"1" * 400 + b'.0}'  # no exponent, still too large for a float
    assert _wire.loads_json_model(big)[1] is False
    many = b'{"a":[' + b",".join([b"[]"] * 100) + b"]}"  # 102 containers, only 3 deep
    assert _wire.loads_json_model(many)[1] is False
    assert RequestPrimitive.from_json_bytes(b'{"op":5,"to":"/x","rqi":"1","pc":' + many + b"}").pc["a"][99] == []
    with pytest.raises(ParseError, match="duplicate JSON member name 'a'"):
        _wire.loads_json_model(b'{"a":1,"a":2}')
    with pytest.raises(ParseError, match="malformed JSON"):
        _wire.loads_json_model(b'{"a":')


def test_cbor_decoding_checks_the_model_once_and_still_refuses() -> None:
    import cbor2

    ok = cbor2.dumps({"op": 5, "to": "/x", "rqi": "1", "pc": {"a": [1.5, None]}})
    assert RequestPrimitive.from_cbor(ok).pc == {"a": [1.5, None]}
    with pytest.raises(ParseError, match=r"pc\.a: non-finite number"):
        ResponsePrimitive.from_cbor(cbor2.dumps({"rsc": 2000, "rqi": "1", "pc": {"a": float("inf")}}))


@pytest.mark.parametrize("value", [{"a": [1, 2.5, None, "é\n\"", True]}, "s", 5, [], {"k": {"n": [1e308, -0.0]}}])
def test_dumps_json_matches_json_dumps(value: Any) -> None:
    assert _wire.dumps_json(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def test_dumps_json_refusals() -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        _wire.dumps_json({"a": float("nan")})
    with pytest.raises(TypeError):
        _wire.dumps_json({"a": b"x"})
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        _wire.dumps_json(loop)


@pytest.mark.parametrize("text", [b"", b" ", b'{"a":1} x', b'{"a":1}{}', b"[1,]"])
def test_loads_json_malformed(text: bytes) -> None:
    with pytest.raises(ParseError, match="malformed JSON"):
        _wire.loads_json(text)
    with pytest.raises(ParseError, match="malformed JSON"):
        _wire.loads_json_model(text)
    assert _wire.loads_json(b' {"a" : 1} \n') == {"a": 1}


_BASE_REQ: dict[str, Any] = {"op": 5, "to": "/x", "fr": "Cae", "rqi": "r1", "rvi": "3", "pc": PC}
_REQ_CASES: list[dict[str, Any]] = [
    _BASE_REQ,
    {"op": 5, "to": "/x", "rqi": "r1"},
    dict(_BASE_REQ, fr=None), dict(_BASE_REQ, fr=""), dict(_BASE_REQ, fr=1),
    dict(_BASE_REQ, rvi="2b"), dict(_BASE_REQ, rvi="x"), dict(_BASE_REQ, rvi=None), dict(_BASE_REQ, rvi=3),
    dict(_BASE_REQ, pc=None), dict(_BASE_REQ, pc=[1, {"a": 2.5}]), dict(_BASE_REQ, pc="text"),
    dict(_BASE_REQ, op=True), dict(_BASE_REQ, op=99), dict(_BASE_REQ, op="5"), dict(_BASE_REQ, to=""),
    dict(_BASE_REQ, rqi=None), dict(_BASE_REQ, ty=4), dict(_BASE_REQ, zz=1), dict(_BASE_REQ, rids=["a"]),
    {k: v for k, v in _BASE_REQ.items() if k != "to"},
]
_BASE_RSP: dict[str, Any] = {"rsc": 2000, "rqi": "r1", "rvi": "3", "pc": {"m2m:dbg": "ok"}}
_RSP_CASES: list[dict[str, Any]] = [
    _BASE_RSP, {"rsc": 2000, "rqi": "r1"}, dict(_BASE_RSP, rsc=4999), dict(_BASE_RSP, rsc=7000),
    dict(_BASE_RSP, rsc=True), dict(_BASE_RSP, rsc="2000"), dict(_BASE_RSP, rqi=""), dict(_BASE_RSP, pc=None),
    dict(_BASE_RSP, rvi="10a"), dict(_BASE_RSP, fr="Cx"), dict(_BASE_RSP, cnst=1), {"rqi": "r1"},
]


def _outcome(fn: Any, obj: Any) -> Any:
    try:
        return ("ok", fn(obj))
    except (ParseError, ValueError) as exc:
        return (type(exc).__name__, str(exc))


@pytest.mark.parametrize("obj", _REQ_CASES + _RSP_CASES)
def test_common_shape_fast_path_gives_the_general_result(obj: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from m2msec.onem2m import primitives

    cls = RequestPrimitive if "op" in obj or "to" in obj else ResponsePrimitive
    text = json.dumps(obj).encode()
    fast = (_outcome(cls.from_json, json.loads(text)), _outcome(cls.from_json_bytes, text))
    monkeypatch.setattr(primitives, "_fast_request", lambda *_: None)
    monkeypatch.setattr(primitives, "_fast_response", lambda *_: None)
    general = (_outcome(cls.from_json, json.loads(text)), _outcome(cls.from_json_bytes, text))
    assert fast == general
    if fast[0][0] == "ok":
        got = fast[0][1]
        assert type(got) is cls and got.extra == general[0][1].extra and got.to_json_bytes() == general[0][1].to_json_bytes()
