"""SHA-256 of many short messages in a helper process, beside the caller's threads.

Deriving a uid hashes its sample's shard name and key (SPEC §5), one ``hashlib`` call per
sample, and a call on a few dozen bytes holds the GIL throughout. The read step runs its
parts on threads at once, so one part's hashing stalled the other parts' arithmetic: on
the bench's 10 parts of 100,000 samples on 2 threads, hashing took 0.9 s of CPU and added
0.75 s to the step. A helper process (this file run by the same Python, standard library
only; as many as callers at once, started on first use and kept) hashes instead, while the
calling thread waits without the GIL. Where a helper cannot start or fails, the callers
hash themselves from then on: the same digests either way.

The protocol on the helper's stdin and stdout: a request is the count n and the byte length
m (two native uint64), n + 1 native int64 offsets, then the m bytes of the messages back to
back; the answer is the n digests of 32 bytes. The end of its input ends the helper.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import struct
import subprocess
import sys
import threading

log = logging.getLogger(__name__)

HEADER = struct.Struct("=QQ")
DIGEST = 32


def digests(offsets: bytes, data: bytes | memoryview) -> bytes:
    """The SHA-256 digests of the messages ``data[offsets[i]:offsets[i + 1]]`` (``offsets``:
    native int64), back to back."""
    text = memoryview(data)
    bounds = memoryview(offsets).cast("q").tolist()
    sha = hashlib.sha256
    return b"".join([sha(text[a:b]).digest()
                     for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


def _read_exactly(stream, size: int) -> bytes | None:  # noqa: ANN001 - a binary file
    chunks, left = [], size
    while left:
        got = stream.read(left)
        if not got:
            return None
        chunks.append(got)
        left -= len(got)
    return b"".join(chunks)


def serve(stdin, stdout) -> None:  # noqa: ANN001 - binary files
    """The helper's loop: answer requests until its input ends."""
    while True:
        header = _read_exactly(stdin, HEADER.size)
        if header is None:
            return
        n, m = HEADER.unpack(header)
        offsets = _read_exactly(stdin, 8 * (n + 1))
        data = _read_exactly(stdin, m) if m else b""
        if offsets is None or data is None:
            return
        stdout.write(digests(offsets, data))
        stdout.flush()


class _Helper:
    """One helper process and its pipes."""

    def __init__(self) -> None:
        # -S -E: no site packages and no PYTHON* variables, as it needs neither
        self.process = subprocess.Popen(
            [sys.executable, "-S", "-E", __file__], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True)

    def hash(self, offsets: bytes, data: bytes | memoryview) -> bytes:
        n = len(offsets) // 8 - 1
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(HEADER.pack(n, len(data)))
        stdin.write(offsets)
        stdin.write(data)
        stdin.flush()
        answer = _read_exactly(stdout, n * DIGEST)
        if answer is None:
            raise OSError(f"the uid hashing helper ended (exit {self.process.poll()})")
        return answer

    def close(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):  # a broken pipe: it has ended already
                    stream.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_IDLE: list[_Helper] = []  # helpers started and not in use
_STARTED: list[_Helper] = []
_LOCK = threading.Lock()
_UNAVAILABLE: list[str] = []  # why a helper could not start, once it could not


@atexit.register
def close_helpers() -> None:
    """End every helper this process started (each ends when its input closes)."""
    with _LOCK:
        helpers, _STARTED[:], _IDLE[:] = list(_STARTED), [], []
    for helper in helpers:
        helper.close()


def hashed_apart(offsets: bytes, data: bytes | memoryview) -> bytes:
    """``digests(offsets, data)``, computed by an idle helper process (one is started when
    none is idle, so there are as many as callers at once) while this thread waits without
    the GIL; computed here where no helper can run."""
    with _LOCK:
        unavailable = bool(_UNAVAILABLE)  # once a helper failed, none is used again
        helper = _IDLE.pop() if _IDLE and not unavailable else None
    if helper is None and not unavailable:
        try:
            helper = _Helper()
        except OSError as err:
            log.info("uids are hashed in this process: no helper process (%s)", err)
            with _LOCK:
                _UNAVAILABLE.append(str(err))
        else:
            with _LOCK:
                _STARTED.append(helper)
    if helper is not None:
        try:
            answer = helper.hash(offsets, data)
        except (OSError, ValueError) as err:
            log.info("uids are hashed in this process: the helper failed (%s)", err)
            with _LOCK:
                _STARTED.remove(helper)
                _UNAVAILABLE.append(str(err))
            helper.close()
        else:
            with _LOCK:
                _IDLE.append(helper)
            return answer
    return digests(offsets, data)


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
