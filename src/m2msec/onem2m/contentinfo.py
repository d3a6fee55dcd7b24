"""m2m:contentInfo (``cnf``): ``type/subtype:encodingType[:contentSecurity]``.

Implements TS-0004 V3.32.0 Table 6.3.3-1 (m2m:contentInfo, m2m:typeOfContent),
m2m:encodingType (clause 6.3.4.2.28) and m2m:contentSecurity (clause
6.3.4.2.38): "a media type followed by a m2m:encodingType and optional
m2m:contentSecurity, each separated by ':' character. If the
m2m:contentSecurity value is not present, then the preceding ':' shall also be
not present [and] this has the same interpretation as a value of 0".

m2msec profile decisions:

* The media type is ``type/subtype`` where both are RFC 6838 section 4.2
  ``restricted-name`` tokens (first char ALPHA/DIGIT, then up to 126 of
  ALPHA / DIGIT / ``!#$&-^_.+``); media-type parameters (``;charset=...``) are
  not accepted because ``cnf`` has no room for them.  Case is preserved as given.
* encodingType and contentSecurity are one decimal digit each (0-2, 0-5).
* Formatting omits ``:0`` (canonical form); ``application/json:0:0`` therefore
  re-formats as ``application/json:0``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from m2msec.errors import ParseError
from m2msec.onem2m.enums import ContentSecurity, EncodingType

_RESTRICTED_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&\-^_.+]{0,126}"
_MEDIA_TYPE_RE = re.compile(rf"{_RESTRICTED_NAME}/{_RESTRICTED_NAME}", re.ASCII)
_CNF_RE = re.compile(
    rf"(?P<mt>{_RESTRICTED_NAME}/{_RESTRICTED_NAME}):(?P<enc>[0-9])(?::(?P<sec>[0-9]))?", re.ASCII
)


@dataclass(frozen=True)
class ContentInfo:
    """A parsed m2m:contentInfo value."""

    media_type: str
    encoding: EncodingType = EncodingType.PLAIN
    security: ContentSecurity = ContentSecurity.NONE

    def __post_init__(self) -> None:
        if not isinstance(self.media_type, str) or not _MEDIA_TYPE_RE.fullmatch(self.media_type):
            raise ValueError(f"not a type/subtype media type: {self.media_type!r}")
        object.__setattr__(self, "encoding", EncodingType(self.encoding))
        object.__setattr__(self, "security", ContentSecurity(self.security))

    @classmethod
    def parse(cls, value: object, *, path: str = "cnf") -> ContentInfo:
        if not isinstance(value, str):
            raise ParseError(f"{path}: expected an m2m:contentInfo string, got {type(value).__name__}")
        m = _CNF_RE.fullmatch(value)
        if m is None:
            raise ParseError(f"{path}: not an m2m:contentInfo (type/subtype:encodingType[:contentSecurity]): {value!r}")
        enc = int(m.group("enc"))
        try:
            encoding = EncodingType(enc)
        except ValueError:
            raise ParseError(f"{path}: unknown EncodingType value {enc}") from None
        sec_s = m.group("sec")
        security = ContentSecurity.NONE
        if sec_s is not None:
            try:
                security = ContentSecurity(int(sec_s))
            except ValueError:
                raise ParseError(f"{path}: unknown ContentSecurity value {sec_s}") from None
        return cls(m.group("mt"), encoding, security)

    def format(self) -> str:
        base = f"{self.media_type}:{int(self.encoding)}"
        if self.security is ContentSecurity.NONE:
            return base
        return f"{base}:{int(self.security)}"

    __str__ = format

    def to_json(self) -> str:
        return self.format()

    @classmethod
    def from_json(cls, value: object, *, path: str = "cnf") -> ContentInfo:
        return cls.parse(value, path=path)
