"""The OpenStack provider's pure helpers, and its choice of image and flavor from
listed records; its cloud calls are tested against the testbed."""

import re
from types import SimpleNamespace

import pytest

from vmbinder import errors
from vmbinder.providers import base
from vmbinder.providers.openstack import common as osp
from vmbinder.providers.openstack import resolve
from vmbinder.sources import Source
from vmbinder.spec import make_spec

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAh9u6h1s3w7r4bC0nC9kzY2Oq3v0C0Q2k3nXvQ1o3Zq me@host"


def test_keypair_name_is_stable_and_ignores_the_comment():
    assert base.keypair_name(KEY) == base.keypair_name(KEY.rsplit(" ", 1)[0] + " other")
    assert base.keypair_name(KEY).startswith("vmbinder-") and len(base.keypair_name(KEY)) == 21


@pytest.mark.parametrize("bad", ["", "ssh-ed25519", "ssh-ed25519 !!!notbase64"])
def test_keypair_name_refuses_a_broken_key(bad):
    with pytest.raises(errors.BadRequest):
        base.keypair_name(bad)


def rule(port, prefix=None, *, eth="IPv4", protocol="tcp", hi=None, rule_id=None, **extra):
    """A Neutron ingress rule as the group's security_group_rules list holds it."""
    return {"id": rule_id or f"r-{port}-{eth}", "direction": "ingress", "protocol": protocol,
            "ethertype": eth, "port_range_min": port,
            "port_range_max": port if hi is None else hi, "remote_ip_prefix": prefix,
            "remote_group_id": None, **extra}


def test_security_group_rules_add_only_what_is_missing():
    want = osp.wanted_rules("0.0.0.0/0")
    assert want == {("IPv4", 22, "0.0.0.0/0"), ("IPv6", 22, "::/0"), ("IPv4", 80, "0.0.0.0/0"),
                    ("IPv6", 80, "::/0"), ("IPv4", 443, "0.0.0.0/0"), ("IPv6", 443, "::/0")}
    have = osp.existing_rules([
        rule(80), rule(443, "0.0.0.0/0"),
        {"direction": "egress", "protocol": None, "ethertype": "IPv4"},
        rule(22, remote_group_id="g"),  # from a group: not the rule vmbinder asks for
    ])
    assert want - have == {("IPv4", 22, "0.0.0.0/0"), ("IPv6", 22, "::/0"),
                           ("IPv6", 80, "::/0"), ("IPv6", 443, "::/0")}


def test_narrowed_ssh_gets_its_own_group_and_one_ssh_rule():
    assert osp.security_group_name("0.0.0.0/0") == "vmbinder"
    assert osp.security_group_name("::/0") == "vmbinder"
    assert osp.security_group_name("192.0.2.0/24") == "vmbinder-ssh-192-0-2-0-24"
    ssh = [r for r in osp.wanted_rules("192.0.2.0/24") if r[1] == 22]
    assert ssh == [("IPv4", 22, "192.0.2.0/24")]


def test_a_group_is_named_after_the_network_so_an_address_in_it_gives_the_same_group():
    assert osp.security_group_name("10.1.2.3/24") == osp.security_group_name("10.1.2.0/24") \
        == "vmbinder-ssh-10-1-2-0-24"
    assert osp.security_group_name("2001:db8::1/32") == osp.security_group_name("2001:db8::/32") \
        == "vmbinder-ssh-2001-0db8-0000-0000-0000-0000-0000-0000-32"
    assert ("IPv4", 22, "10.1.2.0/24") in osp.wanted_rules("10.1.2.3/24")
    assert ("IPv6", 22, "2001:db8::/32") in osp.wanted_rules("2001:db8::1/32")
    # A host: its own group, /32 or /128.
    assert osp.security_group_name("198.51.100.7/32") == "vmbinder-ssh-198-51-100-7-32"
    assert osp.wanted_rules("1.2.3.4/0") == osp.wanted_rules("0.0.0.0/0")  # open is open


def test_two_networks_never_share_a_group_name():
    import ipaddress

    nets = {
        # Networks whose names collided when every run of non-hex characters became "-".
        "1:2::3:4/128", "1::2:3:4/128", "1:2:3::4/128", "1::2/127", "1:0:2::/127",
        "10.1.2.0/24", "10:1:2::/48", "::ffff:10.1.2.0/120", "::ffff:10.1.3.0/120",
        "192.0.2.0/24", "192.0.2.0/25", "2001:db8::/32", "2001:db8::/33", "2001:db8:0:1::/64",
        "2001:db8:1::/64", "0.0.0.0/0", "::/0", "255.255.255.255/32",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
    }
    by_name: dict[str, set] = {}
    for text in nets:
        by_name.setdefault(osp.security_group_name(text), set()).add(
            ipaddress.ip_network(text, strict=False))
    # Only the two open networks share one: `vmbinder`, which lets in both.
    assert {n: v for n, v in by_name.items() if len(v) > 1} == {
        "vmbinder": {ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")}}
    assert max(len(n) for n in by_name) <= 255  # Neutron's limit
    assert all(re.fullmatch(r"vmbinder(-ssh-[0-9a-f-]+)?", n) for n in by_name)


def test_rules_beyond_what_vmbinder_asks_for_are_found_and_egress_is_not_one():
    wanted = [rule(p, c, eth=e) for p in (22, 80, 443) for e, c in (("IPv4", None), ("IPv6", None))]
    egress = {"id": "e1", "direction": "egress", "protocol": None, "ethertype": "IPv4"}
    assert osp.extra_rules([*wanted, egress], "0.0.0.0/0") == []
    extra = [
        rule(8080, "0.0.0.0/0", rule_id="x1"),
        rule(80, hi=443, rule_id="x2"),                          # a range
        rule(53, protocol="udp", rule_id="x3"),                  # another protocol
        rule(22, "198.51.100.0/24", rule_id="x4"),               # another prefix
        rule(None, protocol=None, rule_id="x5", remote_group_id="g-default"),  # any protocol
        rule(None, protocol="tcp", rule_id="x6", eth="IPv6"),    # every TCP port
        rule(None, protocol="icmp", rule_id="x7"),
    ]
    found = osp.extra_rules([*wanted, egress, *extra], "0.0.0.0/0")
    assert [r["id"] for r in found] == ["x1", "x2", "x3", "x4", "x5", "x6", "x7"]
    said = [osp.describe_rule(r, {"g-default": "default"}) for r in found]
    assert said == ["tcp 8080 from 0.0.0.0/0 (IPv4)", "tcp 80-443 from 0.0.0.0/0 (IPv4)",
                    "udp 53 from 0.0.0.0/0 (IPv4)", "tcp 22 from 198.51.100.0/24 (IPv4)",
                    "any protocol from group default (IPv4)", "tcp (every port) from ::/0 (IPv6)",
                    "icmp from 0.0.0.0/0 (IPv4)"]
    # With SSH narrowed, SSH from everywhere is one more than asked for; the narrowed
    # rule, written with its host bits, is the one asked for.
    narrowed = [r for r in wanted if r["port_range_min"] != 22]
    narrowed.append(rule(22, "10.1.2.3/24", rule_id="s1"))
    assert osp.extra_rules(narrowed, "10.1.2.0/24") == []
    assert [r["id"] for r in osp.extra_rules(wanted, "10.1.2.0/24")] == ["r-22-IPv4", "r-22-IPv6"]


@pytest.mark.parametrize("status, task, state", [
    ("BUILD", None, "building"), ("ACTIVE", None, "active"), ("ERROR", None, "error"),
    ("SHUTOFF", None, "stopped"), ("ACTIVE", "deleting", "deleting"), ("WEIRD", None, "unknown"),
])
def test_cloud_states_map_to_ours(status, task, state):
    assert osp.state_of(status, task) == state


def test_floating_address_is_read_from_addresses():
    addrs = {"private": [{"addr": "192.0.2.5", "OS-EXT-IPS:type": "fixed"},
                         {"addr": "203.0.113.20", "OS-EXT-IPS:type": "floating"}]}
    assert osp.floating_address(addrs) == "203.0.113.20"
    assert osp.floating_address({}) is None


def test_metadata_records_provenance_and_refuses_overlong_values():
    src = Source("https://github.com/o/r", "git", ref="main", open="nb/a.ipynb",
                 given="https://github.com/o/r")
    spec = make_spec(src, name="demo")
    meta = osp.server_metadata(spec, "user-1")
    assert meta["vmbinder:repo"] == "https://github.com/o/r"
    assert meta["vmbinder:ref"] == "main" and meta["vmbinder:open-file"] == "nb/a.ipynb"
    assert "vmbinder:urlpath" not in meta and "vmbinder:open" not in meta
    assert meta["vmbinder:repo2docker"] == spec.repo2docker_version
    assert meta["vmbinder:token"] == spec.token and meta["vmbinder:owner"] == "user-1"
    assert "vmbinder:subdir" not in meta
    long = make_spec(Source("https://github.com/o/r", "git", ref="r" * 300), name="demo")
    with pytest.raises(errors.BadRequest):
        osp.server_metadata(long, "u")


def test_a_multi_line_badge_is_recorded_as_the_repository_it_names():
    badge = "[![Binder](https://mybinder.org/badge_logo.svg)]\n(https://mybinder.org/v2/gh/o/r/HEAD)"
    spec = make_spec(Source("https://github.com/o/r", "git", ref="HEAD", given=badge), name="demo")
    assert osp.server_metadata(spec, "u")["vmbinder:source"] == "https://github.com/o/r"


def _image(name, disk_format="qcow2", container_format="bare", created="2026-01-01T00:00:00Z",
           **extra):
    return SimpleNamespace(id=f"id-{name}", name=name, disk_format=disk_format,
                           container_format=container_format, created_at=created, **extra)


def test_kernel_and_initrd_images_are_never_bootable():
    images = [_image("d"), _image("d-kernel", "aki", "aki"), _image("d-initrd", "ari", "ari"),
              _image("old-style", "qcow2", "aki")]
    assert [i.name for i in osp.bootable(images)] == ["d"]


def test_choosing_an_image_skips_the_kernel_and_initrd_of_an_upload():
    # The parts of `vmbinder image upload` look like Debian 12 too, and may be the newest.
    images = [
        _image("debian-12-baked", created="2026-11-23T20:00:00Z"),
        _image("debian-12-baked-kernel", "aki", "aki", created="2026-11-23T20:00:01Z"),
        _image("debian-12-baked-initrd", "ari", "ari", created="2026-11-23T20:00:01Z"),
    ]
    conn = SimpleNamespace(image=SimpleNamespace(images=lambda **query: iter(images)))
    assert resolve.image(conn, None).name == "debian-12-baked"
    conn.image.images = lambda **query: iter(images[1:])
    with pytest.raises(errors.ConfigError) as info:
        resolve.image(conn, None)
    assert "kernel" not in info.value.hint and "(none visible)" in info.value.hint


def test_choosing_a_flavor_honours_the_image_min_disk():
    flavors = [SimpleNamespace(name=n, ram=r, disk=d, vcpus=1)
               for n, r, d in (("small", 2048, 10), ("medium", 4096, 20), ("tiny", 512, 40))]
    conn = SimpleNamespace(compute=SimpleNamespace(flavors=lambda: iter(flavors)))
    assert resolve.flavor(conn, None).name == "small"
    assert resolve.flavor(conn, None, _image("d", min_disk=20, min_ram=0)).name == "medium"
    with pytest.raises(errors.ConfigError) as info:
        resolve.flavor(conn, None, _image("d", min_disk=50, min_ram=0))
    assert "50 GB of disk" in info.value.message


@pytest.fixture
def flaky_http():
    """A loopback server that answers `code` (with Retry-After: 0) to the first `fail` requests."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        fail, seen, code = 0, 0, 503

        def answer(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            Handler.seen += 1
            busy = Handler.seen <= Handler.fail
            self.send_response(Handler.code if busy else 200)
            if busy:
                self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Handler, f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


@pytest.mark.parametrize("method, code, tries", [
    ("GET", 503, 3), ("GET", 429, 3), ("GET", 502, 3), ("GET", 504, 3),
    ("POST", 503, 3), ("POST", 429, 3),
    ("POST", 502, 1), ("POST", 504, 1),  # the cloud may have acted on it: not sent again
    ("GET", 500, 1),
])
def test_the_session_tries_again_only_what_is_safe_to_send_again(flaky_http, method, code, tries):
    handler, url = flaky_http
    handler.fail, handler.code = 2, code
    resp = osp._retrying_session().request(url, method, authenticated=False, raise_exc=False)
    assert handler.seen == tries
    assert resp.status_code == (200 if tries == 3 else code)


def test_the_session_gives_up_on_a_cloud_that_stays_busy(flaky_http):
    handler, url = flaky_http
    handler.fail = 100
    resp = osp._retrying_session().get(url, authenticated=False, raise_exc=False)
    assert resp.status_code == 503
    assert handler.seen == 1 + osp.RETRY_DEFAULTS["status_code_retries"]


def test_a_post_whose_connection_failed_is_not_sent_again(monkeypatch):
    from keystoneauth1 import exceptions as ksa

    session, sent = osp._retrying_session(), []

    def refuse(*args, **kwargs):
        sent.append(args)
        raise __import__("requests").exceptions.ConnectionError("refused")

    monkeypatch.setattr(session.session, "request", refuse)
    monkeypatch.setattr("time.sleep", lambda s: None)
    with pytest.raises(ksa.ConnectFailure):
        session.post("http://127.0.0.1:9/", authenticated=False)
    assert len(sent) == 1
    with pytest.raises(ksa.ConnectFailure):
        session.get("http://127.0.0.1:9/", authenticated=False)
    assert len(sent) == 2 + osp.RETRY_DEFAULTS["connect_retries"]
    # Authentication makes nothing that lasts: it is tried again like a read.
    with pytest.raises(ksa.ConnectFailure):
        session.post("http://127.0.0.1:9/v3/auth/tokens", authenticated=False)
    assert len(sent) == 3 + 2 * osp.RETRY_DEFAULTS["connect_retries"]


def test_connect_fills_in_retries_and_keeps_what_clouds_yaml_says(tmp_path, monkeypatch):
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text("clouds:\n  c:\n    auth: {auth_url: 'http://127.0.0.1:9/v3', username: u,"
                      " password: p, project_name: p, user_domain_name: d,"
                      " project_domain_name: d}\n    api_timeout: 7\n    connect_retries: 1\n")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    config = osp.connect("c").config
    assert config.config["api_timeout"] == 7 and config.get_connect_retries("compute") == 1
    assert config.get_status_code_retries("compute") == osp.RETRY_DEFAULTS["status_code_retries"]
    assert config.get_retriable_status_codes("network") == [429, 502, 503, 504]


def test_a_make_call_that_fails_leaves_a_sweep_in_the_ledger_and_one_that_returns_does_not():
    from vmbinder.providers.base import Ledger

    ledger, swept = Ledger(), []
    with osp.in_flight(ledger, "server", "s", lambda: swept.append("s"), "cmd"):
        pass
    assert ledger.items == []
    with pytest.raises(KeyboardInterrupt):
        with osp.in_flight(ledger, "server", "s", lambda: swept.append("s"), "cmd"):
            raise KeyboardInterrupt
    (pending,) = ledger.items
    assert (pending.kind, pending.name, pending.command) == ("server", "s", "cmd")
    pending.remove()
    assert swept == ["s"]


@pytest.mark.parametrize("config, plain", [
    ({"auth": {"auth_url": "https://k.example/v3/"}, "identity_api_version": "3"}, True),
    ({"auth": {"auth_url": "https://k.example/v3"}, "auth_type": "password"}, True),
    ({"auth": {"auth_url": "https://k.example:5000"}, "identity_api_version": "3"}, False),
    ({"auth": {"auth_url": "https://k.example/v3"}, "auth_type": "v3applicationcredential"}, False),
    ({"auth": {"auth_url": "https://k.example/v3"}, "identity_api_version": "2.0"}, False),
])
def test_only_a_password_cloud_on_keystone_v3_skips_version_discovery(config, plain):
    assert osp._plain_v3_password(config) is plain
