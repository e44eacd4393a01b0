import pytest

from vmbinder import errors, lifecycle, readiness
from vmbinder.sources import resolve_source
from vmbinder.spec import make_spec

from .fakes import FakeProvider

STEPS = ["resolve", "keypair", "security group", "floating IP", "create", "after create", "wait"]


def spec(**kw):
    return make_spec(resolve_source("https://github.com/org/repo", **kw), name="demo")


def test_launch_no_wait_returns_the_server_and_its_urls():
    provider = FakeProvider()
    s = spec(open_path="analysis.ipynb")
    result = lifecycle.launch(provider, s, wait=False)
    assert result.server.state == "active"
    assert result.server.address == "203.0.113.7"
    # The first name the server tries for its certificate: the address itself.
    assert result.access.base == "https://203.0.113.7/"
    assert result.access.urls["lab"] == f"https://203.0.113.7/lab?token={s.token}"
    assert result.access.open_url == f"https://203.0.113.7/lab/tree/analysis.ipynb?token={s.token}"
    assert set(result.access.urls) == {"tree", "lab"}
    assert "2023.06" in result.access.absent["nteract"]
    # the user-data carries the address the floating IP got before the server existed
    (user_data,) = provider.user_data.values()
    assert "203.0.113.7" in user_data


@pytest.mark.parametrize("step", STEPS)
def test_a_failure_at_any_step_removes_everything_created(step):
    provider = FakeProvider(fail_at=step)
    with pytest.raises(errors.CloudError) as info:
        lifecycle.launch(provider, spec(), wait=False)
    assert provider.resources == {}
    assert provider.servers == {}
    assert "injected" in info.value.message
    if step == "resolve":
        assert "nothing had been created" in info.value.hint
    else:
        assert "removed what it created" in info.value.hint


@pytest.mark.parametrize("step", STEPS)
def test_ctrl_c_at_any_step_removes_everything_and_exits_130(step):
    provider = FakeProvider(interrupt_at=step)
    with pytest.raises(errors.Interrupted) as info:
        lifecycle.launch(provider, spec(), wait=False)
    assert info.value.exit_code == 130
    assert provider.resources == {}
    assert "interrupted" in info.value.message


def test_cleanup_failure_names_each_leftover_and_the_command():
    provider = FakeProvider(fail_at="wait", fail_removing={"floating IP"})
    with pytest.raises(errors.CleanupFailed) as info:
        lifecycle.launch(provider, spec(), wait=False)
    exc = info.value
    assert exc.exit_code == 7
    assert "floating IP" in exc.message and "remove-floating-IP id-3" in exc.message
    assert "wait failed" in exc.message
    # everything else was removed
    assert [r["kind"] for r in provider.resources.values()] == ["floating IP"]


def test_keep_on_failure_keeps_and_says_what():
    provider = FakeProvider(fail_at="wait")
    with pytest.raises(errors.CloudError) as info:
        lifecycle.launch(provider, spec(), wait=False, keep_on_failure=True)
    assert len(provider.resources) == 4
    assert "kept for inspection" in info.value.hint and "server demo" in info.value.hint


class FakeClock:
    def __init__(self):
        self.t = 0.0
        self.sleeps = []

    def now(self):
        return self.t

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.t += seconds


def test_waiting_launch_follows_guest_phases_then_times_out_and_rolls_back():
    console = 'VMBINDER-PHASE {"phase": "build", "status": "started"}\n'
    provider = FakeProvider(console=console)
    clock = FakeClock()
    seen = []

    class Rec:
        def phase(self, phase, detail=""):
            seen.append((phase, detail))

    with pytest.raises(errors.ReadinessTimeout):
        lifecycle.launch(provider, make_spec(resolve_source("https://github.com/org/repo"),
                                             name="demo", tls="off"),
                         Rec(), wait=True, ready_timeout=60,
                         clock=readiness.Clock(now=clock.now, sleep=clock.sleep))
    assert any(p == "environment" and d.startswith("build started") for p, d in seen)
    assert provider.resources == {}
    assert clock.t <= 60


def test_a_failed_guest_step_is_a_build_failure_with_the_console_tail():
    console = 'boot\nVMBINDER-PHASE {"phase": "build", "status": "failed", "error": "CalledProcessError"}\n'
    provider = FakeProvider(console=console)
    with pytest.raises(errors.BuildFailed) as info:
        lifecycle.launch(provider, spec(), wait=True)
    assert info.value.exit_code == 6
    assert "'build' failed" in info.value.message
    assert "boot" in info.value.hint
    assert provider.resources == {}


def test_url_refuses_interfaces_the_image_does_not_serve():
    provider = FakeProvider()
    server = lifecycle.launch(provider, spec(), wait=False).server
    with pytest.raises(errors.BadRequest) as info:
        lifecycle.url(server, "nteract")
    assert "removed nteract in 2023.06" in info.value.message
    assert lifecycle.url(server, "tree").startswith("https://203.0.113.7/tree?token=")
    assert lifecycle.url(server, "rstudio", detected=frozenset({"rstudio"})).startswith(
        "https://203.0.113.7/rstudio/?token=")


def test_delete_checks_every_name_before_deleting_any():
    provider = FakeProvider()
    lifecycle.launch(provider, spec(), wait=False)
    with pytest.raises(errors.BadRequest):
        lifecycle.delete(provider, ["demo", "missing"])
    assert len(provider.servers) == 1
    removed = lifecycle.delete(provider, ["demo"])
    assert [r.kind for r in removed] == ["server"] and provider.servers == {}


@pytest.mark.parametrize("meta, url", [
    # a file or folder of the repository, whatever its name, opens in JupyterLab
    ({"open-file": "notebooks/intro.ipynb"}, "https://h/lab/tree/notebooks/intro.ipynb?token=t0k"),
    ({"open-file": "what?/a #1.ipynb"}, "https://h/lab/tree/what%3F/a%20%231.ipynb?token=t0k"),
    # a URL path, its query kept with its escapes, the token added to it
    ({"urlpath": "voila/render/app.ipynb?voila-theme=dark"},
     "https://h/voila/render/app.ipynb?voila-theme=dark&token=t0k"),
    ({"urlpath": "lab?reset"}, "https://h/lab?reset&token=t0k"),
    ({"urlpath": "git-pull?repo=https%3A%2F%2Fgithub.com%2Fo%2Fd&urlpath=lab%2Ftree%2Fd%2F"},
     "https://h/git-pull?repo=https%3A%2F%2Fgithub.com%2Fo%2Fd&urlpath=lab%2Ftree%2Fd%2F&token=t0k"),
    ({"urlpath": "git-pull?repo=https://github.com/o/d&urlpath=lab/tree/d/"},
     "https://h/git-pull?repo=https://github.com/o/d&urlpath=lab/tree/d/&token=t0k"),
    ({"urlpath": "lab/tree/a b.ipynb"}, "https://h/lab/tree/a%20b.ipynb?token=t0k"),
    # servers launched before the two were told apart recorded a URL path as "open"
    ({"open": "rstudio/"}, "https://h/rstudio/?token=t0k"),
    ({}, None),
])
def test_the_url_that_opens_what_the_launch_asked_for(meta, url):
    from vmbinder.providers.base import META, Server

    server = Server("id", "demo", "active", "ACTIVE", "203.0.113.7",
                    {META + "token": "t0k", META + "hostname": "h",
                     **{META + k: v for k, v in meta.items()}})
    assert lifecycle.access(server).open_url == url


def test_forwarded_ports_appear_in_the_urls():
    from vmbinder.providers.base import META, Server

    meta = {META + "token": "t0k", META + "tls": "internal", META + "hostname": "localhost",
            META + "https-port": "45443", META + "open": "lab/tree/a b.ipynb"}
    server = Server("id", "demo", "active", "ACTIVE", "127.0.0.1", meta)
    acc = lifecycle.access(server)
    assert acc.urls["lab"] == "https://localhost:45443/lab?token=t0k"
    assert acc.open_url == "https://localhost:45443/lab/tree/a%20b.ipynb?token=t0k"
    off = Server("id", "demo", "active", "ACTIVE", "127.0.0.1",
                 {META + "tls": "off", META + "http-port": "45080"})
    assert lifecycle.access(off).urls["tree"] == "http://127.0.0.1:45080/tree"


def test_the_url_follows_the_name_the_server_settled_on():
    from vmbinder.providers.base import META, Server

    meta = {META + "token": "t0k", META + "tls": "acme", META + "site": "203-0-113-7.nip.io",
            META + "issuer": "acme", META + "tls-failed": "203.0.113.7 (acme): rate limited"}
    server = Server("id", "demo", "active", "ACTIVE", "203.0.113.7", meta)
    assert lifecycle.url(server, None) == "https://203-0-113-7.nip.io/lab?token=t0k"
    found = lifecycle.outcome(server)
    assert (found.site, found.issuer, found.failed[0].cause) == ("203-0-113-7.nip.io", "acme",
                                                                  "rate limited")


def test_status_and_url_learn_the_outcome_from_the_console_after_no_wait():
    provider = FakeProvider()
    server = lifecycle.launch(provider, spec(), wait=False).server
    assert lifecycle.settle(provider, server) is server  # nothing reported yet
    provider.console = ('VMBINDER-TLS {"site": "203-0-113-7.sslip.io", "issuer": "acme", "failed": '
                        '[{"host": "203.0.113.7", "issuer": "acme", "cause": "rate limited"}]}\n')
    settled = lifecycle.settle(provider, server)
    assert settled.meta("site") == "203-0-113-7.sslip.io" and settled.meta("issuer") == "acme"
    assert provider.get("demo").meta("tls-failed") == "203.0.113.7 (acme): rate limited"
    calls = len(provider.calls)
    assert lifecycle.settle(provider, settled) is settled and len(provider.calls) == calls


def test_a_waiting_launch_records_the_certificate_and_checks_jupyters_answer():
    """--tls off (no certificate to check here): the guest's report is recorded, and
    an empty 200 where Jupyter should answer is not ready."""
    from dataclasses import replace

    from .test_https import Answer, serving

    class Handler(Answer):
        body = b""

        def answer(self, path, headers):
            if "/vmbinder/status.json" in path:  # the guest's report, read once ready
                return b'{"interfaces": ["tree", "lab"], "record": "Zenodo record 3242074"}'
            return Handler.body

    class Local(FakeProvider):
        """Its server's port 80 is forwarded to a port on loopback, as on the local target."""

        def prepare(self, spec, ledger):
            return replace(super().prepare(spec, ledger), public_ip="127.0.0.1")

        def wait(self, srv, resolved, timeout, ledger):
            done = super().wait(srv, resolved, timeout, ledger)
            return self.set_metadata(done, {"http-port": str(port)})

    provider = Local(console='VMBINDER-TLS {"site": null, "issuer": "off", "failed": []}\n'
                             'VMBINDER-PHASE {"phase": "ready", "status": "done"}\n')
    clock = FakeClock()
    seen = []

    class Rec:
        def phase(self, phase, detail=""):
            seen.append(detail)
            if "not Jupyter's answer" in detail:  # Jupyter answers from now on
                Handler.body = b'{"started": "2026-12-04T00:00:00Z"}'

    with serving(Handler) as port:
        result = lifecycle.launch(provider, make_spec(resolve_source("https://github.com/org/repo"),
                                                      name="demo", tls="off"),
                                  Rec(), ready_timeout=600,
                                  clock=readiness.Clock(now=clock.now, sleep=clock.sleep))
    assert "HTTP 200, but not Jupyter's answer (no 'started')" in seen
    assert result.server.meta("issuer") == "off" and result.outcome.issuer == "off"
    # What the guest reported is kept: the interfaces it serves, the record it fetched.
    assert result.server.meta("interfaces") == "tree,lab"
    assert result.server.meta("record") == "Zenodo record 3242074"
    assert result.access.urls["lab"].startswith(f"http://127.0.0.1:{port}/lab?token=")


class _Recorder:
    def __init__(self):
        self.seen = []

    def phase(self, phase, detail=""):
        self.seen.append((phase, detail))


class _ProviderNetworkFake(FakeProvider):
    """A server with its own address (no floating IP) whose user-data went one way."""

    def __init__(self, via, warnings=()):
        super().__init__()
        self.via, self.warnings = via, warnings

    def prepare(self, spec, ledger):
        from dataclasses import replace

        return replace(super().prepare(spec, ledger), floating_ip_id=None, port_id="port-1",
                       warnings=self.warnings)

    def create(self, spec, resolved, user_data, ledger):
        from dataclasses import replace

        from vmbinder.providers.base import META

        server = super().create(spec, resolved, user_data, ledger)
        server = replace(server, metadata={**server.metadata, META + "user-data-via": self.via})
        self.servers[server.id] = server
        return server


@pytest.mark.parametrize("config_drive, via, line", [
    ("auto", "config-drive", "demo reads its user-data from the config drive"),
    ("yes", "config-drive", "demo reads its user-data from the config drive"),
    ("no", "metadata-service", "demo reads its user-data from the metadata service"),
    ("auto", "metadata-service",
     "the cloud refused a config drive: demo reads its user-data from the metadata service"),
])
def test_the_launch_says_which_way_the_user_data_went(config_drive, via, line):
    from vmbinder.spec import CloudChoice

    rec = _Recorder()
    s = make_spec(resolve_source("https://github.com/org/repo"), name="demo",
                  cloud=CloudChoice(config_drive=config_drive))
    lifecycle.launch(_ProviderNetworkFake(via), s, rec, wait=False)
    assert ("boot", line) in rec.seen


def test_warnings_of_the_choices_are_reported_and_kept_with_the_result():
    rec = _Recorder()
    warning = "demo gets no floating IP (--floating-ip no) and network private is not routable"
    result = lifecycle.launch(_ProviderNetworkFake("config-drive", (warning,)), spec(), rec,
                              wait=False)
    assert result.warnings == (warning,)
    assert ("resolve", f"warning: {warning}") in rec.seen
    assert lifecycle.launch(FakeProvider(), spec(), wait=False).warnings == ()


@pytest.mark.parametrize("field, option", [("config_drive", "--config-drive"),
                                           ("floating_ip", "--floating-ip")])
def test_config_drive_and_floating_ip_take_auto_yes_or_no(field, option):
    from vmbinder.spec import CloudChoice

    for value in ("auto", "yes", "no"):
        s = make_spec(resolve_source("https://github.com/org/repo"), name="demo",
                      cloud=CloudChoice(**{field: value}))
        assert getattr(s.cloud, field) == value
    with pytest.raises(errors.BadRequest) as info:
        make_spec(resolve_source("https://github.com/org/repo"), name="demo",
                  cloud=CloudChoice(**{field: "true"}))
    assert info.value.message == f"invalid {option} 'true'"
    assert info.value.hint == "use one of: auto, yes, no"


def test_a_failed_build_keeps_the_server_to_read_its_logs_unless_asked_not_to():
    console = 'VMBINDER-PHASE {"phase": "build", "status": "failed", "error": "repo2docker exited with 1"}\n'
    provider = FakeProvider(console=console)
    with pytest.raises(errors.BuildFailed) as info:
        lifecycle.launch(provider, spec(), wait=True, keep_failed_build=True)
    assert info.value.exit_code == 6 and info.value.details["kept"] == "demo"
    assert "vmbinder logs demo" in info.value.hint and "vmbinder delete demo" in info.value.hint
    assert "--delete-on-failure" in info.value.hint
    (server,) = provider.list_owned()
    assert server.meta("failed") == "build"
    assert len(provider.resources) == 4  # nothing rolled back


def test_a_cloud_failure_still_rolls_back_when_failed_builds_are_kept():
    provider = FakeProvider(fail_at="wait")
    with pytest.raises(errors.CloudError):
        lifecycle.launch(provider, spec(), wait=True, keep_failed_build=True)
    assert provider.resources == {}
