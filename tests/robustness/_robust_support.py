"""Shared helpers of the robustness (fuzz) tests: the acceptance rule for untrusted input,
hypothesis strategies for JSON values and byte mutations, and a small ESData test PKI.

Imported by module name (pytest puts this directory on sys.path); never from conftest.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from m2msec.errors import M2MSecError

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.timezone.utc)

#: every property here: bounded examples, no health-check noise from slow crypto
FUZZ = settings(max_examples=150, suppress_health_check=list(HealthCheck), deadline=None)
FUZZ_SLOW = settings(max_examples=60, suppress_health_check=list(HealthCheck), deadline=None)


def clock() -> dt.datetime:
    return NOW


def refused_or_ok(fn: Callable[..., Any], *args: Any, allowed: type[BaseException] | tuple[type[BaseException], ...] = M2MSecError,
                  max_rsc: int = 4999, **kwargs: Any) -> Any:
    """Call ``fn``: it must either return, or raise ``allowed`` with an RSC below ``max_rsc + 1``.

    Any other exception type (KeyError, IndexError, RecursionError, binascii.Error, ...) or an
    RSC of the 5xxx class fails the test with the offending input in the message."""
    try:
        return fn(*args, **kwargs)
    except allowed as exc:
        rsc = getattr(exc, "rsc", None)
        if rsc is not None:
            assert 4000 <= int(rsc) <= max_rsc, f"{fn.__qualname__}: RSC {int(rsc)} for peer input: {exc}"
        return exc


# --------------------------------------------------------------------------- strategies

def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
               | st.floats(allow_nan=False) | st.text(max_size=16))
    return st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                        max_leaves=max_leaves)


def odd_values() -> st.SearchStrategy[Any]:
    """Values chosen to hit type and range checks: huge numbers, empty/long strings, nesting."""
    return st.one_of(
        json_values(),
        st.sampled_from(["", " ", "\x00", "a" * 600, "20261126T120000", "2026-11-26T12:00:00Z", "AAAA", "====",
                         "0" * 32, "é", "\ud800x", "mef.example.com", "x@y", "-1", "1e999"]),
        st.integers(min_value=-(2**200), max_value=2**200),
        st.floats(),
        st.just(10**400),
    )


def deep(depth: int, kind: str = "[") -> str:
    close = "]" if kind == "[" else "}"
    if kind == "[":
        return "[" * depth + close * depth
    return '{"a":' * depth + "1" + close * depth


@st.composite
def mutated_object(draw: st.DrawFn, base: dict[str, Any], names: list[str],
                   values: st.SearchStrategy[Any] | None = None) -> dict[str, Any]:
    """A member-level mutation of a valid JSON object: delete members, add or replace members
    (``names``) with ``values`` (default :func:`odd_values`: type swaps, huge numbers, ...)."""
    doc = json.loads(json.dumps(base))
    for key in draw(st.lists(st.sampled_from(sorted(doc) or ["x"]), max_size=2)):
        doc.pop(key, None)
    for key, value in draw(st.dictionaries(st.sampled_from(names), values if values is not None else odd_values(), max_size=3)).items():
        doc[key] = value
    return doc


def with_duplicate(text: str, member: str) -> str:
    """``text`` (a JSON object) with member ``member`` repeated at the front."""
    doc = json.loads(text)
    return "{" + json.dumps(member) + ":" + json.dumps(doc[member]) + "," + text[1:]


@st.composite
def byte_mutation(draw: st.DrawFn, data: bytes) -> bytes:
    """Bit flips, truncation, insertion, deletion and non-UTF-8 bytes applied to ``data``.

    Every step draws the same values in the same order whatever ``data`` and the previous steps
    left (positions are reduced modulo the current length afterwards), so the strategy stays
    stable when the valid encoding differs from one example to the next (an ECDSA signature's
    DER length, say): Hypothesis needs the same draws for the same choices."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete", "nonutf8"]))
        pos = draw(st.integers(0, 2**20))
        bit = draw(st.integers(0, 7))
        extra = draw(st.binary(min_size=1, max_size=6))
        span = draw(st.integers(1, 8))
        odd = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"]))
        if not out:
            out += extra[:4]
            continue
        i = pos % len(out)
        if op == "flip":
            out[i] ^= 1 << bit
        elif op == "cut":
            del out[i:]
        elif op == "insert":
            out[i:i] = extra
        elif op == "delete":
            del out[i:i + span]
        else:
            out[i:i] = odd
    return bytes(out)


# --------------------------------------------------------------------------- a small PKI

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(subject_key: Any, issuer_key: Any, subject: str, issuer: str, *, ca: bool,
              san: str | None = None) -> x509.Certificate:
    nb = NOW - dt.timedelta(days=1)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(nb).not_valid_after(nb + dt.timedelta(days=365))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                          crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
    if san:
        b = b.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(san)]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@dataclass
class MiniPKI:
    root: x509.Certificate
    leaf_key: Any
    leaf: x509.Certificate
    ident: str


def mini_pki(ident: str = "CAE-source") -> MiniPKI:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = make_cert(root_key, root_key, "Fuzz Root", "Fuzz Root", ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = make_cert(leaf_key, root_key, ident, "Fuzz Root", ca=False, san=ident)
    return MiniPKI(root, leaf_key, leaf, ident)


__all__ = ["FUZZ", "FUZZ_SLOW", "M2MSecError", "MiniPKI", "NOW", "byte_mutation", "clock", "deep", "json_values",
           "mini_pki", "mutated_object", "odd_values", "refused_or_ok", "with_duplicate"]
