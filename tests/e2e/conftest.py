"""Fixtures for end-to-end tests: a real provider registrar, SIPp peers, network namespaces.

    def test_x(provider, sipp):            # provider: started ProviderRegistrar on 127.0.0.1
        sipp.run("pbx_register", provider.hostport).assert_ok()

    def test_y(make_provider, sipp):       # several / customised providers
        p = make_provider(min_expires=120, pstn=("127.0.0.1", 5290))

    def test_z(topology, make_provider):   # namespaces (root only; skipped otherwise)
        ens5 = topology.add_uplink("ens5", "198.51.100")

Everything started here is stopped in teardown, also when the test fails; on failure the
Kamailio logs (tail) and SIPp diagnostics of the test are printed.
"""
from __future__ import annotations

import pytest

from .harness import (KamailioProcess, ProviderRegistrar, Sipp, SippProcess, Topology,
                      netns_unavailable, tools_missing)
from .procs import run_failed


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
def e2e_tools():
    why = tools_missing()
    if why:
        pytest.skip(why)


@pytest.fixture
def kamailio_processes(request):
    """Register any KamailioProcess here to have it stopped (and its log shown on failure)."""
    procs: list[KamailioProcess] = []
    yield procs
    for p in procs:
        p.stop()
    if run_failed(request):
        for p in procs:
            print(f"\n===== {p.name} log ({p.log_path}) =====\n{p.log_tail(150)}")


@pytest.fixture
def make_provider(e2e_tools, tmp_path, kamailio_processes):
    """Factory: make_provider(ip="127.0.0.1", port=None, **ProviderRegistrar kwargs) -> started."""
    count = 0

    def make(ip: str = "127.0.0.1", port: int | None = None, **kw) -> ProviderRegistrar:
        nonlocal count
        count += 1
        kw.setdefault("name", f"provider{count}")
        prov = ProviderRegistrar(tmp_path / kw["name"], ip, port, **kw)
        kamailio_processes.append(prov)
        return prov.start()

    return make


@pytest.fixture
def provider(make_provider) -> ProviderRegistrar:
    """A provider registrar for tel.example.test on 127.0.0.1 (a free port), default users."""
    return make_provider()


class _TrackingSipp(Sipp):
    """Sipp that remembers its background processes and results for teardown/diagnostics."""

    def __init__(self, workdir):
        super().__init__(workdir)
        self.started: list[SippProcess] = []
        self.results = []

    def run(self, *a, **kw):
        res = super().run(*a, **kw)
        self.results.append(res)
        return res

    def background(self, *a, **kw):
        sp = super().background(*a, **kw)
        self.started.append(sp)
        return sp


@pytest.fixture
def sipp(e2e_tools, tmp_path, request) -> Sipp:
    s = _TrackingSipp(tmp_path / "sipp")
    yield s
    for sp in s.started:
        s.results.append(sp.stop())
    if run_failed(request):
        for res in s.results:
            if not res.ok:
                print(f"\n===== {res.scenario} =====\n{res.diagnostics()}")


@pytest.fixture
def topology(e2e_tools, request):
    """A host namespace (tpe2e-...-host) to which tests add uplinks (ens5, ens6...). Root only.

    Its teardown stops the test's Kamailios and background SIPps before deleting namespaces.
    """
    why = netns_unavailable()
    if why:
        pytest.skip(why)
    topo = Topology()
    try:
        topo.create()
    except RuntimeError as e:
        topo.delete()
        pytest.skip(f"cannot create network namespaces here: {e}")
    yield topo
    # processes inside the namespaces go first, whatever the fixture order of the test
    for p in request.node.funcargs.get("kamailio_processes") or []:
        p.stop()
    s = request.node.funcargs.get("sipp")
    for sp in getattr(s, "started", []):
        sp.stop()
    topo.delete()


@pytest.fixture
def make_endpoint(e2e_tools, tmp_path, request):
    """Factory: make_endpoint(providers=[ProviderPin(...)], **TrunkproxyRun kwargs) -> started."""
    from .endpoint import TrunkproxyRun

    runs: list[TrunkproxyRun] = []

    def make(**kw) -> TrunkproxyRun:
        run = TrunkproxyRun(tmp_path / f"trunkproxy{len(runs) + 1}", **kw)
        runs.append(run)
        return run.start()

    yield make
    for run in runs:
        run.stop()
    if run_failed(request):
        for run in runs:
            print(f"\n===== trunkproxy log ({run.log_path}) =====\n{run.log_tail(120)}")


@pytest.fixture
def endpoint(make_endpoint, provider):
    """A trunkproxy endpoint on loopback with tel.example.test pinned to the test's provider."""
    from .endpoint import ProviderPin

    return make_endpoint(providers=[ProviderPin("tel.example.test", [provider.hostport])])
