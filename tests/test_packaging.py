"""Packaging: what ``pip install gcouchbase`` brings, the ``mock`` extra, the
lazy pytest plugin, the PEP 561 markers and annotations, and the wheel itself.

The last test builds the wheel and installs it into a fresh virtual
environment with nothing but gevent, greenlet and h11 beside it (marked
``slow``; it needs PyPI, or a pip cache holding those packages, and skips
with a message when neither answers).
"""

from __future__ import annotations

import configparser
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import urllib.error
import urllib.request
import zipfile
from base64 import b64encode
from importlib import metadata
from typing import Dict, Iterator, List, Set

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: What the client needs at run time, and nothing else.
CLIENT_REQUIREMENTS = {"gevent", "greenlet", "h11"}
#: Packages only an extra (or the tests) may bring.
OPTIONAL_PACKAGES = ("quickjs", "dukpy", "trustme", "cramjam", "cryptography", "couchbase", "pytest",
                     "hypothesis", "pymemcache")


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    return cfg


def _names(block: str) -> Set[str]:
    """Project names of a setup.cfg requirement list (markers and versions dropped)."""
    names = set()
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].lower())
    return names


def _top_level_packages() -> List[str]:
    """Top-level packages the distribution includes that exist in this tree."""
    include = _setup_cfg().get("options.packages.find", "include")
    return [name for name in _names(include) if "." not in name and os.path.isdir(os.path.join(ROOT, name))]


def _clean_env() -> Dict[str, str]:
    """The environment for a child Python that must see the worktree's code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT
    env.pop("PYTHONSTARTUP", None)
    return env


# ---------------------------------------------------------------------------
# metadata


def test_install_requires_is_the_client_only() -> None:
    """``pip install gcouchbase`` brings gevent, greenlet and h11: no emulator engine."""
    assert _names(_setup_cfg().get("options", "install_requires")) == CLIENT_REQUIREMENTS


def test_mock_extra_brings_the_emulator_engines_and_test_keeps_them() -> None:
    """The emulator's JavaScript engine is in the ``mock`` extra; the ``test``
    extra (what scripts/ensure-venv installs) keeps both engines."""
    extras = _setup_cfg()["options.extras_require"]
    assert {"quickjs", "trustme"} <= _names(extras["mock"])
    assert {"quickjs", "dukpy", "trustme"} <= _names(extras["test"])
    with open(os.path.join(ROOT, "scripts", "ensure-venv")) as f:
        assert ".[test,dev,bench]" in f.read()


def test_every_package_ships_a_py_typed_marker() -> None:
    """Each top-level package has a py.typed file, and package_data ships it
    (a package added later needs only its own empty marker file)."""
    assert _setup_cfg().get("options.package_data", "*").strip() == "py.typed"
    packages = _top_level_packages()
    assert {"couchbase_core", "gcouchbase"} <= set(packages)
    for name in packages:
        assert os.path.isfile(os.path.join(ROOT, name, "py.typed")), "add an empty %s/py.typed" % name


# ---------------------------------------------------------------------------
# imports


#: Run first in a child interpreter: only the standard library, our two
#: packages and the client's requirements (with gevent's own: zope) import.
_BLOCKER = """
import importlib.abc, sys
BLOCKED = %r
try:
    STDLIB = set(sys.stdlib_module_names)
except AttributeError:  # Python 3.9: what the interpreter's own library directories hold
    import os, pkgutil, sysconfig
    dirs = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")}
    dirs |= {os.path.join(d, "lib-dynload") for d in dirs}
    dirs |= {p for p in sys.path if p.rstrip("/").endswith(("lib_pypy", "lib-dynload"))}  # PyPy's C-less modules
    STDLIB = set(sys.builtin_module_names) | {m.name for m in pkgutil.iter_modules(sorted(dirs))}
ALLOWED = STDLIB | {"couchbase_core", "gcouchbase", "gevent", "greenlet", "h11", "zope"}
refused = []
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top not in ALLOWED:
            refused.append(name)
            raise ImportError("blocked for the test: " + name)
        return None
sys.meta_path.insert(0, Blocker())
""" % (OPTIONAL_PACKAGES,)


def test_client_modules_import_with_only_gevent_greenlet_h11() -> None:
    """Every client module (couchbase_core but its ``mock`` and ``testing``
    parts, gcouchbase) imports with nothing importable beyond the standard
    library, gevent, greenlet and h11."""
    code = _BLOCKER + textwrap.dedent("""
        import importlib, pkgutil
        import couchbase_core, gcouchbase
        done = []
        for pkg in (couchbase_core, gcouchbase):
            for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
                if info.name.startswith(("couchbase_core.mock", "couchbase_core.testing")):
                    continue
                importlib.import_module(info.name)
                done.append(info.name)
        from couchbase_core._engine.settings import snappy_available
        assert not snappy_available()
        third_party = sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED))
        assert not third_party, third_party
        print(len(done))
    """)
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) > 30


def test_crypto_without_cryptography_names_the_extra() -> None:
    """The field-encryption provider says which extra to install."""
    code = _BLOCKER + textwrap.dedent("""
        from couchbase_core.crypto.errors import CryptoDependencyError
        from couchbase_core.crypto.provider import AES256CryptoProvider
        try:
            AES256CryptoProvider(None, "public", "hmac")
        except CryptoDependencyError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install 'gcouchbase[crypto]'" in out.stdout


def test_pytest_plugin_imports_nothing_heavy() -> None:
    """The ``pytest11`` plugin is loaded by every pytest run of an
    environment with gcouchbase installed: importing it must not bring in
    the emulator's server, its JavaScript engine, the client engine or gevent."""
    code = textwrap.dedent("""
        import sys
        import couchbase_core.mock.pytest_plugin as plugin
        assert callable(plugin.pytest_configure)
        heavy = sorted(m for m in sys.modules
                       if m.split(".")[0] in ("gevent", "greenlet", "h11", "quickjs", "dukpy", "trustme",
                                               "cramjam", "cryptography", "asyncio")
                       or m in ("ssl", "urllib.request", "http.client")
                       or (m.startswith("couchbase_core.") and m not in (
                           "couchbase_core._formats", "couchbase_core.mock",
                           "couchbase_core.mock.pytest_plugin")))
        print(heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_pytest_plugin_is_registered() -> None:
    """The plugin is the ``couchbase_mock`` entry point of group pytest11."""
    cfg = _setup_cfg().get("options.entry_points", "pytest11")
    assert "couchbase_mock = couchbase_core.mock.pytest_plugin" in cfg
    eps = metadata.entry_points()
    eps = eps.select(group="pytest11") if hasattr(eps, "select") else eps.get("pytest11", [])  # 3.9: a dict
    assert any(ep.value == "couchbase_core.mock.pytest_plugin" for ep in eps)


# ---------------------------------------------------------------------------
# the emulator without a JavaScript engine


@pytest.fixture
def no_js_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make quickjs and dukpy unimportable (and forget a cached checker)."""
    from couchbase_core.mock import views

    monkeypatch.setitem(sys.modules, "quickjs", None)
    monkeypatch.setitem(sys.modules, "dukpy", None)
    monkeypatch.setattr(views, "_checker", None)
    yield


def test_view_engine_without_js_names_the_extra(no_js_engine: None) -> None:
    """Building a view engine raises JSEngineMissing, an ImportError naming the extra."""
    from couchbase_core.mock import views

    assert views.js_engine_available() is None
    with pytest.raises(views.JSEngineMissing) as info:
        views.ViewEngine(views.DesignDocuments(), lambda: iter(()))
    assert isinstance(info.value, ImportError)
    assert "pip install 'gcouchbase[mock]'" in str(info.value)
    with pytest.raises(ImportError, match=r"gcouchbase\[mock\]"):
        views.ViewEngine(views.DesignDocuments(), lambda: iter(()), js_engine="quickjs")


def _views_request(port: int, path: str, method: str, body: bytes = b"") -> urllib.error.HTTPError:
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=body or None, method=method,
                                 headers={"Content-Type": "application/json",
                                          "Authorization": "Basic " + b64encode(b"Administrator:password").decode()})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=30)
    return info.value


def test_emulator_answers_views_without_js_with_the_extra(no_js_engine: None) -> None:
    """A running emulator without an engine serves KV as usual but answers
    design documents and view queries with a 500 naming the extra."""
    from couchbase_core.mock import MockCluster

    ddoc = json.dumps({"views": {"v": {"map": "function (doc, meta) { emit(meta.id, null); }"}}}).encode()
    with MockCluster(in_process=True) as cluster:
        for method, path, body in (("PUT", "/default/_design/dd", ddoc),
                                   ("GET", "/default/_design/dd/_view/v", b"")):
            err = _views_request(cluster.views_port, path, method, body)
            payload = json.loads(err.read())
            assert err.code == 500, (path, payload)
            assert payload["error"] == "js_engine_missing"
            assert "pip install 'gcouchbase[mock]'" in payload["reason"]


# ---------------------------------------------------------------------------
# annotations


def _mypy(*args: str) -> "subprocess.CompletedProcess[str]":
    pytest.importorskip("mypy")
    cache = tempfile.mkdtemp(prefix="gcb-mypy-")
    try:
        return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--config-file", os.devnull,
                               "--follow-imports=silent", "--cache-dir", cache, *args],
                              env=_clean_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def test_typing_sample_passes_mypy_strict() -> None:
    """A user program exercising the common calls passes ``mypy --strict``
    against our annotations; a wrong use of a result type is caught (the
    bucket methods are typed, not ``Any``)."""
    probe = os.path.join(ROOT, "tests", "_typing_probe_%d.py" % os.getpid())
    with open(probe, "w") as f:
        f.write(textwrap.dedent("""
            from couchbase_core.bucket import Bucket
            from couchbase_core.asynchronous.bucket import AsyncBucket
            from couchbase_core.iops.select import SelectIOPS

            def wrong(bucket: Bucket, abucket: AsyncBucket) -> None:
                number: int = bucket.get("k")
                text: str = bucket.upsert("k", 1)
                multi: int = bucket.get_multi(["k"])
                abucket.get("k").callback = print
                bad: int = abucket.get("k")
        """))
    try:
        out = _mypy("tests/typing_sample.py", os.path.relpath(probe, ROOT))
    finally:
        os.unlink(probe)
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert not [e for e in errors if "typing_sample.py" in e], out.stdout
    probe_errors = [e for e in errors if "_typing_probe_" in e]
    for expected in ('"ValueResult"', '"OperationResult"', '"MultiResult"', '"AsyncResult"'):
        assert any(expected in e for e in probe_errors), (expected, out.stdout)
    assert len(probe_errors) == 4, out.stdout


# ---------------------------------------------------------------------------
# the wheel in a fresh virtual environment


_NETWORK_TROUBLE = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
                    "Could not find a version", "No matching distribution", "ConnectTimeout", "ProxyError",
                    "Network is unreachable", "ReadTimeout", "Could not fetch URL")

_INSTALLED_CHECK = textwrap.dedent("""
    import importlib.util, json, os, sys, urllib.error, urllib.request
    from base64 import b64encode

    import couchbase_core, couchbase_core.bucket, gcouchbase, gcouchbase.bucket
    assert couchbase_core.__file__.startswith(sys.prefix), couchbase_core.__file__
    for pkg in (couchbase_core, gcouchbase):
        assert os.path.isfile(os.path.join(os.path.dirname(pkg.__file__), "py.typed")), pkg
    present = [n for n in ("quickjs", "dukpy", "trustme", "cramjam", "cryptography")
               if importlib.util.find_spec(n) is not None]
    assert not present, present

    from couchbase_core.mock import MockCluster
    from couchbase_core.mock.views import js_engine_available
    assert js_engine_available() is None
    with MockCluster(in_process=True) as cluster:
        ddoc = json.dumps({"views": {"v": {"map": "function (d, m) { emit(m.id, null); }"}}}).encode()
        req = urllib.request.Request(
            "http://127.0.0.1:%d/default/_design/dd" % cluster.views_port, data=ddoc, method="PUT",
            headers={"Authorization": "Basic " + b64encode(b"Administrator:password").decode()})
        try:
            urllib.request.urlopen(req, timeout=30)
        except urllib.error.HTTPError as exc:
            print(exc.code, json.loads(exc.read())["reason"])
        else:
            raise AssertionError("a design document was accepted without a JavaScript engine")
""")


def _run(cmd: List[str], timeout: float, **kwargs: object) -> "subprocess.CompletedProcess[str]":
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload, no-any-return]


def _skip_if_offline(out: "subprocess.CompletedProcess[str]", what: str) -> None:
    text = out.stdout + out.stderr
    if out.returncode and any(marker in text for marker in _NETWORK_TROUBLE):
        pytest.skip("%s needs PyPI (or a pip cache), which did not answer: %s"
                    % (what, text.strip().splitlines()[-1]))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_builds_and_installs_in_a_clean_venv() -> None:
    """Build the wheel, install it with only gevent, greenlet and h11 in a
    fresh venv, and check the package works there without the extras."""
    tmp = tempfile.mkdtemp(prefix="gcb-wheel-")
    try:
        src = os.path.join(tmp, "src")
        # A copy without the local virtualenv, caches and build leftovers.
        shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache", ".pytest_cache",
            ".ruff_cache", ".hypothesis"))
        dist = os.path.join(tmp, "dist")
        out = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "--timeout", "15", "--retries", "1",
                    "-w", dist, src], timeout=240)
        _skip_if_offline(out, "building the wheel (its build dependencies)")
        assert out.returncode == 0, out.stderr
        wheels = [name for name in os.listdir(dist) if name.endswith(".whl")]
        assert len(wheels) == 1, wheels
        wheel = os.path.join(dist, wheels[0])

        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        plain = {re.split(r"[\s<>=!~;\[(]", line.split(":", 1)[1].strip(), maxsplit=1)[0].lower()
                 for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line}
        assert plain == CLIENT_REQUIREMENTS, meta
        assert re.search(r"^Requires-Dist: quickjs.*extra == \"mock\"", meta, re.M), meta
        assert "Provides-Extra: mock" in meta
        tops = {n.split("/", 1)[0] for n in names if "/" in n and not n.split("/", 1)[0].endswith(
            (".dist-info", ".data"))}
        assert {"couchbase_core", "gcouchbase", "acouchbase", "txcouchbase"} <= tops
        for top in tops:
            assert "%s/py.typed" % top in names, "the wheel has no %s/py.typed" % top
        assert "couchbase_core/mock/pytest_plugin.py" in names

        venv = os.path.join(tmp, "venv")
        out = _run([sys.executable, "-m", "venv", "--without-pip", venv], timeout=120)
        assert out.returncode == 0, out.stderr
        vpy = os.path.join(venv, "bin", "python")
        pip = [sys.executable, "-m", "pip", "--python", vpy, "install", "-q", "--timeout", "15", "--retries", "1"]
        out = _run(pip + ["--no-deps", wheel], timeout=120)
        assert out.returncode == 0, out.stderr
        # The three runtime dependencies, at the versions this environment
        # runs (so a pip cache usually has them), wheels only.
        pins = []
        for name in sorted(CLIENT_REQUIREMENTS):
            try:
                pins.append("%s==%s" % (name, metadata.version(name)))
            except metadata.PackageNotFoundError:  # pragma: no cover - not with the test extra
                pins.append(name)
        # PyPy: gevent publishes no PyPy wheels, so pip builds it from its
        # source (its wheel is usually in pip's cache from the venv's own
        # install); greenlet is the interpreter's own.
        binary = ["--prefer-binary"] if platform.python_implementation() == "PyPy" else ["--only-binary", ":all:"]
        out = _run(pip + binary + pins, timeout=360)
        _skip_if_offline(out, "installing gevent, greenlet and h11")
        assert out.returncode == 0, out.stderr
        listed = _run([sys.executable, "-m", "pip", "--python", vpy, "list", "--format", "json"], timeout=60)
        installed = {p["name"].lower() for p in json.loads(listed.stdout)}
        assert "gcouchbase" in installed and "quickjs" not in installed and "dukpy" not in installed, installed

        out = _run([vpy, "-c", _INSTALLED_CHECK], timeout=120, cwd=tmp)
        assert out.returncode == 0, out.stderr
        code, _, reason = out.stdout.strip().partition(" ")
        assert code == "500" and "pip install 'gcouchbase[mock]'" in reason, out.stdout

        # acouchbase needs only asyncio; txcouchbase needs Twisted (the
        # `twisted` extra), installed here as a wheel of this environment's version.
        out = _run([vpy, "-c", "import acouchbase.bucket, gcouchbase.bucket"], timeout=120, cwd=tmp)
        assert out.returncode == 0, out.stderr
        out = _run(pip + ["--only-binary", ":all:", "twisted==%s" % metadata.version("twisted")], timeout=240)
        _skip_if_offline(out, "installing Twisted")
        assert out.returncode == 0, out.stderr
        out = _run([vpy, "-c", "import txcouchbase.bucket; import importlib.util as u; "
                    "assert u.find_spec('quickjs') is None"], timeout=120, cwd=tmp)
        assert out.returncode == 0, out.stderr
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
