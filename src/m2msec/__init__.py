"""m2msec: end-to-end security for oneM2M (TS-0003 Release 2 security frameworks).

Package map (one package per framework; protocol logic is sans-I/O):

- ``m2msec.onem2m``  vocabulary: enumerations, security data types, primitives (TS-0004)
- ``m2msec.keys``    every key derivation and identifier format of TS-0003 clause 10.3
- ``m2msec.store``   durable state (SQLite / PostgreSQL), secrets encrypted at rest
- ``m2msec.cli``     the ``m2msec`` command
"""

__version__ = "0.1.0"
