"""Reading a child's captured output back must not move the offset the child writes at:
the two share one open file description, so a read that seeks would put the child's next
line over what it wrote before."""

from __future__ import annotations

import os
import tempfile

from tools.captured import captured_text


def test_reading_the_capture_reads_it_all_and_moves_no_offset() -> None:
    with tempfile.TemporaryFile() as out:
        fd = out.fileno()
        os.write(fd, b"first line\nsecond line\n")
        for at in (0, 5, len(b"first line\nsecond line\n")):  # wherever the writer is
            os.lseek(fd, at, os.SEEK_SET)
            assert captured_text(out) == "first line\nsecond line\n"
            assert os.lseek(fd, 0, os.SEEK_CUR) == at
