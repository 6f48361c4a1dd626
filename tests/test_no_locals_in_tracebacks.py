"""An uncaught error after distilabel is imported prints no local variables: distilabel's
__init__ installs rich's traceback hook with show_locals=True, and a local can hold an API key."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_an_uncaught_error_after_importing_the_generation_code_prints_no_locals():
    code = ("import curation.generation.runner, curation.generation.gensteps\n"
            "def f():\n    api_key = 'sk-test-must-not-leak-1234'\n    raise RuntimeError('boom')\nf()\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "RuntimeError: boom" in res.stderr
    assert "sk-test-must-not-leak" not in res.stderr + res.stdout
    assert "locals" not in res.stderr
