"""The fault suite's ledger (tests/faults/; registered by tests/conftest.py): each probe records what it tried and what it saw; the session ends
with one table (probes tried, clean one-line errors, rows lost, rows duplicated, secrets found).

Usage in a test:

    def test_x(probe, tmp_path):
        p = probe("teacher port closed")
        r = cli("generate", run, "--spec", spec, env={"K": KEY})
        p.one_line(r, rc=1)                  # rc, one `error:` line on stderr, no traceback
        p.no_secret(KEY, r, run)             # stdout/stderr and every file under run
        p.rows(lost=0, duplicated=0)         # what the probe counted
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PROBES: list["Probe"] = []


@dataclass
class Probe:
    name: str
    clean: bool | None = None  # None: this probe does not expect an error
    lost: int = 0
    duplicated: int = 0
    secrets: int = 0
    notes: list[str] = field(default_factory=list)

    def one_line(self, r: subprocess.CompletedProcess, rc: int, contains: str | None = None) -> str:
        """The command failed with `rc`, and said so in exactly one `error:` line, no traceback."""
        err_lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        self.clean = (r.returncode == rc and len(err_lines) == 1 and "Traceback" not in r.stderr
                      and "Traceback" not in r.stdout and (contains is None or contains in err_lines[0]))
        assert r.returncode == rc, f"{self.name}: rc {r.returncode} != {rc}\n{r.stderr[-2000:]}"
        assert "Traceback" not in r.stderr + r.stdout, f"{self.name}: traceback printed\n{r.stderr[-3000:]}"
        assert len(err_lines) == 1, f"{self.name}: expected one error line, got {err_lines}\n{r.stderr[-2000:]}"
        if contains is not None:
            assert contains in err_lines[0], f"{self.name}: {contains!r} not in {err_lines[0]!r}"
        return err_lines[0]

    def no_secret(self, secret: str, *where) -> None:
        """Count occurrences of `secret` in completed processes' output and in files under paths."""
        n = 0
        for w in where:
            if isinstance(w, subprocess.CompletedProcess):
                n += (w.stdout or "").count(secret) + (w.stderr or "").count(secret)
            elif isinstance(w, str):
                n += w.count(secret)
            else:
                p = Path(w)
                files = [p] if p.is_file() else ([f for f in p.rglob("*") if f.is_file()] if p.exists() else [])
                for f in files:
                    try:
                        n += f.read_bytes().count(secret.encode())
                    except OSError:
                        pass
        self.secrets += n
        assert n == 0, f"{self.name}: secret found {n} time(s)"

    def rows(self, lost: int = 0, duplicated: int = 0) -> None:
        self.lost += lost
        self.duplicated += duplicated
        assert lost == 0 and duplicated == 0, f"{self.name}: {lost} row(s) lost, {duplicated} duplicated"


@pytest.fixture
def probe():
    def make(name: str) -> Probe:
        p = Probe(name)
        PROBES.append(p)
        return p

    return make


def pytest_terminal_summary(terminalreporter):
    if not PROBES:
        return
    tr = terminalreporter
    tr.section("fault suite")
    w = max(len(p.name) for p in PROBES)
    tr.write_line(f"{'probe':<{w}}  clean one-line error  rows lost  rows duplicated  secrets found")
    for p in PROBES:
        clean = "-" if p.clean is None else ("yes" if p.clean else "NO")
        tr.write_line(f"{p.name:<{w}}  {clean:<20}  {p.lost:>9}  {p.duplicated:>15}  {p.secrets:>13}")
    errs = [p for p in PROBES if p.clean is not None]
    tr.write_line(f"probes tried: {len(PROBES)}; clean one-line errors: {sum(bool(p.clean) for p in errs)}/{len(errs)}; "
                  f"rows lost: {sum(p.lost for p in PROBES)}; rows duplicated: {sum(p.duplicated for p in PROBES)}; "
                  f"secrets found: {sum(p.secrets for p in PROBES)}")
