"""A throwaway PostgreSQL cluster for tests, started with the server's own initdb/pg_ctl.

Used by the tests that claim PostgreSQL works. `.ci/run` installs Debian's `postgresql`
package; on a developer machine without it those tests are skipped, but in CI (CI=true) a
missing server is a failure, never a silent skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def server_bin() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """Yield a SQLAlchemy URL to a fresh, empty cluster; stop and delete it afterwards."""
    bindir = server_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries not found: .ci/run should install them")
        pytest.skip("PostgreSQL server (initdb/pg_ctl) not installed")
    base = Path(tempfile.mkdtemp(prefix="sdv-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, log = base / "data", base / "server.log"
    port = _free_port()

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "sdv", "--auth=trust", "-E", "UTF8")
        run(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )
        yield f"postgresql+psycopg://sdv@127.0.0.1:{port}/postgres"
    except subprocess.CalledProcessError as exc:
        detail = log.read_text() if log.exists() else ""
        raise RuntimeError(f"PostgreSQL failed: {exc.stderr.decode()} {detail}") from exc
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(base, ignore_errors=True)
