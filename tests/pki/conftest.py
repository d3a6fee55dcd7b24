from __future__ import annotations

from datetime import datetime

import pytest

from _pki_support import NOW, make_ca
from m2msec.pki import DevCA


@pytest.fixture(scope="session")
def now() -> datetime:
    return NOW


@pytest.fixture(scope="session")
def ca() -> DevCA:
    return make_ca()


@pytest.fixture(scope="session")
def root_only_ca() -> DevCA:
    return make_ca("Root Only SP", intermediate=False)


@pytest.fixture(scope="session")
def other_ca() -> DevCA:
    return make_ca("Evil SP", intermediate=False)
