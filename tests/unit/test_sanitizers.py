"""The C code builds warning-free and survives AddressSanitizer and
UndefinedBehaviorSanitizer: the C-level tests run again against an
instrumented build of the datapath."""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
C_TESTS = ["tests/unit/test_reorder.py", "tests/unit/test_flow.py", "tests/unit/test_scheduler.py",
           "tests/unit/test_aead.py", "tests/unit/test_replay.py", "tests/unit/test_datapath.py",
           "tests/unit/test_fq.py", "tests/unit/test_cookie.py"]

# Loaded before pytest: puts the instrumented module in place of mpt._datapath.
BOOT = """
import importlib.util, pathlib, sys
so = next(pathlib.Path(sys.argv[1]).rglob("_datapath*.so"))
spec = importlib.util.spec_from_file_location("mpt._datapath", so)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
import mpt
sys.modules["mpt._datapath"] = mpt._datapath = mod
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[2:]]))
"""


def test_c_compiles_without_warnings():
    for src in sorted(CSRC.glob("*.c")):
        r = subprocess.run(["gcc", "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror",
                            "-fsyntax-only", str(src)], capture_output=True, text=True)
        assert r.returncode == 0, f"{src.name}:\n{r.stderr}"


def test_c_tests_pass_under_address_sanitizer(tmp_path):
    env = dict(os.environ, MPT_SANITIZE="address")
    build = subprocess.run([sys.executable, "mpt/_build_datapath.py", str(tmp_path)], cwd=ROOT,
                           env=env, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                             text=True).stdout.strip()
    assert os.path.exists(libasan), "gcc's libasan.so is missing"
    run_env = dict(os.environ, LD_PRELOAD=libasan,
                   # CPython itself is not instrumented and keeps memory until exit
                   ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
                   UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    r = subprocess.run([sys.executable, "-c", BOOT, str(tmp_path), *C_TESTS], cwd=ROOT,
                       env=run_env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert "AddressSanitizer" not in out and "runtime error" not in out, out[-5000:]
    assert r.returncode == 0, out[-5000:]
    assert " passed" in out
