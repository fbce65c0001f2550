"""`earmark serve --metrics`: scraped during a workload, the figures agree with the work."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import earmark
from tests.service.serving import serve
from tools.peers import free_port

pytestmark = pytest.mark.tcp

WRITES = 200
READS = 120
MEMORY = 16 << 20


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=30) as answer:
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(figures: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return sum(v for (n, ls), v in figures.items()
               if n == name and all((k, want) in ls for k, want in labels.items()))


def commands(figures: dict[tuple[str, tuple[tuple[str, str], ...]], float], verb: str) -> float:
    """Commands counted of READ_n or WRITE_n, whichever CDB size the initiator chose."""
    return sum(total(figures, "earmark_target_commands_total", opcode=f"{verb}_{n}")
               for n in (6, 10, 12, 16))


def test_metrics_during_a_workload_agree_with_the_work_done(tmp_path: Path) -> None:
    port = free_port()
    with serve(str(tmp_path / "d.img"), "--size", "4M", "--port", str(free_port()),
               "--memory", "16MiB", "--metrics", f"127.0.0.1:{port}") as t:
        metrics = t.read_until("metrics at").split()[-1]
        url = t.read_until("iscsi://").strip()
        halfway = threading.Event()
        go_on = threading.Event()
        with earmark.open_sync(url) as dev:
            def workload() -> None:
                for i in range(WRITES):
                    dev.write(i * 4096, bytes([i % 256]) * 4096)
                    if i == WRITES // 2:
                        halfway.set()
                        go_on.wait(30)
            worker = threading.Thread(target=workload)
            worker.start()
            assert halfway.wait(30)
            during = scrape(metrics)
            go_on.set()
            worker.join(30)
            for i in range(READS):
                assert dev.read(i * 4096, 4096) == bytes([i % 256]) * 4096
            after = scrape(metrics)
        t.stop()
    # Mid-workload: the writes so far, one session, the arena within its capacity.
    assert commands(during, "WRITE") == WRITES // 2 + 1
    assert total(during, "earmark_target_connections", state="session") == 1
    assert total(during, "earmark_target_arena_capacity_bytes") == MEMORY
    in_use = total(during, "earmark_target_arena_level_in_use_bytes")
    reserved = total(during, "earmark_target_arena_level_reserved_bytes")
    free = total(during, "earmark_target_arena_free_bytes")
    assert 0 < in_use <= reserved <= MEMORY and reserved + free <= MEMORY
    # At the end: every write and read counted, none failed, the bytes moved.
    assert commands(after, "WRITE") == WRITES
    assert commands(after, "READ") == READS
    assert total(after, "earmark_target_command_failures_total") == 0
    assert total(after, "earmark_target_received_bytes_total") > WRITES * 4096
    assert total(after, "earmark_target_sent_bytes_total") > READS * 4096
    assert total(after, "earmark_target_nop_timeouts_total") == 0
