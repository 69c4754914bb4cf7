"""Shared pytest fixtures.

* ``make_lab(**kw)``: a factory of :class:`mpt.lab.topology.Lab` (same keywords);
  every lab it made is closed after the test, whatever happened.  On a failed
  test the labs' addresses, routes, qdiscs and nft rules are printed first.
* ``lab``: one default lab (2 paths, 100 Mbit/s each way).

Tests marked ``e2e`` need root (namespaces, veths, tc, nft).  Without it they
FAIL with a clear message (reported as failed, not skipped and not an error in
a fixture): a skipped end-to-end test must never look like a passing one.
Fixtures that build labs for e2e tests should, like ``lab``, not fail in setup
without root but leave that to the call-phase check.

To extend (e.g. daemon fixtures): build on ``make_lab``; start processes with
``lab.popen`` so closing the lab stops them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

NOT_ROOT_MSG = ("end-to-end test needs root (network namespaces, veth, tc, nft); "
                "run pytest as root, e.g. `sudo /opt/mpt-venv/bin/python -m pytest`")


def is_root() -> bool:
    return os.geteuid() == 0


def require_root() -> None:
    if not is_root():
        pytest.fail(NOT_ROOT_MSG, pytrace=False)


def pytest_sessionstart(session):
    # Remove namespaces left behind by earlier runs whose process died
    # (only those whose PID no longer exists; live runs are untouched).
    if is_root():
        from mpt.lab.topology import cleanup_stale
        try:
            removed = cleanup_stale()
        except Exception as e:  # never block the run on housekeeping
            print(f"lab cleanup_stale failed: {e}", file=sys.stderr)
        else:
            if removed:
                print(f"removed stale lab namespaces: {' '.join(removed)}",
                      file=sys.stderr)


def _is_e2e(item) -> bool:
    return item.get_closest_marker("e2e") is not None


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    # Fail (in the call phase, so it is reported as FAILED) before the body runs.
    if _is_e2e(pyfuncitem):
        require_root()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def make_lab(request):
    """Factory: ``make_lab(paths=2, rate_mbit=100)`` → a Lab closed after the test."""
    from mpt.lab.topology import Lab
    labs: list[Lab] = []

    def factory(**kw) -> Lab:
        require_root()
        lab = Lab(**kw)
        labs.append(lab)
        return lab

    yield factory

    failed = _failed(request)
    errors = []
    for lab in labs:
        if failed and not lab.closed:
            try:
                print(f"\n--- lab {lab.prefix} at failure ---\n{lab.diagnostics()}")
            except Exception as e:
                print(f"(diagnostics failed: {e})")
        try:
            lab.close()
        except Exception as e:  # close every lab even if one fails
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
def lab(request, make_lab):
    """A default lab: 2 paths shaped to 100 Mbit/s in each direction."""
    if not is_root() and _is_e2e(request.node):
        return None     # pytest_pyfunc_call fails the test before it runs
    return make_lab()


def _failed(request) -> bool:
    return any(getattr(request.node, f"rep_{w}", None) is not None
               and getattr(request.node, f"rep_{w}").failed for w in ("setup", "call"))


@pytest.fixture
def tunnel(request, make_lab):
    """Factory: ``tunnel(paths=2, rate_mbit=100, delays=None, weights=..., client=...,
    server=..., path_keys=...)`` builds a lab (``delays``: {k: (one-way delay ms,
    jitter ms)} on path k, both directions), starts mptd on both routers and
    waits until every path is up.  Both daemons must exit cleanly (status 0) at the end,
    unless the test stopped or killed one itself."""
    from mpt.lab.tunnel import Tunnel
    made = []

    def start(paths=2, rate_mbit=100, delays=None, **kw):
        lab = make_lab(paths=paths, rate_mbit=rate_mbit)
        for k, (d, j) in (delays or {}).items():
            lab.set_delay(k, d, j)
        t = Tunnel(lab, **kw)
        made.append(t)
        t.wait_up()
        return t

    yield start
    for t in made:
        if t.lab.closed:
            continue
        codes = t.stop(keep_logs=True)
        logs = "".join(f"\n--- mptd {name} log ---\n{d.output()}"
                       for name, d in (("client", t.client), ("server", t.server)))
        t.close_logs()
        if _failed(request):
            print(logs)
        assert set(codes) <= {0, None}, f"mptd exit codes {codes}:{logs}"
