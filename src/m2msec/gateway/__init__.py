"""``m2msec gateway``: an HTTP sidecar that makes an unmodified CSE (ACME) carry ESPrim
(TS-0003 8.4; TS-0004 7.5.1.2.11, 7.5.1.2.13, 7.6.2; TS-0009 HTTP binding).

What it adds in front of the CSE (everything else is proxied unchanged: method, path,
query, headers, status, body):

* **Transit for AE-to-AE ESPrim.**  A NOTIFY whose Content is ``m2m:seci`` addressed to an
  ``<AE>`` registered on the CSE is forwarded to the AE's pointOfAccess (looked up with a
  RETRIEVE of the target as the configured admin originator, cached ``poa_ttl`` seconds,
  dropped on any successful UPDATE/DELETE through the gateway and on a transport failure);
  the AE's response is relayed unchanged (status, X-M2M-RSC incl. 4111-4116/5210/5211,
  X-M2M-RI, body).  First the gateway makes the CSE's access-control decision
  (:mod:`m2msec.gateway.acp`): the originator needs NOTIFY privilege on the target (the
  AE itself, the admin, or a ``pv`` rule of one of its ``acpi`` ACPs, whose ``actw`` time
  windows are matched against the gateway's clock and ``acip`` addresses against the TCP
  peer of the Notify, other contexts failing closed; an ``acor`` <group> grants its
  members); otherwise 4103 ORIGINATOR_HAS_NO_PRIVILEGE without contacting the AE.  The ACPs
  and <group>s are retrieved as the admin and cached with the pointOfAccess; any
  UPDATE/DELETE through the gateway drops them all.  The gateway never decrypts this traffic.  ACME itself refuses such
  a NOTIFY (4000) and turns ESPrim RSCs from an AE into 5103, hence this path.
* **The CSE as ESPrim Target.**  A NOTIFY with ``m2m:seci`` to the ``<CSEBase>`` is served by
  the CSE's ESPrim Receiver held by the gateway: sit 3 -> sit 4 (unique rand object); sit 5
  -> decrypt, impersonation check (inner ``fr`` == the identity bound to the key), the inner
  request goes to the CSE as a normal request with that identity as X-M2M-Origin, and the
  CSE's response is sealed.  Rejections carry the RSC of TS-0004 table 7.6.2-1.
* **e2eSecInfo.**  Clients see ``esi`` in its object form (TS-0004 6.3.5.52); the CSE
  stores it as JSON text (:mod:`m2msec.gateway.esi`).  A RETRIEVE of the ``<CSEBase>``
  gets the CSE's own ``esi`` (SUIDs and the shared receiverESPrimRandObject) merged in.
* **Routing.**  An ``m2m:seci`` NOTIFY whose SP-relative target names another CSE-ID goes
  to the gateway configured for that CSE in ``[[routes]]`` (the ``<remoteCSE>`` poa points
  at the CSE itself, which cannot take such a NOTIFY); a CSE-relative ``From`` is sent on
  in SP-relative form (``/<cse-id>/C...``), as a transit CSE does.
* **SAEF listener** (optional, :mod:`m2msec.gateway.saef`).  A second, TLS 1.2 only port
  where AEs connect with a security association (TS-0003 8.2.2.1 Kpsa/KpsaID, 8.2.2.2
  certificates), the Registrar CSE side of 7.2.1: a request whose From is not the AE-ID
  bound to the association is answered 4106 ORIGINATOR_NOT_AUTHENTICATED and reaches
  nothing; the others take the normal path above.  ``require_saef_for`` makes the plain
  listener answer 4106 to requests claiming the listed AE-IDs, which then can only be used
  through their association.  An established certificate association is re-checked before
  each request against the CRLs and OCSP answers of the ``[[saef_cert]]`` binding that
  accepted it (TS-0003 8.1.2.2; no query per request): an AE revoked since its handshake gets
  4106 with ``Connection: close``, nothing is forwarded, and the connection is closed.
* **Scale-out.**  Receiver state (rand objects, sessions) and the pairwise keys are in
  :mod:`m2msec.store` (SQLite by default, PostgreSQL with ``--store postgresql://...``),
  so several gateway instances can share one address.

Configuration (``gateway.toml``; paths relative to the file; every key, type and default:
``docs/configuration.md``)::

    [cse]
    id = "id-in"                 # CSE-ID (without '/')
    name = "cse-in"              # resourceName of the <CSEBase>
    admin = "CAdmin"             # originator for pointOfAccess/ACP look-ups (full access on the CSE)
    sp_id = "//example.com"      # optional: SP-ID, to read absolute originators in ACP checks
    url = "http://127.0.0.1:8080"    # optional, --cse overrides

    [store]
    url = "sqlite:///var/lib/m2msec/gateway.db"   # default: gateway.db next to this file
    kek_file = "gateway.kek"     # key-encryption key (else $M2MSEC_KEK_FILE, else $M2MSEC_KEK)

    [gateway]
    poa_ttl = 30                 # seconds an AE's pointOfAccess and ACPs are cached
    enforce_acp = true           # NOTIFY privilege checked for m2m:seci Notifies to AEs (default)
    trace_file = "trace.jsonl"   # optional: every forwarded HTTP message, for audits/tests
    audit_seal_interval_s = 300  # seal the store's audit trail this often, at start and at stop (0: off)

    [receiver]                   # the CSE's ESPrim Receiver policy (optional)
    suids = [13, 23]
    shared_lifetime = 86400      # seconds
    unique_lifetime = 3600
    unique_key_period = 86400    # whole seconds, >= unique_lifetime; same on every instance of one store

    [[keys]]                     # one per peer: the CSE's pairwiseESPrimKeys
    kid = "00112233445566778899aabbccddeeff@mef.example.com"
    key_hex = "..."              # or key_file = "peer1.key" (hex text or raw bytes)
    peer = "Cae1"                # identity bound to the key (the inner From must equal it)
    suid = 13

    [mef]                        # optional: RSPF-provisioned keys (SUID 23) from the MEF
    fqdn = "mef.example.com"     # KeIDs ending in this MEF-FQDN are fetched on first sight
    host = "127.0.0.1"
    port = 8444
    psk_identity = "cse-in@mef.example.com"   # the CSE's credentials towards the MEF
    psk_hex = "..."              # or psk_file = "mef.psk"
    target_id = "/id-in"         # Enrolment Target ID (default "/" + [cse] id)
    recheck_interval_s = 300     # ask the MEF again about every fetched key (0 = never)

    [esprim_maf]                 # optional: MAF-based keys (SUID 33) retrieved from the MAF
    fqdn = "maf.example.com"     # Key Identifiers ending in this MAF-FQDN are retrieved on first sight
    port = 4433
    admin_fqdn = "sp.example.com"
    kmid = "cse-in@maf.example.com"   # the CSE's own MAF Client credential (or cert/key/ca)
    km_file = "gateway-maf.key"

    [[routes]]                   # other CSEs reachable through their gateways
    csi = "/id-mn"
    url = "http://127.0.0.1:9001"

    [saef]                       # optional: the SAEF listener (--saef-listen overrides listen)
    listen = "127.0.0.1:8443"
    cert = "cse-cert.pem"        # with key: certificate-based SAEF for the [[saef_cert]] AEs
    key = "cse-key.pem"
    require_saef_for = ["Cae1", "Cmeter-*"]   # the plain listener refuses these originators (4106)

    [[saef_psk]]                 # one per AE with a Kpsa
    kpsa_id = "cae1@sp.example.com"
    kpsa_hex = "..."             # or kpsa_file = "cae1.psk"
    ae_id = "Cae1"               # the AE-ID bound to the association

    [[saef_cert]]                # one per AE with a certificate
    flavour = "ae-id"
    identifier = "//example.com/id-in/Cae2"
    root_of_trust = "aes-ca.pem"
    crl_urls = ["http://pki.example.com/aes.crl"]   # optional: fetched before listening, kept fresh
    ocsp = true                  # optional: OCSP during the handshake (ocsp_url, ocsp_timeout_s, ...)

    [saef_maf]                   # optional: MAF-based SAEF (KcID as psk_identity, Kc from the MAF)
    fqdn = "maf.example.com"
    port = 4433
    admin_fqdn = "sp.example.com"
    kmid = "cse-in@maf.example.com"   # the gateway's own MAF Client credential (or cert/key/ca)
    km_file = "gateway-maf.key"

SIGHUP re-reads the whole file and, if all of it is valid, puts its SAEF settings in force at
once (:meth:`m2msec.gateway.saef.SAEFListener.reload_async`): ``[[saef_psk]]``, ``[[saef_cert]]``
(and their CRL files; CRL URLs fetched at once, before the switch; status sources:
:mod:`m2msec.gateway.saefstatus`), ``[saef] cert``/``key``, ``[saef_maf]`` and
``require_saef_for`` (the plain listener refuses the new list from its next request on).  If
anything in the file is invalid, all previous settings stay and one ``error: saef not
reloaded: ...`` line names the problem.  Established associations keep the context they were
accepted with, unless the reload removed or changed their ``[[saef_psk]]`` / ``[[saef_cert]]``
binding (MAF-based ones: if it removed ``[saef_maf]``): then their next request is refused
(4106) and the connection closed.  ``[saef_maf]``: an unchanged block keeps the MAF Client, its MAF session and
cached Kc; a changed one gets a new MAF Client for the handshakes accepted from then on, while
handshakes already accepted finish with the previous client, which is closed once its
retrievals in flight ended (:meth:`m2msec.gateway.saefmaf.MAFSAEFDirectory.retire`); a removed
one stops the MAF-based SAEF the same way.  ``[saef] listen`` is not reloadable: a changed
address is a ``warning:`` line (restart needed) and the rest is reloaded.  With ``[mef]``,
SIGHUP also puts a changed ``[mef]`` in force (a new MEF connection or re-check interval,
:mod:`m2msec.gateway.mefreload`) and then re-checks the fetched keys with the MEF.  The other
tables need a restart.

``serve`` seals the store's audit trail itself (``[gateway] audit_seal_interval_s``, default
300 s, 0 = off; :class:`m2msec.store.autoseal.AuditSealer`): at start, every interval, and once
more after both listeners closed on SIGTERM/SIGINT (TS-0003 6.2.5.2; profile S10).
"""

from __future__ import annotations

from m2msec.gateway.config import ConfigError, GatewayConfig, KeyEntry, load_config
from m2msec.gateway.server import Gateway

__all__ = ["ConfigError", "Gateway", "GatewayConfig", "KeyEntry", "build_gateway", "load_config"]


def build_gateway(config: GatewayConfig, *, clock: object = None, store: object = None) -> tuple[Gateway, object]:
    """A :class:`Gateway` for ``config`` with its Receiver on the store; returns (gateway, store)."""
    from m2msec.gateway.app import build

    return build(config, clock=clock, store=store)
