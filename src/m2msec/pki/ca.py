"""A small certificate authority for development and tests (TS-0003 8.1.2.2, 10.1.1, 10.1.4).

``DevCA.create`` makes a self-signed root (and optionally one intermediate)
whose certificates carry a critical nameConstraints extension with the
permitted subtrees given (dNSName for CSE-ID/FQDN certificates, URI for AE-ID
hosts and Node-ID URN prefixes, the M2M Device ID otherName for device
certificates), as 8.1.2.2 requires.  Issuance refuses identifiers outside those
subtrees, keys outside the key policy, and CSRs whose signature (proof of
possession) does not verify.  The CA can be saved to / loaded from a directory
with its private keys as passphrase-encrypted PKCS#8 PEM (mode 0600).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from m2msec.errors import IdentifierError
from m2msec.pki.crl import DEFAULT_CRL_VALIDITY, RevocationEntry, build_crl
from m2msec.pki.errors import CRLError, CSRError, IssuanceError, NameConstraintError
from m2msec.pki.identifiers import (
    CertificateFlavour,
    DeviceId,
    identifiers_in_names,
    san_entry,
    subject_alt_names,
)
from m2msec.pki.keypolicy import DEFAULT_KEY_POLICY, KeyPolicy, KeyType, PrivateKey, generate_private_key
from m2msec.pki.nameconstraints import first_violation, names_subject_to_constraints
from m2msec.pki.profile import build_ca_cert, build_leaf

CA_META = "ca.json"
REVOCATIONS = "revocations.json"
CASigner = Literal["root", "intermediate"]
_SIGNERS: tuple[CASigner, ...] = ("root", "intermediate")


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 (also when the file already exists)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def private_key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def build_name_constraints(
    permit_dns: Sequence[str] = (), permit_uri: Sequence[str] = (), permit_device: Sequence[str] = ()
) -> x509.NameConstraints | None:
    """Permitted subtrees; device subtrees are written ``<indication>/<arcs>``."""
    subtrees: list[x509.GeneralName] = [x509.DNSName(d.lower()) for d in permit_dns]
    subtrees += [x509.UniformResourceIdentifier(u) for u in permit_uri]
    for d in permit_device:
        if "/" not in d:
            raise IdentifierError(f"device subtree must be written <indication>/<arcs>: {d!r}")
        subtrees.append(DeviceId.parse(d).to_general_name())
    if not subtrees:
        return None
    return x509.NameConstraints(permitted_subtrees=subtrees, excluded_subtrees=None)


@dataclass(frozen=True)
class IssuedCertificate:
    certificate: x509.Certificate
    private_key: PrivateKey | None  # None when issued from a CSR
    chain: list[x509.Certificate]  # intermediates to send after the leaf (root not included)

    def __repr__(self) -> str:
        return f"IssuedCertificate(subject={self.certificate.subject.rfc4514_string()!r}, key=<hidden>)"


class DevCA:
    """Root CA with an optional intermediate; issues every oneM2M certificate flavour."""

    def __init__(
        self,
        *,
        name: str,
        root_cert: x509.Certificate,
        root_key: PrivateKey,
        intermediate_cert: x509.Certificate | None = None,
        intermediate_key: PrivateKey | None = None,
        key_policy: KeyPolicy = DEFAULT_KEY_POLICY,
        crl_url: str | None = None,
        ocsp_url: str | None = None,
    ) -> None:
        self.name = name
        self.root_cert = root_cert
        self._root_key = root_key
        self.intermediate_cert = intermediate_cert
        self._intermediate_key = intermediate_key
        self.key_policy = key_policy
        self.crl_url = crl_url
        self.ocsp_url = ocsp_url  # authorityInfoAccess id-ad-ocsp URI of issued leaves (RFC 6960)
        #: revoked certificates per signing CA, and the cRLNumber each CA's next CRL gets
        self.revoked: dict[CASigner, dict[int, RevocationEntry]] = {"root": {}, "intermediate": {}}
        self.next_crl_number: dict[CASigner, int] = {"root": 1, "intermediate": 1}

    def __repr__(self) -> str:
        return f"DevCA(name={self.name!r}, intermediate={self.intermediate_cert is not None}, keys=<hidden>)"

    # ------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        name: str,
        *,
        now: datetime,
        permit_dns: Sequence[str] = (),
        permit_uri: Sequence[str] = (),
        permit_device: Sequence[str] = (),
        intermediate: bool = False,
        key_type: KeyType = KeyType.EC_P256,
        validity: timedelta = timedelta(days=3650),
        key_policy: KeyPolicy = DEFAULT_KEY_POLICY,
        crl_url: str | None = None,
        root_crl_url: str | None = None,
        ocsp_url: str | None = None,
    ) -> DevCA:
        """``crl_url``: the cRLDistributionPoints URI of the leaves (the issuing CA's CRL);
        ``root_crl_url``: that of the intermediate (the root's CRL, which covers it).  A root
        without an intermediate carries none (nothing covers a trust anchor).  ``ocsp_url``:
        the authorityInfoAccess id-ad-ocsp URI of the leaves (``m2msec pki serve-ocsp``)."""
        if root_crl_url and not intermediate:
            raise ValueError("root_crl_url is the intermediate's distribution point: it needs intermediate=True")
        nc = build_name_constraints(permit_dns, permit_uri, permit_device)
        nb, na = now - timedelta(minutes=5), now + validity
        root_key = generate_private_key(key_type)
        root_subject = x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, name), x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Root CA")]
        )
        root = build_ca_cert(
            subject=root_subject, public_key=root_key.public_key(), issuer_cert=None, issuer_key=root_key,
            path_length=1 if intermediate else 0, name_constraints=nc, not_before=nb, not_after=na,
        )
        inter_cert = inter_key = None
        if intermediate:
            inter_key = generate_private_key(key_type)
            inter_subject = x509.Name(
                [x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                 x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Issuing CA")]
            )
            inter_cert = build_ca_cert(
                subject=inter_subject, public_key=inter_key.public_key(), issuer_cert=root, issuer_key=root_key,
                path_length=0, name_constraints=nc, not_before=nb, not_after=na,
                crl_urls=[root_crl_url] if root_crl_url else (),
            )
        return cls(name=name, root_cert=root, root_key=root_key, intermediate_cert=inter_cert,
                   intermediate_key=inter_key, key_policy=key_policy, crl_url=crl_url, ocsp_url=ocsp_url)

    # ------------------------------------------------------------ accessors
    @property
    def trust_anchor(self) -> x509.Certificate:
        return self.root_cert

    @property
    def chain(self) -> list[x509.Certificate]:
        """Certificates a peer sends after its leaf (the intermediate, if any)."""
        return [self.intermediate_cert] if self.intermediate_cert is not None else []

    @property
    def issuing_cert(self) -> x509.Certificate:
        return self.intermediate_cert if self.intermediate_cert is not None else self.root_cert

    @property
    def _issuing_key(self) -> PrivateKey:
        return self._intermediate_key if self._intermediate_key is not None else self._root_key

    def permitted_subtrees(self) -> list[x509.GeneralName]:
        try:
            nc = self.root_cert.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            return []
        return list(nc.permitted_subtrees or [])

    # ------------------------------------------------------------ issuance
    def check_names(self, flavour: CertificateFlavour, identifiers: Sequence[str]) -> None:
        """Raise NameConstraintError if the CA's constraints forbid any identifier."""
        names = [san_entry(flavour, i) for i in identifiers]
        for ca in [self.root_cert, *self.chain]:
            try:
                nc = ca.extensions.get_extension_for_class(x509.NameConstraints).value
            except x509.ExtensionNotFound:
                continue
            why = first_violation(names, nc)
            if why is not None:
                raise NameConstraintError(f"CA {self.name!r} may not issue {list(identifiers)}: {why}")

    def issue(
        self,
        flavour: CertificateFlavour,
        identifiers: Sequence[str],
        *,
        now: datetime,
        public_key: object | None = None,
        key_type: KeyType = KeyType.EC_P256,
        validity: timedelta = timedelta(days=365),
        extended_key_usage: Sequence[x509.ObjectIdentifier] | None = None,
    ) -> IssuedCertificate:
        """Issue a certificate of ``flavour``; generates the key pair unless ``public_key`` is given.

        ``extended_key_usage``: EKU OIDs of the leaf (default serverAuth + clientAuth).
        """
        if flavour is CertificateFlavour.RAW_PUBLIC_KEY:
            raise IssuanceError("raw public keys are not issued as certificates")
        if not identifiers:
            raise IssuanceError("at least one identifier is required")
        self.check_names(flavour, identifiers)
        key: PrivateKey | None = None
        if public_key is None:
            key = generate_private_key(key_type)
            public_key = key.public_key()
        self.key_policy.check(public_key)
        cert = build_leaf(
            flavour=flavour, identifiers=identifiers, public_key=public_key, issuer_cert=self.issuing_cert,
            issuer_key=self._issuing_key, not_before=now - timedelta(minutes=5), not_after=now + validity,
            extended_key_usage=extended_key_usage, crl_urls=[self.crl_url] if self.crl_url else (),
            ocsp_urls=[self.ocsp_url] if self.ocsp_url else (),
        )
        # Belt and braces: the finished certificate must satisfy every constraint on its path.
        for ca in [self.root_cert, *self.chain]:
            try:
                nc = ca.extensions.get_extension_for_class(x509.NameConstraints).value
            except x509.ExtensionNotFound:
                continue
            why = first_violation(names_subject_to_constraints(cert), nc)
            if why is not None:
                raise NameConstraintError(f"issued certificate would violate CA constraints: {why}")
        return IssuedCertificate(cert, key, self.chain)

    def issue_from_csr(
        self,
        csr: x509.CertificateSigningRequest,
        flavour: CertificateFlavour,
        identifiers: Sequence[str],
        *,
        now: datetime,
        validity: timedelta = timedelta(days=365),
        extended_key_usage: Sequence[x509.ObjectIdentifier] | None = None,
        allow_added_identifiers: bool = False,
    ) -> IssuedCertificate:
        """Issue for a CSR (10.1.4) after proof of possession and key policy checks.

        ``identifiers`` are the identifiers the caller (e.g. the EST RA) has
        authorised.  If the CSR carries a subjectAltName, the identifiers it
        asks for in the flavour's name form must be exactly these - or, with
        ``allow_added_identifiers`` (the RA adds identifiers, seed 004 8.3.3.3
        step 11), a subset of them.
        """
        try:
            valid = csr.is_signature_valid
        except Exception as exc:  # unsupported algorithm etc.
            raise CSRError(f"CSR signature cannot be checked: {type(exc).__name__}") from exc
        if not valid:
            raise CSRError("CSR signature does not verify (no proof of possession)")
        public_key = csr.public_key()
        self.key_policy.check(public_key)
        try:
            requested = subject_alt_names(csr)
        except ValueError as exc:
            raise CSRError("CSR extensions are malformed") from exc
        if requested:
            asked = sorted(identifiers_in_names(requested, flavour))
            from m2msec.pki.identifiers import canonical_identifier

            granted = sorted(canonical_identifier(flavour, i) for i in identifiers)
            if (not set(asked) <= set(granted)) if allow_added_identifiers else asked != granted:
                raise CSRError(f"CSR asks for {asked} but {granted} were authorised for {flavour.value}")
        return self.issue(flavour, identifiers, now=now, public_key=public_key, validity=validity,
                          extended_key_usage=extended_key_usage)

    # ------------------------------------------------------------ revocation (8.1.2.2, RFC 5280 5)
    @property
    def issuing_signer(self) -> CASigner:
        """The CA that signs leaves: ``"intermediate"`` if there is one, else ``"root"``."""
        return "intermediate" if self.intermediate_cert is not None else "root"

    def _signer(self, which: CASigner) -> tuple[x509.Certificate, PrivateKey]:
        if which == "root":
            return self.root_cert, self._root_key
        if which == "intermediate" and self.intermediate_cert is not None and self._intermediate_key is not None:
            return self.intermediate_cert, self._intermediate_key
        raise CRLError(f"CA {self.name!r} has no {which} CA")

    def signer_of(self, cert: x509.Certificate) -> CASigner:
        """Which of this CA's certificates signed ``cert`` (CRLError if neither)."""
        for which in _SIGNERS:
            try:
                ca_cert, _ = self._signer(which)
            except CRLError:
                continue
            if cert.issuer == ca_cert.subject and cert != ca_cert:
                try:
                    cert.verify_directly_issued_by(ca_cert)
                except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                    continue
                return which
        raise CRLError(f"certificate {cert.serial_number:x} was not issued by CA {self.name!r}")

    def revoke(
        self,
        certificate_or_serial: x509.Certificate | int,
        *,
        now: datetime,
        reason: x509.ReasonFlags | None = None,
        signer: CASigner | None = None,
    ) -> RevocationEntry:
        """Put a certificate on its signer's revocation list (revocation date ``now``).

        A certificate's signer is found from its issuer and signature; a bare
        serial number is taken to be of the CA given as ``signer`` (default: the
        issuing CA, i.e. a leaf).  CRLError if already revoked, for the root
        certificate itself, or for reason removeFromCRL (delta CRLs only).
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        if reason is x509.ReasonFlags.remove_from_crl:
            raise CRLError("removeFromCRL is not a revocation: use release_hold and list it in a delta CRL")
        if isinstance(certificate_or_serial, x509.Certificate):
            which = self.signer_of(certificate_or_serial)
            if signer is not None and signer != which:
                raise CRLError(f"the certificate was signed by the {which} CA, not the {signer} CA")
            serial = certificate_or_serial.serial_number
        else:
            which = signer or self.issuing_signer
            serial = int(certificate_or_serial)
            self._signer(which)
        if serial <= 0:
            raise CRLError("serial numbers are positive")
        if which == "root" and serial == self.root_cert.serial_number:
            raise CRLError("the root certificate cannot be revoked by its own CRL")
        if serial in self.revoked[which]:
            raise CRLError(f"certificate {serial:x} is already revoked")
        entry = RevocationEntry(serial, now, reason)
        self.revoked[which][serial] = entry
        return entry

    def issue_crl(
        self, *, now: datetime, signer: CASigner | None = None, validity: timedelta = DEFAULT_CRL_VALIDITY,
        freshest_url: str | None = None,
    ) -> x509.CertificateRevocationList:
        """Sign the complete CRL of ``signer`` (default: the issuing CA) with its next cRLNumber.

        The number is consumed: persist with :meth:`save_revocations` before publishing the CRL.
        ``freshest_url``: where its delta CRLs are published (a freshestCRL extension, RFC 5280 5.2.6).
        """
        which = signer or self.issuing_signer
        cert, key = self._signer(which)
        number = self.next_crl_number[which]
        crl = build_crl(issuer_cert=cert, issuer_key=key, entries=self.revoked[which].values(), number=number,
                        this_update=now, validity=validity, freshest_urls=[freshest_url] if freshest_url else ())
        self.next_crl_number[which] = number + 1
        return crl

    def release_hold(self, certificate_or_serial: x509.Certificate | int, *,
                     signer: CASigner | None = None) -> RevocationEntry:
        """Take a certificate on hold (reason certificateHold) off its signer's revocation list
        (RFC 5280 5.3.1); the next delta CRL should list it with removeFromCRL
        (:meth:`issue_delta_crl` ``released=``).  CRLError when it is not on hold."""
        if isinstance(certificate_or_serial, x509.Certificate):
            which = signer or self.signer_of(certificate_or_serial)
            serial = certificate_or_serial.serial_number
        else:
            which, serial = signer or self.issuing_signer, int(certificate_or_serial)
        entry = self.revoked[which].get(serial)
        if entry is None or entry.reason is not x509.ReasonFlags.certificate_hold:
            raise CRLError(f"certificate {serial:x} is not on hold")
        del self.revoked[which][serial]
        return entry

    def issue_delta_crl(
        self, *, base_number: int, now: datetime, signer: CASigner | None = None,
        validity: timedelta = timedelta(days=1), released: Iterable[int] = (),
    ) -> x509.CertificateRevocationList:
        """Sign a delta CRL (RFC 5280 5.2.4) of ``signer`` for the complete CRL ``base_number``,
        with the next cRLNumber of the same sequence (consumed like :meth:`issue_crl`).

        It lists every certificate revoked now (a superset of the changes since the base: the
        CA keeps no history; listing an unchanged revocation again is harmless) and each serial
        of ``released`` with reason removeFromCRL (holds released since the base, see
        :meth:`release_hold`).  ``validity`` (default one day) is usually much shorter than the
        base's."""
        which = signer or self.issuing_signer
        cert, key = self._signer(which)
        number = self.next_crl_number[which]
        if not 0 < base_number < number:
            raise CRLError(f"base_number must be a complete CRL already issued (1..{number - 1})")
        entries = list(self.revoked[which].values())
        listed = {e.serial_number for e in entries}
        entries += [RevocationEntry(s, now, x509.ReasonFlags.remove_from_crl) for s in dict.fromkeys(released)
                    if s not in listed]
        crl = build_crl(issuer_cert=cert, issuer_key=key, entries=entries, number=number, this_update=now,
                        validity=validity, delta_of=base_number)
        self.next_crl_number[which] = number + 1
        return crl

    def save_revocations(self, directory: Path | str) -> None:
        """Write the revocation lists and CRL numbers to ``directory/revocations.json`` (atomically)."""
        doc = {"format": 1, "signers": {
            w: {"next_crl_number": self.next_crl_number[w],
                "revoked": [e.to_json() for e in sorted(self.revoked[w].values(), key=lambda e: e.serial_number)]}
            for w in _SIGNERS}}
        d = Path(directory)
        tmp = d / (REVOCATIONS + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, d / REVOCATIONS)

    def _load_revocations(self, directory: Path) -> None:
        path = directory / REVOCATIONS
        if not path.exists():
            return
        doc = json.loads(path.read_text())
        for w in _SIGNERS:
            part = doc["signers"].get(w, {})
            self.next_crl_number[w] = int(part.get("next_crl_number", 1))
            entries = [RevocationEntry.from_json(e) for e in part.get("revoked", [])]
            self.revoked[w] = {e.serial_number: e for e in entries}

    # ------------------------------------------------------------ persistence
    def save(self, directory: Path | str, passphrase: bytes) -> None:
        """Write certificates (PEM) and passphrase-encrypted keys (0600) to ``directory``."""
        if not passphrase:
            raise ValueError("a passphrase is required to save CA keys")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        pem = serialization.Encoding.PEM
        (d / "root.crt.pem").write_bytes(self.root_cert.public_bytes(pem))
        write_private_file(d / "root.key.pem", private_key_pem(self._root_key, passphrase))
        if self.intermediate_cert is not None and self._intermediate_key is not None:
            (d / "intermediate.crt.pem").write_bytes(self.intermediate_cert.public_bytes(pem))
            write_private_file(d / "intermediate.key.pem", private_key_pem(self._intermediate_key, passphrase))
        meta: dict[str, object] = {"name": self.name, "intermediate": self.intermediate_cert is not None, "format": 1}
        if self.crl_url:
            meta["crl_url"] = self.crl_url
        if self.ocsp_url:
            meta["ocsp_url"] = self.ocsp_url
        (d / CA_META).write_text(json.dumps(meta, indent=2) + "\n")
        self.save_revocations(d)

    @classmethod
    def load(cls, directory: Path | str, passphrase: bytes, *, key_policy: KeyPolicy = DEFAULT_KEY_POLICY) -> DevCA:
        d = Path(directory)
        try:
            meta = json.loads((d / CA_META).read_text())
            root = x509.load_pem_x509_certificate((d / "root.crt.pem").read_bytes())
            root_key = serialization.load_pem_private_key((d / "root.key.pem").read_bytes(), passphrase)
            inter = inter_key = None
            if meta.get("intermediate"):
                inter = x509.load_pem_x509_certificate((d / "intermediate.crt.pem").read_bytes())
                inter_key = serialization.load_pem_private_key((d / "intermediate.key.pem").read_bytes(), passphrase)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise IssuanceError(f"cannot load CA from {d}: {type(exc).__name__} (wrong passphrase?)") from None
        ca = cls(name=str(meta["name"]), root_cert=root, root_key=root_key,  # type: ignore[arg-type]
                 intermediate_cert=inter, intermediate_key=inter_key, key_policy=key_policy,  # type: ignore[arg-type]
                 crl_url=meta.get("crl_url") or None, ocsp_url=meta.get("ocsp_url") or None)
        try:
            ca._load_revocations(d)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CRLError(f"cannot load {d / REVOCATIONS}: {type(exc).__name__}") from None
        return ca
