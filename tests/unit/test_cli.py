"""mptd/mptctl command lines: bad input gives one line and the right exit code."""
import base64
import subprocess
import sys

import pytest

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def run(*args):
    return subprocess.run([sys.executable, "-c",
                           "import sys; from mpt.cli import mptd_main, mptctl_main; "
                           "sys.exit({'mptd': mptd_main, 'mptctl': mptctl_main}[sys.argv[1]]"
                           "(sys.argv[2:]))", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)


def test_check_accepts_the_shipped_configs(tmp_path):
    # --check reads the key file: give the examples one that exists (mode 0600)
    key = tmp_path / "tunnel.key"
    key.write_text(run("mptctl", "genkey").stdout)
    key.chmod(0o600)
    for name in ("client.conf", "server.conf"):
        conf = tmp_path / name
        conf.write_text((ROOT / "conf" / name).read_text()
                        .replace("/etc/mpt/tunnel.key", str(key)))
        r = run("mptd", "--check", "-c", str(conf))
        assert r.returncode == 0, r.stderr
        assert "ok" in r.stdout


@pytest.mark.parametrize("body,where,key", [
    ("[tunnel]\nrole = client\naddress = 10.0.0.1/30\npeer = 198.18.10.2:4700\n"
     "[path a]\ninterface = wan1\nweight = 0\n", ":7:", "weight"),
    ("[tunnel]\nrole = client\naddress = 10.0.0.1/30\npeer = 198.18.10.2:99999\n"
     "[path a]\ninterface = wan1\n", ":4:", "peer"),
    ("[tunnel]\nrole = server\naddress = 10.0.0.2/30\nlisten = 4700\ncolour = blue\n",
     ":5:", "colour"),
    ("[tunnel]\nrole = server\naddress = 10.0.0.2/30\n", ":1:", "listen"),
])
def test_bad_config_is_one_line_with_file_line_and_key_exit_2(tmp_path, body, where, key):
    conf = tmp_path / "tunnel.conf"
    conf.write_text(body)
    for args in (("--check", "-c", str(conf)), ("-c", str(conf))):
        r = run("mptd", *args)
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        assert f"{conf}{where}" in lines[0] and key in lines[0]
        assert r.stdout == ""


def test_missing_config_file(tmp_path):
    r = run("mptd", "-c", str(tmp_path / "nope.conf"))
    assert r.returncode == 2 and "nope.conf" in r.stderr and "cannot read" in r.stderr


def test_mptctl_without_daemon_says_so(tmp_path):
    r = run("mptctl", "-s", str(tmp_path / "none.sock"), "status")
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "cannot reach mptd" in r.stderr


def test_mptctl_genkey_prints_one_base64_line_of_32_bytes(tmp_path):
    keys = []
    for _ in range(2):
        # No daemon and a socket that does not exist: genkey needs neither.
        r = run("mptctl", "-s", str(tmp_path / "none.sock"), "genkey")
        assert r.returncode == 0, r.stderr
        assert r.stderr == ""
        assert r.stdout.endswith("\n") and r.stdout.count("\n") == 1
        assert len(base64.b64decode(r.stdout.strip(), validate=True)) == 32
        keys.append(r.stdout)
    assert keys[0] != keys[1]


def test_mptctl_genkey_output_loads_as_a_key(tmp_path):
    from mpt.keyfile import load_key

    r = run("mptctl", "genkey")
    assert r.returncode == 0, r.stderr
    key = tmp_path / "tunnel.key"
    key.write_text(r.stdout)
    key.chmod(0o600)
    assert load_key(str(key)) == base64.b64decode(r.stdout)


def test_mss_clamp_ruleset_fits_the_mtu():
    from mpt import nft
    text = nft.mss_ruleset("mpt0", "mpt0", 1440)
    assert text.startswith("add table inet mpt_mss_mpt0\ndelete table inet mpt_mss_mpt0\n")
    assert 'oifname "mpt0" meta nfproto ipv4' in text and 'iifname "mpt0" meta nfproto ipv6' in text
    assert "maxseg size set 1400" in text and "maxseg size set 1380" in text
    assert "hook forward priority mangle" in text
