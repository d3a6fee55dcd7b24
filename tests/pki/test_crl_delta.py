"""Delta CRLs (TS-0003 8.1.2.2 with RFC 5280 5.2.4 deltaCRLIndicator, 5.2.6 freshestCRL, 5.3.1
removeFromCRL, 6.3.3): the store keeps deltas beside their base, the status is the base updated
by the newest applicable delta, freshness comes from the delta; refusals for foreign, forged,
mismatched, older and base-less deltas; the dev CA issues them.  CRLs are built with
cryptography's CertificateRevocationListBuilder (through ``build_crl``/``DevCA``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from _pki_support import CSE, NOW, make_ca
from m2msec.pki import (
    CertificateFlavour,
    CertificateVerificationError,
    CRLError,
    CRLFetchError,
    CRLStore,
    DevCA,
    IssuedCertificate,
    PeerCertInfo,
    RevocationStatus,
    VerificationReason,
    delta_base_number,
    freshest_crl_points,
    is_delta_crl,
    load_crl_files,
    verify_fetched_crl,
    verify_peer_certificate,
)
from m2msec.pki.crl import MAX_DELTAS_PER_BASE, RevocationEntry, build_crl, crl_number

R = VerificationReason
F = CertificateFlavour
GOOD = RevocationStatus.GOOD
UNDETERMINED = RevocationStatus.UNDETERMINED
EXPECTED = PeerCertInfo(F.CSE_ID, CSE)
HOLD = x509.ReasonFlags.certificate_hold
KEY_COMPROMISE = x509.ReasonFlags.key_compromise
REMOVE = x509.ReasonFlags.remove_from_crl
T0 = NOW - timedelta(hours=1)
PEM = serialization.Encoding.PEM


class World:
    """A DevCA (root + intermediate), three leaves and a current root CRL."""

    def __init__(self) -> None:
        self.ca = make_ca("Delta SP")
        self.a, self.b, self.c = (self.ca.issue(F.CSE_ID, [CSE], now=NOW - timedelta(hours=2)) for _ in range(3))
        self.root_crl = self.ca.issue_crl(now=T0, signer="root")

    @property
    def cert(self) -> x509.Certificate:
        return self.ca.intermediate_cert  # type: ignore[return-value]

    @property
    def key(self) -> object:
        return self.ca._intermediate_key

    def crl(self, number: int, entries: list[tuple[IssuedCertificate, x509.ReasonFlags | None]] = (), *,
            delta_of: int | None = None, this_update: datetime = T0, validity: timedelta = timedelta(days=7),
            key: object = None, freshest: list[str] = ()) -> x509.CertificateRevocationList:
        return build_crl(issuer_cert=self.cert, issuer_key=key or self.key,  # type: ignore[arg-type]
                         entries=[RevocationEntry(i.certificate.serial_number, NOW - timedelta(hours=1, minutes=30), r)
                                  for i, r in entries],
                         number=number, this_update=this_update, validity=validity, delta_of=delta_of,
                         freshest_urls=freshest)


@pytest.fixture(scope="module")
def w() -> World:
    return World()


def verify(w: World, leaf: IssuedCertificate, crls: list[x509.CertificateRevocationList] | CRLStore, policy: str,
           now: datetime = NOW) -> tuple[RevocationStatus, ...]:
    store = crls if isinstance(crls, CRLStore) else CRLStore([*crls, w.root_crl])
    return verify_peer_certificate([leaf.certificate, *leaf.chain], expected=EXPECTED,
                                   trust_anchors=[w.ca.trust_anchor], now=now, crls=store,
                                   revocation=policy).revocation


def refused(w: World, leaf: IssuedCertificate, crls: list[x509.CertificateRevocationList], policy: str,
            now: datetime = NOW) -> CertificateVerificationError:
    with pytest.raises(CertificateVerificationError) as e:
        verify(w, leaf, crls, policy, now)
    return e.value


POLICIES = ["if-available", "require"]


# ------------------------------------------------------------------ status: base updated by the delta


@pytest.mark.parametrize("policy", POLICIES)
def test_revoked_only_in_the_delta_is_revoked(w: World, policy: str) -> None:
    base = w.crl(10, freshest=["http://crl.example.com/delta.crl"])
    delta = w.crl(11, [(w.a, KEY_COMPROMISE)], delta_of=10, validity=timedelta(hours=2))
    assert verify(w, w.a, [base], policy) == (GOOD, GOOD)  # the base alone does not know
    e = refused(w, w.a, [base, delta], policy)
    assert e.reason_code is R.REVOKED and "keyCompromise, delta CRL of" in e.detail
    assert verify(w, w.b, [delta, base], policy) == (GOOD, GOOD)  # order of arrival does not matter


@pytest.mark.parametrize("policy", POLICIES)
def test_remove_from_crl_releases_a_hold_of_the_base(w: World, policy: str) -> None:
    base = w.crl(20, [(w.a, HOLD), (w.b, KEY_COMPROMISE)])
    assert refused(w, w.a, [base], policy).reason_code is R.REVOKED  # on hold = revoked (P11)
    delta = w.crl(21, [(w.a, REMOVE), (w.b, REMOVE)], delta_of=20, validity=timedelta(hours=2))
    assert verify(w, w.a, [base, delta], policy) == (GOOD, GOOD)  # RFC 5280 5.3.1: released
    # removeFromCRL does not undo a permanent revocation of the base (only a hold, see crl.py)
    assert refused(w, w.b, [base, delta], policy).reason_code is R.REVOKED
    # a hold that appears in the delta only revokes
    delta2 = w.crl(22, [(w.c, HOLD)], delta_of=20, validity=timedelta(hours=2))
    e = refused(w, w.c, [base, delta2], policy)
    assert e.reason_code is R.REVOKED and "certificateHold, delta CRL" in e.detail
    # and the newer delta (22) replaced 21: its list no longer releases a's hold
    assert refused(w, w.a, [base, delta, delta2], policy).reason_code is R.REVOKED


def test_the_newest_applicable_delta_wins_and_older_ones_are_dropped(w: World) -> None:
    base = w.crl(30)
    old = w.crl(31, [(w.a, HOLD)], delta_of=30, this_update=NOW - timedelta(hours=3), validity=timedelta(hours=2))
    new = w.crl(32, [(w.a, REMOVE)], delta_of=30, validity=timedelta(hours=2))
    store = CRLStore([base, old])
    assert store.add(new) is True and store.deltas_for(w.cert.subject) == (new,)  # 32 supersedes 31
    assert store.add(old) is False  # a replayed older delta changes nothing
    assert verify(w, w.a, [*store, w.root_crl], "require") == (GOOD, GOOD)  # the stale 31 is gone
    # a delta as old as its base (cRLNumber <= the base's) is ignored and dropped
    stale_delta = w.crl(33, [(w.b, KEY_COMPROMISE)], delta_of=30)
    newer_base = w.crl(34)
    store2 = CRLStore([stale_delta, base])
    assert store2.deltas_for(w.cert.subject) == (stale_delta,)
    gen = store2.generation
    assert store2.add(newer_base) and store2.deltas_for(w.cert.subject) == () and store2.generation > gen
    assert store2.add(stale_delta) is False
    assert verify(w, w.b, [*store2, w.root_crl], "require") == (GOOD, GOOD)


def test_a_delta_for_a_newer_base_is_not_applied(w: World) -> None:
    base = w.crl(40, [(w.a, HOLD)], validity=timedelta(days=7))
    ahead = w.crl(46, [(w.a, REMOVE), (w.b, KEY_COMPROMISE)], delta_of=45, validity=timedelta(hours=2))
    # not applied: a's hold is not released by it ...
    assert refused(w, w.a, [base, ahead], "if-available").reason_code is R.REVOKED
    # ... but what it lists as revoked is revoked (a signed statement later than the base)
    e = refused(w, w.b, [base, ahead], "if-available")
    assert e.reason_code is R.REVOKED and "delta CRL" in e.detail
    # ... and it gives no freshness: with a stale base, require has no current status
    stale_base = w.crl(40, this_update=NOW - timedelta(days=8), validity=timedelta(days=7))
    e = refused(w, w.c, [stale_base, ahead], "require")
    assert e.reason_code is R.REVOCATION_UNKNOWN and "the CRL of" in e.detail and "is stale" in e.detail
    # whereas a delta that applies (BaseCRLNumber 40 <= 40 < 41) makes the stale base current (6.3.3 (a)(2))
    fits = w.crl(41, delta_of=40, validity=timedelta(hours=2))
    assert verify(w, w.c, [stale_base, fits], "require") == (GOOD, GOOD)
    # a delta for an older base (BaseCRLNumber 38 <= 40) applies as well: it lists every change since 38
    older_base_delta = w.crl(42, [(w.c, KEY_COMPROMISE)], delta_of=38, validity=timedelta(hours=2))
    assert refused(w, w.c, [stale_base, older_base_delta], "require").reason_code is R.REVOKED


@pytest.mark.parametrize("policy", POLICIES)
def test_stale_delta_with_a_fresh_base_is_not_current(w: World, policy: str) -> None:
    base = w.crl(50, validity=timedelta(days=7))
    delta = w.crl(51, delta_of=50, this_update=NOW - timedelta(hours=3), validity=timedelta(hours=2))
    if policy == "require":
        e = refused(w, w.a, [base, delta], policy)
        assert e.reason_code is R.REVOCATION_UNKNOWN and "the delta CRL of" in e.detail and "is stale" in e.detail
    else:
        assert verify(w, w.a, [base, delta], policy)[0] is UNDETERMINED
    # a stale delta still proves revocation
    revoking = w.crl(52, [(w.a, KEY_COMPROMISE)], delta_of=50, this_update=NOW - timedelta(hours=3),
                     validity=timedelta(hours=2))
    assert refused(w, w.a, [base, revoking], policy).reason_code is R.REVOKED
    # a delta not valid yet is not current either
    future = w.crl(53, delta_of=50, this_update=NOW + timedelta(minutes=10), validity=timedelta(hours=2))
    if policy == "require":
        e = refused(w, w.a, [base, future], policy)
        assert e.reason_code is R.REVOCATION_UNKNOWN and "is not valid before" in e.detail


@pytest.mark.parametrize("policy", POLICIES)
def test_delta_without_base_is_not_used_alone(w: World, policy: str) -> None:
    delta = w.crl(61, [(w.b, KEY_COMPROMISE)], delta_of=60, validity=timedelta(hours=2))
    if policy == "require":
        e = refused(w, w.a, [delta], policy)
        assert e.reason_code is R.REVOCATION_UNKNOWN and "only a delta CRL" in e.detail
    else:
        assert verify(w, w.a, [delta], policy)[0] is UNDETERMINED
    assert refused(w, w.b, [delta], policy).reason_code is R.REVOKED  # its revocations count


@pytest.mark.parametrize("policy", POLICIES)
def test_forged_or_foreign_delta_is_refused(w: World, policy: str) -> None:
    evil = DevCA.create("Evil Delta", now=NOW - timedelta(days=1), intermediate=False)
    base = w.crl(70)
    forged = w.crl(71, [(w.a, KEY_COMPROMISE)], delta_of=70, key=evil._root_key)
    # beside a usable base it is not ignored: in the store (which holds no keys) it may have
    # displaced the genuine deltas of that base, so the base gives no status (test_crl_delta_eviction)
    e = refused(w, w.a, [base, forged], policy)
    assert e.reason_code is R.CRL_INVALID and "delta CRL of" in e.detail and "signature does not verify" in e.detail
    e = refused(w, w.a, [forged], policy)  # the issuer's only CRL: unusable
    assert e.reason_code is R.CRL_INVALID and "signature does not verify" in e.detail
    with pytest.raises(CRLFetchError, match="signature does not verify"):
        verify_fetched_crl(forged, [w.ca.trust_anchor, w.cert], now=NOW)
    # another CA's genuine delta is another issuer's: it never applies to our base
    foreign = build_crl(issuer_cert=evil.trust_anchor, issuer_key=evil._root_key, entries=[
        RevocationEntry(w.a.certificate.serial_number, T0, KEY_COMPROMISE)], number=71, this_update=T0, delta_of=70)
    assert verify(w, w.a, [base, foreign], policy) == (GOOD, GOOD)
    with pytest.raises(CRLFetchError, match="not a configured issuer"):
        verify_fetched_crl(foreign, [w.ca.trust_anchor, w.cert], now=NOW)
    assert verify_fetched_crl(w.crl(72, delta_of=70), [w.ca.trust_anchor, w.cert], now=NOW) == w.cert


def test_delta_of_another_key_or_scope_does_not_apply(w: World) -> None:
    base = w.crl(80, this_update=NOW - timedelta(days=8), validity=timedelta(days=7))  # stale: needs a delta
    b = (x509.CertificateRevocationListBuilder().issuer_name(w.cert.subject).last_update(T0)
         .next_update(NOW + timedelta(hours=1)).add_extension(x509.CRLNumber(81), critical=False)
         .add_extension(x509.DeltaCRLIndicator(80), critical=True))
    no_aki = b.sign(w.key, hashes.SHA256())  # type: ignore[arg-type]
    scoped = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(w.cert.public_key()),  # type: ignore[arg-type]
                             critical=False).add_extension(
        x509.IssuingDistributionPoint(None, None, True, False, None, False, False), critical=True).sign(
        w.key, hashes.SHA256())  # type: ignore[arg-type]
    for d in (no_aki, scoped):
        assert is_delta_crl(d) and delta_base_number(d) == 80
        e = refused(w, w.a, [base, d], "require")
        assert e.reason_code is R.REVOCATION_UNKNOWN and "the CRL of" in e.detail  # the base's staleness
    # with the same key id and scope it applies
    same = w.crl(81, delta_of=80, validity=timedelta(hours=2))
    assert verify(w, w.a, [base, same], "require") == (GOOD, GOOD)


def test_base_without_freshest_crl_unchanged(w: World) -> None:
    base = w.crl(90, [(w.a, KEY_COMPROMISE)])
    assert freshest_crl_points(base) == []
    assert refused(w, w.a, [base], "require").reason_code is R.REVOKED
    assert verify(w, w.b, [base], "require") == (GOOD, GOOD)
    stale = w.crl(90, this_update=NOW - timedelta(days=8))
    assert refused(w, w.b, [stale], "require").reason_code is R.REVOCATION_UNKNOWN
    # a base that names a freshestCRL but whose delta was not obtained decides alone (as before)
    named = w.crl(91, freshest=["http://crl.example.com/d.crl"])
    assert verify(w, w.b, [named], "require") == (GOOD, GOOD)


# ------------------------------------------------------------------ store


def test_store_holds_deltas_beside_the_base(w: World, tmp_path: Path) -> None:
    base = w.crl(100)
    deltas = [w.crl(100 + i, delta_of=99 + i) for i in range(1, MAX_DELTAS_PER_BASE + 3)]  # none supersedes another
    store = CRLStore([base])
    gen = store.generation
    for d in deltas:
        assert store.add(d) is True
    assert store.generation == gen + len(deltas)
    held = store.deltas_for(w.cert.subject)
    # the newest ones, but the one that applies to the held base 100 (delta 101) is never evicted
    newest = sorted((crl_number(d) for d in deltas), reverse=True)[:MAX_DELTAS_PER_BASE - 1]
    assert [crl_number(d) for d in held] == [*newest, 101]
    assert store.complete_for(w.cert.subject) == (base,)
    assert store.for_issuer(w.cert.subject) == (base, *held)
    assert len(store) == 1 + MAX_DELTAS_PER_BASE and list(store) == [base, *held]
    copy = CRLStore()
    copy.replace(list(store))  # a SIGHUP reload that keeps fetched CRLs keeps the deltas too
    assert copy.deltas_for(w.cert.subject) == held
    # CRL files may hold deltas (PEM with several CRLs)
    f = tmp_path / "crls.pem"
    f.write_bytes(base.public_bytes(PEM) + deltas[0].public_bytes(PEM))
    loaded = CRLStore(load_crl_files([f]))
    assert loaded.complete_for(w.cert.subject) == (base,) and loaded.deltas_for(w.cert.subject) == (deltas[0],)


def test_file_delta_revokes_through_load_crl_files(w: World, tmp_path: Path) -> None:
    base = w.crl(110)
    delta = w.crl(111, [(w.a, KEY_COMPROMISE)], delta_of=110)
    (tmp_path / "base.crl").write_bytes(base.public_bytes(serialization.Encoding.DER))
    (tmp_path / "delta.crl").write_bytes(delta.public_bytes(PEM))
    store = CRLStore([*load_crl_files([tmp_path / "base.crl", tmp_path / "delta.crl"]), w.root_crl])
    assert refused(w, w.a, list(store), "if-available").reason_code is R.REVOKED
    assert verify(w, w.b, store, "require") == (GOOD, GOOD)


# ------------------------------------------------------------------ CA side


def test_build_crl_delta_and_freshest_profile(w: World) -> None:
    base = w.crl(120, freshest=["http://crl.example.com/delta.crl", "ldap://dir/x"])
    ext = base.extensions.get_extension_for_class(x509.FreshestCRL)
    assert not ext.critical and not is_delta_crl(base) and delta_base_number(base) is None
    assert freshest_crl_points(base) == ["http://crl.example.com/delta.crl"]  # ldap is not followed
    delta = w.crl(121, [(w.a, REMOVE)], delta_of=120)
    ind = delta.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    assert ind.critical and ind.value.crl_number == 120 and crl_number(delta) == 121
    assert freshest_crl_points(delta) == []
    entry = delta.get_revoked_certificate_by_serial_number(w.a.certificate.serial_number)
    assert entry is not None and entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is REMOVE
    with pytest.raises(CRLError, match="BaseCRLNumber"):
        w.crl(5, delta_of=5)
    with pytest.raises(CRLError, match="removeFromCRL entries belong in delta CRLs"):
        w.crl(5, [(w.a, REMOVE)])
    with pytest.raises(CRLError, match="freshestCRL belongs in complete CRLs"):
        w.crl(6, delta_of=5, freshest=["http://x/d.crl"])


def test_devca_issues_delta_crls_and_releases_holds() -> None:
    ca = make_ca("Delta Dev SP")
    held, kept = (ca.issue(F.CSE_ID, [CSE], now=NOW - timedelta(hours=2)) for _ in range(2))
    root_crl = ca.issue_crl(now=T0, signer="root")
    ca.revoke(held.certificate, now=NOW - timedelta(minutes=50), reason=HOLD)
    base = ca.issue_crl(now=T0, freshest_url="http://crl.example.com/intermediate-delta.crl")
    assert crl_number(base) == 1 and freshest_crl_points(base) == ["http://crl.example.com/intermediate-delta.crl"]
    with pytest.raises(CRLError, match="base_number"):
        ca.issue_delta_crl(base_number=2, now=NOW)
    with pytest.raises(CRLError, match="not on hold"):
        ca.release_hold(kept.certificate)
    with pytest.raises(CRLError, match="use release_hold"):
        ca.revoke(kept.certificate, now=NOW, reason=REMOVE)
    ca.release_hold(held.certificate)
    ca.revoke(kept.certificate, now=NOW - timedelta(minutes=30), reason=KEY_COMPROMISE)
    delta = ca.issue_delta_crl(base_number=1, now=NOW - timedelta(minutes=5), released=[held.certificate.serial_number])
    assert crl_number(delta) == 2 and delta_base_number(delta) == 1 and ca.next_crl_number["intermediate"] == 3
    assert delta.next_update_utc - delta.last_update_utc == timedelta(days=1)

    def check(leaf: IssuedCertificate, crls: list[x509.CertificateRevocationList]) -> tuple[RevocationStatus, ...]:
        return verify_peer_certificate([leaf.certificate, *leaf.chain], expected=EXPECTED,
                                       trust_anchors=[ca.trust_anchor], now=NOW, crls=[*crls, root_crl],
                                       revocation="require").revocation

    with pytest.raises(CertificateVerificationError) as e:
        check(held, [base])
    assert e.value.reason_code is R.REVOKED
    assert check(held, [base, delta]) == (GOOD, GOOD)  # the hold is released by the delta
    with pytest.raises(CertificateVerificationError) as e:
        check(kept, [base, delta])  # revoked after the base: only the delta knows
    assert e.value.reason_code is R.REVOKED


# ------------------------------------------------------------------ CLI and OpenSSL


def test_cli_issues_base_with_freshest_url_and_delta_and_openssl_agrees(tmp_path: Path) -> None:
    import shutil
    import subprocess
    from datetime import UTC

    from typer.testing import CliRunner

    from m2msec.pki.cli import app

    env = {"M2MSEC_CA_PASSPHRASE": "delta-cli-pass"}
    runner = CliRunner()

    def cli(*args: str) -> object:
        return runner.invoke(app, list(args), env=env)

    d = tmp_path / "ca"
    r = cli("init-ca", str(d), "--name", "CLI Delta SP", "--permit-dns", "m2m.example.com", "--intermediate")
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    for stem in ("good", "bad"):
        r = cli("issue", str(d), "--flavour", "cse-id", "--id", CSE, "--out", str(tmp_path / stem))
        assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    r = cli("crl", str(d), "--out", str(tmp_path / "base.crl"), "--freshest-url", "http://crl.example.com/d.crl")
    assert r.exit_code == 0 and "crl_number: 1" in r.output, r.output  # type: ignore[attr-defined]
    r = cli("revoke", str(d), "--cert", str(tmp_path / "bad.crt.pem"), "--reason", "keyCompromise")
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    r = cli("crl", str(d), "--out", str(tmp_path / "delta.crl"), "--delta-of", "1")
    out = r.output  # type: ignore[attr-defined]
    assert r.exit_code == 0 and "crl_number: 2" in out and "delta_of: 1" in out and "revoked: 1" in out, out
    r = cli("crl", str(d), "--ca", "root", "--out", str(tmp_path / "root.crl"))
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    r = cli("crl", str(d), "--out", str(tmp_path / "x.crl"), "--delta-of", "1", "--freshest-url", "http://x/d.crl")
    assert r.exit_code == 1 and "cannot go with --delta-of" in r.output  # type: ignore[attr-defined]
    r = cli("crl", str(d), "--out", str(tmp_path / "x.crl"), "--delta-of", "99")
    assert r.exit_code == 1 and "base_number" in r.output  # type: ignore[attr-defined]
    base = x509.load_pem_x509_crl((tmp_path / "base.crl").read_bytes())
    delta = x509.load_pem_x509_crl((tmp_path / "delta.crl").read_bytes())
    assert freshest_crl_points(base) == ["http://crl.example.com/d.crl"] and delta_base_number(delta) == 1
    assert delta.next_update_utc - delta.last_update_utc == timedelta(days=1)

    ca = DevCA.load(d, env["M2MSEC_CA_PASSPHRASE"].encode())
    (tmp_path / "root.pem").write_bytes(ca.root_cert.public_bytes(PEM))
    (tmp_path / "inter.pem").write_bytes(ca.intermediate_cert.public_bytes(PEM))  # type: ignore[union-attr]
    openssl = shutil.which("openssl")
    now = datetime.now(UTC)
    p = lambda n: str(tmp_path / n)
    for name in ("good", "bad"):
        cert = x509.load_pem_x509_certificate((tmp_path / f"{name}.crt.pem").read_bytes())
        for crls in (["base.crl", "root.crl"], ["base.crl", "delta.crl", "root.crl"]):
            store = CRLStore(load_crl_files([p(c) for c in crls]))
            try:
                verify_peer_certificate([cert, ca.intermediate_cert], expected=EXPECTED,  # type: ignore[list-item]
                                        trust_anchors=[ca.trust_anchor], now=now, crls=store, revocation="require")
                ours = True
            except CertificateVerificationError as exc:
                assert exc.reason_code is R.REVOKED
                ours = False
            assert ours is not (name == "bad" and "delta.crl" in crls)
            if openssl is None:
                continue
            args = [openssl, "verify", "-crl_check_all", "-use_deltas", "-CAfile", p("root.pem"),
                    "-untrusted", p("inter.pem")]
            for c in crls:
                args += ["-CRLfile", p(c)]
            res = subprocess.run([*args, p(f"{name}.crt.pem")], capture_output=True, text=True, timeout=20, check=False)
            assert (res.returncode == 0) is ours, (name, crls, res.stdout, res.stderr)
