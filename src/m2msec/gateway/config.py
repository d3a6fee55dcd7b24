"""Gateway configuration file (TOML), see :mod:`m2msec.gateway` for the format.

Keys and KEK are read from files or hex values named in the file; paths are relative to
the configuration file.  Nothing here logs or reprs key bytes.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from m2msec.errors import M2MSecError, ParseError
from m2msec.esprim.common import ESPRIM_SUIDS
from m2msec.esprim.keysource import PairwiseKey
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.rsc import ResponseStatusCode
from m2msec.tomlkeys import check_keys

__all__ = ["ConfigError", "GatewayConfig", "KeyEntry", "MEFSourceConfig", "load_config"]


class ConfigError(M2MSecError):
    default_rsc = ResponseStatusCode.INTERNAL_SERVER_ERROR


@dataclass(frozen=True, repr=False)
class KeyEntry:
    kid: str
    key: bytes = field(compare=False)
    peer: str
    suid: SUID = SUID.PRE_PROVISIONED_ESPRIM

    def pairwise(self) -> PairwiseKey:
        return PairwiseKey(kid=self.kid, key=self.key, peer_id=self.peer, suid=self.suid)

    def __repr__(self) -> str:
        return f"KeyEntry(kid={self.kid!r}, peer={self.peer!r}, suid={int(self.suid)}, key=<hidden>)"


@dataclass(frozen=True, repr=False)
class MEFSourceConfig:
    """``[mef]``: fetch RSPF-provisioned pairwiseESPrimKeys (SUID 23) for KeIDs of ``fqdn``
    from the MEF at ``host:port``, authenticated with the CSE's pre-configured PSK;
    ``target_id`` is the CSE's Enrolment Target ID (X-M2M-Origin, the 10.3.7 input)."""

    fqdn: str
    host: str
    port: int
    psk_identity: str
    psk: bytes = field(compare=False)
    target_id: str

    def __repr__(self) -> str:
        return (f"MEFSourceConfig(fqdn={self.fqdn!r}, host={self.host!r}, port={self.port}, "
                f"psk_identity={self.psk_identity!r}, target_id={self.target_id!r}, psk=<hidden>)")


@dataclass(frozen=True)
class GatewayConfig:
    cse_id: str
    cse_name: str
    admin: str = "CAdmin"
    cse_url: str | None = None
    store_url: str | None = None
    kek_file: Path | None = None
    keys: tuple[KeyEntry, ...] = ()
    routes: dict[str, str] = field(default_factory=dict)
    poa_ttl: float = 30.0
    suids: tuple[SUID, ...] = (SUID.PRE_PROVISIONED_ESPRIM, SUID.RSPF_ESPRIM)
    shared_lifetime: timedelta = timedelta(hours=24)
    unique_lifetime: timedelta = timedelta(hours=1)
    #: key period of the stateless unique rand objects (profile R1); None: the Receiver default
    unique_key_period: timedelta | None = None
    trace_file: Path | None = None
    mef: MEFSourceConfig | None = None
    #: check the target's ACPs before relaying an m2m:seci Notify to an AE (profile G4)
    enforce_acp: bool = True
    #: the SP-ID (``//sp``), to read absolute-form originators in ACP checks; optional
    sp_id: str | None = None

    @property
    def csi(self) -> str:
        return "/" + self.cse_id

    @property
    def cse_base(self) -> str:
        return f"/{self.cse_id}/{self.cse_name}"


def _read_key(entry: dict[str, Any], base: Path, where: str) -> bytes:
    if ("key_hex" in entry) == ("key_file" in entry):
        raise ConfigError(f"{where}: give exactly one of key_hex or key_file")
    if "key_hex" in entry:
        text = entry["key_hex"]
        if not isinstance(text, str):
            raise ConfigError(f"{where}: key_hex must be a string")
    else:
        path = base / str(entry["key_file"])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read key_file {str(path)!r}: {exc.strerror}") from None
        stripped = data.strip()
        try:
            text = stripped.decode("ascii")
            bytes.fromhex(text)
        except (UnicodeDecodeError, ValueError):
            return data  # raw key bytes
    try:
        return bytes.fromhex(text.strip())
    except ValueError:
        raise ConfigError(f"{where}: key is not hexadecimal") from None


def _whole_seconds(table: dict[str, Any], key: str) -> timedelta | None:
    """An optional positive whole number of seconds (a fraction is refused, not truncated)."""
    if key not in table:
        return None
    v = table[key]
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ConfigError(f"[receiver] {key} must be a positive whole number of seconds (got {v!r})")
    return timedelta(seconds=v)


#: every key and table of gateway.toml (docs/configuration.md); anything else is a configuration error
GATEWAY_TOML_KEYS: dict[str, frozenset[str]] = {
    "": frozenset({"cse", "store", "gateway", "receiver", "keys", "mef", "routes"}),
    "cse": frozenset({"id", "name", "admin", "sp_id", "url"}),
    "store": frozenset({"url", "kek_file"}),
    "gateway": frozenset({"poa_ttl", "enforce_acp", "trace_file"}),
    "receiver": frozenset({"suids", "shared_lifetime", "unique_lifetime", "unique_key_period"}),
    "keys[]": frozenset({"kid", "key_hex", "key_file", "peer", "suid"}),
    "mef": frozenset({"fqdn", "host", "port", "psk_identity", "psk_hex", "psk_file", "target_id"}),
    "routes[]": frozenset({"csi", "url"}),
}


def load_config(path: str | Path, *, cse_url: str | None = None, store_url: str | None = None) -> GatewayConfig:
    """Read ``gateway.toml``; ``cse_url``/``store_url`` (CLI options) override the file."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {str(p)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{str(p)!r} is not TOML: {exc}") from None
    try:
        check_keys(doc, GATEWAY_TOML_KEYS, source=str(p))
    except ParseError as exc:
        raise ConfigError(exc.args[0]) from None
    base = p.resolve().parent
    cse = doc.get("cse", {})
    if not isinstance(cse, dict) or not isinstance(cse.get("id"), str) or not isinstance(cse.get("name"), str):
        raise ConfigError("[cse] needs id and name (strings)")
    keys = []
    for i, entry in enumerate(doc.get("keys", [])):
        where = f"keys[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str) or not isinstance(entry.get("peer"), str):
            raise ConfigError(f"{where}: needs kid and peer (strings)")
        suid = SUID(int(entry.get("suid", int(SUID.PRE_PROVISIONED_ESPRIM))))
        if suid not in ESPRIM_SUIDS:
            raise ConfigError(f"{where}: SUID {int(suid)} is not an ESPrim SUID")
        keys.append(KeyEntry(entry["kid"], _read_key(entry, base, where), entry["peer"], suid))
    store = doc.get("store", {})
    gw = doc.get("gateway", {})
    recv = doc.get("receiver", {})
    routes = {}
    for i, r in enumerate(doc.get("routes", [])):
        if not isinstance(r, dict) or not isinstance(r.get("csi"), str) or not isinstance(r.get("url"), str):
            raise ConfigError(f"routes[{i}]: needs csi and url (strings)")
        csi = r["csi"] if r["csi"].startswith("/") else "/" + r["csi"]
        routes[csi] = r["url"].rstrip("/")
    mef = None
    if "mef" in doc:
        m = doc["mef"]
        if not isinstance(m, dict) or not all(isinstance(m.get(k), str) for k in ("fqdn", "psk_identity")) \
                or isinstance(m.get("port"), bool) or not isinstance(m.get("port"), int):
            raise ConfigError("[mef] needs fqdn, port, psk_identity and psk_hex or psk_file")
        psk = _read_key({"key_hex": m["psk_hex"]} if "psk_hex" in m else
                        {"key_file": m["psk_file"]} if "psk_file" in m else {}, base, "[mef]")
        mef = MEFSourceConfig(m["fqdn"], str(m.get("host", "127.0.0.1")), int(m["port"]), m["psk_identity"], psk,
                              str(m.get("target_id", "/" + cse["id"].lstrip("/"))))
    kek = store.get("kek_file")
    enforce_acp = gw.get("enforce_acp", True)
    if not isinstance(enforce_acp, bool):
        raise ConfigError("[gateway] enforce_acp must be true or false")
    sp_id = cse.get("sp_id")
    if sp_id is not None and (not isinstance(sp_id, str) or not sp_id.strip("/")):
        raise ConfigError("[cse] sp_id must be a non-empty string")
    trace = gw.get("trace_file")
    return GatewayConfig(
        cse_id=cse["id"].lstrip("/"),
        cse_name=cse["name"],
        admin=str(cse.get("admin", "CAdmin")),
        cse_url=cse_url or cse.get("url"),
        store_url=store_url or store.get("url") or f"sqlite://{base}/gateway.db",
        kek_file=None if kek is None else base / str(kek),
        keys=tuple(keys),
        routes=routes,
        poa_ttl=float(gw.get("poa_ttl", 30.0)),
        suids=tuple(SUID(int(s)) for s in recv.get("suids", [13, 23])),
        shared_lifetime=timedelta(seconds=float(recv.get("shared_lifetime", 86400))),
        unique_lifetime=timedelta(seconds=float(recv.get("unique_lifetime", 3600))),
        unique_key_period=_whole_seconds(recv, "unique_key_period"),
        trace_file=None if trace is None else base / str(trace),
        mef=mef,
        enforce_acp=enforce_acp,
        sp_id=sp_id,
    )
