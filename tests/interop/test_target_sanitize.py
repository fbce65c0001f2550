"""libiscsi's SANITIZE and software-write-protect tests against `earmark serve` on a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.peers import iscsi_test_cu
from tools.serve import EarmarkServe


@pytest.mark.peers
def test_iscsi_test_cu_sanitize_and_swp_suites(tmp_path: Path) -> None:
    lun = tmp_path / "lun.img"
    with open(lun, "wb") as f:
        f.truncate(16 << 20)
    with EarmarkServe(lun) as target:
        sanitize = iscsi_test_cu(target.url, tests="ALL.Sanitize", allow_sanitize=True)
        swp = iscsi_test_cu(target.url, tests="ALL.ModeSense6.Control-SWP")
    assert not sanitize.crashed and not swp.crashed
    # Sanitize.Reset needs a sanitize still running seconds after it began: a 16 MiB
    # file is done long before; every other test of the suite passes.
    assert sorted(sanitize.names("passed")) == sorted(
        f"Sanitize.{name}" for name in (
            "BlockErase", "BlockEraseReserved", "CryptoErase", "CryptoEraseReserved",
            "ExitFailureMode", "InvalidServiceAction", "Overwrite", "OverwriteReserved",
            "Readonly", "Reservations"))
    assert swp.names("passed") == ["ModeSense6.Control-SWP"]
