"""Key derivations and key identifiers of oneM2M TS-0003 clause 10.3.

This is the one place in m2msec where keys are derived; every framework calls it.

Clauses implemented (TS-0003 V3.18.0):

- 10.3.1  TLS key export: 48 exported octets split into a 32-octet key (the least
          significant octets) and a 16-octet identifier (the most significant octets),
          with the labels ``EXPORTER-oneM2M-Bootstrap`` (Ke/RelativeKeID),
          ``EXPORTER-oneM2M-Connection`` (Kc/KcID) and ``EXPORTER-oneM2M-ESCertKE``
          (pairwiseE2EKey/pairwiseE2EKeyID).
- 10.3.2  Km   = HMAC-SHA-256(Ke, "oneM2M Enrolment Key to Master Credential derivation" || MAF-ID)
- 10.3.3  Kpsa = HMAC-SHA-256(Ke, "oneM2M Enrolment Key to Provisioned Secure Connection Key derivation" || Enrolee-B-ID)
- 10.3.4  KeID = hexBinary(RelativeKeID) "@" MEF-FQDN
- 10.3.5  MAF key identifier = hexBinary(KcID) "@" MAF-FQDN
- 10.3.6  Ke2e_master = HMAC-Hash(Salt, Kpsa) and its RFC 5869-style expansion
- 10.3.7  usage-constrained key = HMAC-SHA-256(Ke, "oneM2M Enrolment Key to Usage-Constrained
          Symmetric Key derivation" || SUID || Enrolment-Target-ID)
- 10.3.8.2 sessionESPrimKey = HMAC-SHA256(pairwiseESPrimKey, receiverESPrimRandObject ||
          originatorESPrimRandObject || "oneM2M HMAC-SHA256 sessionESPrimKey derivation algorithm")

Identifiers that enter a derivation are encoded as UTF-8 after Unicode NFKC
normalisation (RFC 3629, UAX #15), as the clauses require.

Choices the clauses leave open are listed in ``docs/profile.md`` (section "Key derivations
and identifiers"); each is implemented here and only here:

- SUID in the usage-constrained key input: one octet holding the SUID value.
- Enrolment Re-Authentication Key (Kre) and RelativeKreID (8.3.2.1 / seed 8.3.3.2 name
  them but no clause defines their derivation): a second RFC 5705 export of the same
  Bootstrap Security Handshake with the label ``EXPORTER-oneM2M-Bootstrap-Reauth``
  (:data:`LABEL_BOOTSTRAP_REAUTH`), length 48, split like Ke/RelativeKeID (Kre = 32 least
  significant octets, RelativeKreID = 16 most significant); KreID =
  hexBinary(RelativeKreID)@MEF-FQDN (:func:`kre_id`, the 10.3.4 form).
- HMAC-Hash in 10.3.6: SHA-256.
- Octets of the rand objects in the sessionESPrimKey input: the 16 octets of each
  object's esprimRandValue (receiver first, then originator).
- AES-GCM content key from the 32-octet sessionESPrimKey: its leftmost 16/24/32 octets
  for A128GCM/A192GCM/A256GCM.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from dataclasses import dataclass
from typing import Final

from m2msec.errors import IdentifierError, ParseError

__all__ = [
    "LABEL_BOOTSTRAP",
    "LABEL_BOOTSTRAP_REAUTH",
    "LABEL_CONNECTION",
    "LABEL_ESCERTKE",
    "EXPORT_LENGTH",
    "E2E_KEY_NAMES",
    "KeyIdentifier",
    "split_exported",
    "derive_km",
    "derive_kpsa",
    "derive_usage_key",
    "derive_e2e_keys",
    "derive_session_esprim_key",
    "esprim_content_key",
    "ke_id",
    "kre_id",
    "maf_key_id",
    "make_key_id",
    "parse_key_id",
    "nfkc_octets",
]

# --- 10.3.1 TLS key export -------------------------------------------------------------

LABEL_BOOTSTRAP: Final = "EXPORTER-oneM2M-Bootstrap"
"""Exporter label for Ke / RelativeKeID (MEF, Bootstrap Security Handshake)."""
LABEL_BOOTSTRAP_REAUTH: Final = "EXPORTER-oneM2M-Bootstrap-Reauth"
"""Exporter label for Kre / RelativeKreID (MEF, same handshake as Ke).

Profile decision: TS-0003 8.3.2.1 says Ke, RelativeKeID *and* the Enrolment
Re-Authentication Key are exported from the Bootstrap Security Handshake but 10.3.1
defines only the Ke/RelativeKeID label; m2msec exports Kre/RelativeKreID with this
second label (48 octets, split by :func:`split_exported`), so Kre is independent of Ke
and can be checked with ``openssl s_client -keymatexport``.
"""
LABEL_CONNECTION: Final = "EXPORTER-oneM2M-Connection"
"""Exporter label for Kc / KcID (MAF Handshake)."""
LABEL_ESCERTKE: Final = "EXPORTER-oneM2M-ESCertKE"
"""Exporter label for pairwiseE2EKey / pairwiseE2EKeyID (ESCertKE)."""
EXPORT_LENGTH: Final = 48
"""Number of octets exported with every oneM2M label (TS-0003 10.3.1)."""

KEY_LENGTH: Final = 32
RELATIVE_ID_LENGTH: Final = 16


def split_exported(material: bytes) -> tuple[bytes, bytes]:
    """Split 48 exported octets into ``(key, key_id)`` per TS-0003 10.3.1.

    The exported value is read as a big-endian octet string: the key is the 32 least
    significant octets (``material[16:]``), the identifier the 16 most significant
    octets (``material[:16]``).
    """
    material = _require_bytes("exported keying material", material)
    if len(material) != EXPORT_LENGTH:
        raise ParseError(
            f"exported keying material must be {EXPORT_LENGTH} octets, got {len(material)}"
        )
    return material[RELATIVE_ID_LENGTH:], material[:RELATIVE_ID_LENGTH]


# --- identifiers -------------------------------------------------------------------------


def nfkc_octets(identifier: str, what: str = "identifier") -> bytes:
    """UTF-8 octets of ``identifier`` after NFKC normalisation (RFC 3629 + UAX #15)."""
    if not isinstance(identifier, str):
        raise ParseError(f"{what} must be a string, got {type(identifier).__name__}")
    if not identifier:
        raise ParseError(f"{what} must not be empty")
    normalised = unicodedata.normalize("NFKC", identifier)
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in normalised):
        raise ParseError(f"{what} contains control characters")
    return normalised.encode("utf-8")


# RFC 1123 host name: LDH labels of 1..63 characters, 253 characters at most.
_LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
# Relative part of a key identifier: printable ASCII except '@', whitespace and '/'.
# (hexBinary values and operator-chosen identifiers such as the TS-0013 "test" both fit.)
_RELATIVE_RE = re.compile(r"^[!-.0-?A-~]{1,255}$")
_HEX_RE = re.compile(r"^(?:[0-9A-Fa-f]{2})+$")


def _check_fqdn(fqdn: str) -> str:
    if not isinstance(fqdn, str) or not fqdn:
        raise IdentifierError("FQDN must be a non-empty string")
    name = fqdn[:-1] if fqdn.endswith(".") else fqdn
    if len(name) > 253:
        raise IdentifierError(f"FQDN longer than 253 characters: {fqdn[:40]!r}...")
    if not name.isascii():
        raise IdentifierError(
            f"FQDN {fqdn!r} is not ASCII: give internationalised names in A-label (punycode) form"
        )
    for label in name.split("."):
        if not _LABEL_RE.match(label):
            raise IdentifierError(f"FQDN {fqdn!r} has an invalid label {label!r}")
    return name


@dataclass(frozen=True, slots=True)
class KeyIdentifier:
    """An identifier of the form ``relative@fqdn`` (KeID, KmID, KpsaID, MAF key identifier).

    ``relative`` is kept as written; ``relative_bytes`` decodes it when it is a hexBinary
    value (as for KeID and MAF key identifiers).
    """

    relative: str
    fqdn: str

    def __str__(self) -> str:
        return f"{self.relative}@{self.fqdn}"

    @property
    def relative_bytes(self) -> bytes:
        if not _HEX_RE.match(self.relative):
            raise IdentifierError(f"relative part {self.relative!r} is not hexBinary")
        return bytes.fromhex(self.relative)


def make_key_id(relative: bytes | str, fqdn: str) -> str:
    """``hexBinary(relative)@fqdn`` for bytes, ``relative@fqdn`` for an already textual part.

    hexBinary is written in lowercase.
    """
    if isinstance(relative, (bytes, bytearray, memoryview)):
        rel = bytes(relative)
        if not rel:
            raise IdentifierError("relative key identifier must not be empty")
        text = rel.hex()
    elif isinstance(relative, str):
        text = relative
    else:
        raise IdentifierError(f"relative key identifier must be bytes or str, got {type(relative).__name__}")
    if not _RELATIVE_RE.match(text):
        raise IdentifierError(f"invalid relative key identifier {text!r}")
    return f"{text}@{_check_fqdn(fqdn)}"


def parse_key_id(identifier: str, *, hex_length: int | None = None) -> KeyIdentifier:
    """Split ``relative@fqdn`` and validate both parts.

    ``hex_length``: if given, the relative part must be hexBinary of exactly that many
    octets (16 for KeID and MAF key identifiers).  Raises :class:`IdentifierError`.
    """
    if not isinstance(identifier, str):
        raise IdentifierError(f"key identifier must be a string, got {type(identifier).__name__}")
    if identifier.count("@") != 1:
        raise IdentifierError(f"key identifier {identifier!r} must contain exactly one '@'")
    relative, fqdn = identifier.split("@")
    if not relative:
        raise IdentifierError(f"key identifier {identifier!r} has an empty relative part")
    if not _RELATIVE_RE.match(relative):
        raise IdentifierError(f"key identifier {identifier!r} has an invalid relative part")
    fqdn = _check_fqdn(fqdn)
    kid = KeyIdentifier(relative, fqdn)
    if hex_length is not None:
        raw = kid.relative_bytes
        if len(raw) != hex_length:
            raise IdentifierError(
                f"key identifier {identifier!r}: relative part must be {hex_length} octets, got {len(raw)}"
            )
    return kid


def ke_id(relative_ke_id: bytes, mef_fqdn: str) -> str:
    """KeID = hexBinary(RelativeKeID)@MEF-FQDN (TS-0003 10.3.4)."""
    return make_key_id(_require_len("RelativeKeID", relative_ke_id, RELATIVE_ID_LENGTH), mef_fqdn)


def kre_id(relative_kre_id: bytes, mef_fqdn: str) -> str:
    """KreID = hexBinary(RelativeKreID)@MEF-FQDN (profile: the 10.3.4 KeID form for Kre)."""
    return make_key_id(_require_len("RelativeKreID", relative_kre_id, RELATIVE_ID_LENGTH), mef_fqdn)


def maf_key_id(kc_id: bytes, maf_fqdn: str) -> str:
    """Key Identifier = hexBinary(KcID)@MAF-FQDN (TS-0003 10.3.5)."""
    return make_key_id(_require_len("KcID", kc_id, RELATIVE_ID_LENGTH), maf_fqdn)


# --- 10.3.2, 10.3.3, 10.3.7: keys derived from Ke ----------------------------------------

_KM_LABEL: Final = b"oneM2M Enrolment Key to Master Credential derivation"
_KPSA_LABEL: Final = b"oneM2M Enrolment Key to Provisioned Secure Connection Key derivation"
_USAGE_LABEL: Final = b"oneM2M Enrolment Key to Usage-Constrained Symmetric Key derivation"

# SUID values of TS-0004 table 6.3.4.2.39-1 (kept here as plain ints so this module does
# not depend on the vocabulary package).
_SUIDS: Final = frozenset({10, 11, 12, 13, 14, 15, 21, 22, 23, 24, 25, 32, 33, 34, 35, 40, 41, 42, 43, 44, 45})


def _hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def derive_km(ke: bytes, maf_id: str) -> bytes:
    """Km := HMAC-SHA-256(Ke, "oneM2M Enrolment Key to Master Credential derivation" || MAF-ID)."""
    ke = _require_len("Ke", ke, KEY_LENGTH)
    return _hmac_sha256(ke, _KM_LABEL + nfkc_octets(maf_id, "MAF-ID"))


def derive_kpsa(ke: bytes, enrolee_b_id: str) -> bytes:
    """Kpsa := HMAC-SHA-256(Ke, "oneM2M Enrolment Key to Provisioned Secure Connection Key derivation" || Enrolee-B-ID)."""
    ke = _require_len("Ke", ke, KEY_LENGTH)
    return _hmac_sha256(ke, _KPSA_LABEL + nfkc_octets(enrolee_b_id, "Enrolee-B-ID"))


def derive_usage_key(ke: bytes, suid: int, target_id: str) -> bytes:
    """Usage-constrained symmetric key (TS-0003 10.3.7).

    HMAC-SHA-256(Ke, "oneM2M Enrolment Key to Usage-Constrained Symmetric Key derivation"
    || SUID || Enrolment-Target-ID), the SUID encoded as one octet (profile decision).
    """
    ke = _require_len("Ke", ke, KEY_LENGTH)
    if isinstance(suid, bool) or not isinstance(suid, int):
        raise ParseError(f"SUID must be an integer, got {type(suid).__name__}")
    if int(suid) not in _SUIDS:
        raise ParseError(f"unknown SUID {int(suid)} (TS-0004 table 6.3.4.2.39-1)")
    return _hmac_sha256(ke, _USAGE_LABEL + bytes([int(suid)]) + nfkc_octets(target_id, "Enrolment-Target-ID"))


# --- 10.3.6 End-to-end keys from Kpsa ----------------------------------------------------

E2E_KEY_NAMES: Final = ("Ke2e_msg_auth", "Ke2e_msg_conf", "Ke2e_att_auth", "Ke2e_att_conf")
_E2E_LABELS: Final = (
    b"E2E Message Authentication Key",
    b"E2E Message Confidentiality Key",
    b"E2E Attribute Authenticity Key",
    b"E2E Attribute Confidentiality Key",
)


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """RFC 5869 HKDF-Extract with SHA-256: PRK = HMAC-Hash(salt, IKM)."""
    salt = bytes(salt) if salt else b"\x00" * hashlib.sha256().digest_size
    return _hmac_sha256(salt, _require_bytes("IKM", ikm))


def hkdf_expand_blocks(prk: bytes, infos: list[bytes] | tuple[bytes, ...]) -> list[bytes]:
    """T(i) = HMAC-Hash(PRK, T(i-1) | info_i | i) for i = 1..n (T(0) empty).

    With the same ``info`` in every block this is exactly RFC 5869 HKDF-Expand; TS-0003
    10.3.6.2 uses a different label per block.
    """
    if len(infos) > 255:
        raise ValueError("at most 255 blocks")
    out: list[bytes] = []
    previous = b""
    for index, info in enumerate(infos, start=1):
        previous = _hmac_sha256(prk, previous + bytes(info) + bytes([index]))
        out.append(previous)
    return out


def derive_e2e_keys(kpsa: bytes, salt: bytes) -> dict[str, bytes]:
    """Ke2e_master and its four expanded keys (TS-0003 10.3.6, HMAC-Hash = HMAC-SHA-256).

    Ke2e_master = HMAC-SHA-256(Salt, Kpsa); then T(1)..T(4) with the labels of
    table 10.3.6.2-1.  Returns a dict with keys ``Ke2e_master`` and :data:`E2E_KEY_NAMES`.
    """
    kpsa = _require_bytes("Kpsa", kpsa)
    if not kpsa:
        raise ParseError("Kpsa must not be empty")
    salt = _require_bytes("salt", salt)
    if not salt:
        raise ParseError("salt must not be empty")
    master = _hmac_sha256(salt, kpsa)
    keys = {"Ke2e_master": master}
    keys.update(zip(E2E_KEY_NAMES, hkdf_expand_blocks(master, _E2E_LABELS)))
    return keys


# --- 10.3.8 sessionESPrimKey -------------------------------------------------------------

_ESPRIM_LABEL: Final = b"oneM2M HMAC-SHA256 sessionESPrimKey derivation algorithm"
ESPRIM_RAND_VALUE_LENGTH: Final = 16
ESPRIM_KEYGEN_HMAC_SHA256: Final = 1
# esprimProtocolAndAlgID (TS-0004 table 6.3.4.2.41-1) -> AES key length in octets.
_ESPRIM_AES_KEY_LENGTH: Final = {10: 16, 11: 24, 12: 32}


def derive_session_esprim_key(
    pairwise_esprim_key: bytes,
    receiver_rand_value: bytes,
    originator_rand_value: bytes,
    key_gen_alg_id: int = ESPRIM_KEYGEN_HMAC_SHA256,
) -> bytes:
    """sessionESPrimKey (TS-0003 10.3.8.2), 32 octets.

    HMAC-SHA256(pairwiseESPrimKey, receiverESPrimRandObject || originatorESPrimRandObject ||
    "oneM2M HMAC-SHA256 sessionESPrimKey derivation algorithm"), where each rand object
    contributes the 16 octets of its esprimRandValue (profile decision).
    """
    if isinstance(key_gen_alg_id, bool) or key_gen_alg_id != ESPRIM_KEYGEN_HMAC_SHA256:
        raise ParseError(f"unsupported esprimKeyGenAlgID {key_gen_alg_id!r} (only 1, HMAC-SHA256)")
    key = _require_bytes("pairwiseESPrimKey", pairwise_esprim_key)
    if len(key) < 16:
        raise ParseError(f"pairwiseESPrimKey must be at least 16 octets, got {len(key)}")
    r = _require_len("receiver esprimRandValue", receiver_rand_value, ESPRIM_RAND_VALUE_LENGTH)
    o = _require_len("originator esprimRandValue", originator_rand_value, ESPRIM_RAND_VALUE_LENGTH)
    return _hmac_sha256(key, r + o + _ESPRIM_LABEL)


def esprim_content_key(session_esprim_key: bytes, protocol_and_alg_id: int) -> bytes:
    """AES-GCM key for an ESPrim Object: the leftmost 16/24/32 octets of sessionESPrimKey
    for esprimProtocolAndAlgID 10/11/12 (A128GCM/A192GCM/A256GCM) — profile decision."""
    key = _require_len("sessionESPrimKey", session_esprim_key, KEY_LENGTH)
    if isinstance(protocol_and_alg_id, bool) or protocol_and_alg_id not in _ESPRIM_AES_KEY_LENGTH:
        raise ParseError(f"unsupported esprimProtocolAndAlgID {protocol_and_alg_id!r} (10, 11 or 12)")
    return key[: _ESPRIM_AES_KEY_LENGTH[protocol_and_alg_id]]


# --- helpers -------------------------------------------------------------------------------


def _require_bytes(what: str, value: object) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ParseError(f"{what} must be bytes, got {type(value).__name__}")
    return bytes(value)


def _require_len(what: str, value: object, length: int) -> bytes:
    raw = _require_bytes(what, value)
    if len(raw) != length:
        raise ParseError(f"{what} must be {length} octets, got {len(raw)}")
    return raw


# --- MAF-distributed keys (TS-0003 8.8.1, 8.4.2 C.6a.4) ---------------------------------

MAF_ESPRIM_RESERVED_STRING: Final = b"oneM2M MAF pairwiseESPrimKey"
"""The "reserved string" of TS-0003 8.4.2 (MAF option, C.6a.4) — not published; profile choice."""


def derive_maf_pairwise_esprim_key(kc: bytes) -> bytes:
    """pairwiseESPrimKey from a MAF-distributed key (TS-0003 8.4.2 phase A MAF option, C.6a.4).

    The clause says "generate the pairwiseESPrimKey from Kc and a reserved string" without
    publishing the string.  m2msec (profile decision):
    ``pairwiseESPrimKey = HMAC-SHA-256(Kc, "oneM2M MAF pairwiseESPrimKey")`` (ASCII, no
    terminator), 32 octets; Kc is the 32-octet distributed key value.
    """
    kc = _require_len("Kc", kc, KEY_LENGTH)
    return _hmac_sha256(kc, MAF_ESPRIM_RESERVED_STRING)


def maf_esdata_key(key_value: bytes, suid: int) -> bytes:
    """The ESData key taken from a MAF-distributed 32-octet key value (TS-0003 8.8.1).

    8.8.1: a protocol needing one symmetric key uses the first half of the distributed key.
    SUID 34 (ESData encryption): the first 16 octets (A128KW key-wrap key or dir A128GCM CEK).
    SUID 35 (ESData MIC): the whole 32 octets — profile decision, because RFC 7518 3.2
    forbids an HS256 key shorter than the hash output, so a 16-octet half could not be used.
    """
    key_value = _require_len("MAF key value", key_value, KEY_LENGTH)
    if isinstance(suid, bool) or suid not in (34, 35):
        raise ParseError(f"SUID {suid!r} is not a MAF-distributed ESData SUID (34, 35)")
    return key_value[:16] if suid == 34 else key_value


__all__ += ["MAF_ESPRIM_RESERVED_STRING", "derive_maf_pairwise_esprim_key", "maf_esdata_key"]


# --- GBA (TS-0003 8.3.2.3 / 8.1.3; 3GPP TS 33.220 Annex B, Annex H; TS 33.222) ------------

GBA_FC_NAF: Final = 0x01
"""FC of the NAF-specific key derivation (TS 33.220 B.3)."""
GBA_ME_LABEL: Final = b"gba-me"
"""P0 of Ks_NAF / Ks_ext_NAF (TS 33.220 B.3)."""
GBA_RAND_LENGTH: Final = 16
GBA_KS_LENGTH: Final = 32  # Ks = CK || IK
UA_TLS12_PREFIX: Final = b"\x01\x00\x01"
"""Ua security protocol identifier prefix (0x01,0x00,0x01,yy,zz) of TS 33.220 H.3 for TS 33.222
"Shared key-based mutual authentication between UE and NAF" over (D)TLS 1.2; (yy,zz) is the
IANA code point of the negotiated cipher suite."""


def gba_kdf(key: bytes, fc: int, *params: bytes) -> bytes:
    """The generic key derivation function of TS 33.220 B.2 (as in TS 33.401 A.2):
    HMAC-SHA-256(Key, S) with S = FC || P0 || L0 || P1 || L1 || ... , Li the 2-octet
    big-endian length of Pi (at most 65535)."""
    key = _require_bytes("GBA KDF key", key)
    if isinstance(fc, bool) or not isinstance(fc, int) or not 0 <= fc <= 0xFF:
        raise ParseError("FC must be one octet")
    s = bytearray([fc])
    for i, p in enumerate(params):
        p = _require_bytes(f"P{i}", p)
        if len(p) > 0xFFFF:
            raise ParseError(f"P{i} longer than 65535 octets")
        s += p + len(p).to_bytes(2, "big")
    return _hmac_sha256(key, bytes(s))


def gba_ua_protocol_id_tls12(cipher_suite_code: int) -> bytes:
    """(0x01,0x00,0x01,yy,zz): TS 33.222 TLS 1.2 shared-key Ua protocol, (yy,zz) = the cipher
    suite (TS 33.220 H.3), e.g. TLS_PSK_WITH_AES_128_CBC_SHA256 (0x00,0xAE) -> 01 00 01 00 ae."""
    if isinstance(cipher_suite_code, bool) or not isinstance(cipher_suite_code, int) or \
            not 0 <= cipher_suite_code <= 0xFFFF:
        raise ParseError("TLS cipher suite code must be two octets")
    return UA_TLS12_PREFIX + cipher_suite_code.to_bytes(2, "big")


def gba_naf_id(naf_fqdn: str, ua_protocol_id: bytes) -> bytes:
    """NAF_Id = FQDN of the NAF (UTF-8, lower case) || Ua security protocol identifier (TS 33.220 4.5.2, H)."""
    ua = _require_len("Ua security protocol identifier", ua_protocol_id, 5)
    return _check_fqdn(naf_fqdn).lower().encode("utf-8") + ua


def derive_gba_ks_naf(ks: bytes, rand: bytes, impi: str, naf_id: bytes) -> bytes:
    """Ks_NAF (GBA_ME) = Ks_ext_NAF (GBA_U, ME side) = KDF(Ks, "gba-me", RAND, IMPI, NAF_Id)
    (TS 33.220 B.3): FC = 0x01, P0 = "gba-me", P1 = RAND, P2 = IMPI (UTF-8), P3 = NAF_Id;
    Ks = CK || IK (32 octets); the result is the full 32-octet KDF output."""
    ks = _require_len("Ks", ks, GBA_KS_LENGTH)
    rand = _require_len("RAND", rand, GBA_RAND_LENGTH)
    naf_id = _require_bytes("NAF_Id", naf_id)
    if len(naf_id) < 6:
        raise ParseError("NAF_Id must be an FQDN followed by a 5-octet Ua security protocol identifier")
    return gba_kdf(ks, GBA_FC_NAF, GBA_ME_LABEL, rand, nfkc_octets(impi, "IMPI"), naf_id)


_SIM_RES_LABEL: Final = b"m2msec simulated AKA RES"
_SIM_KS_LABEL: Final = b"m2msec simulated AKA CK||IK"


def gba_simulated_aka(k: bytes, rand: bytes) -> tuple[bytes, bytes]:
    """(RES, Ks) of the BSF *simulator*'s stand-in for UMTS AKA on Ub (not Milenage, not for
    production): RES = HMAC-SHA-256(K, "m2msec simulated AKA RES" || RAND)[:16],
    Ks = HMAC-SHA-256(K, "m2msec simulated AKA CK||IK" || RAND) (32 octets, the place of CK || IK)."""
    k = _require_bytes("K", k)
    if len(k) < 16:
        raise ParseError("subscriber key K must be at least 16 octets")
    rand = _require_len("RAND", rand, GBA_RAND_LENGTH)
    return _hmac_sha256(k, _SIM_RES_LABEL + rand)[:16], _hmac_sha256(k, _SIM_KS_LABEL + rand)


__all__ += ["GBA_FC_NAF", "GBA_ME_LABEL", "UA_TLS12_PREFIX", "derive_gba_ks_naf", "gba_kdf", "gba_naf_id",
            "gba_simulated_aka", "gba_ua_protocol_id_tls12"]
