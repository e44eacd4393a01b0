"""The guest script's path on each distribution users pick (Ubuntu 22.04 and
24.04, Debian 12 and 13), run for real in a scratch root with that
distribution's /etc/os-release and apt sources and recorders for every external
command (test_guest_script.py's harness). Ubuntu cannot be fetched here, so its
path runs only here; Debian 12 and 13 also boot for real under qemu (tests/e2e).

Also here: waiting for the dpkg/apt locks that first-boot apt runs hold (a
real fcntl lock held by another process), and the failed phase a failing
apt-get leaves, read back by the host's readiness probe."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from vmbinder import errors, readiness

from . import test_guest_script as harness

Guest, spec_for = harness.Guest, harness.spec_for
jupyter = harness.jupyter  # the fixture: a stand-in for the container's Jupyter

OS_RELEASE = {
    "debian-12": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
                 'VERSION_ID="12"\nVERSION="12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n',
    "debian-13": 'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nNAME="Debian GNU/Linux"\n'
                 'VERSION_ID="13"\nVERSION="13 (trixie)"\nVERSION_CODENAME=trixie\nID=debian\n',
    "ubuntu-22.04": 'PRETTY_NAME="Ubuntu 22.04.5 LTS"\nNAME="Ubuntu"\nVERSION_ID="22.04"\n'
                    'VERSION="22.04.5 LTS (Jammy Jellyfish)"\nVERSION_CODENAME=jammy\nID=ubuntu\n'
                    'ID_LIKE=debian\nUBUNTU_CODENAME=jammy\n',
    "ubuntu-24.04": 'PRETTY_NAME="Ubuntu 24.04.3 LTS"\nNAME="Ubuntu"\nVERSION_ID="24.04"\n'
                    'VERSION="24.04.3 LTS (Noble Numbat)"\nVERSION_CODENAME=noble\nID=ubuntu\n'
                    'ID_LIKE=debian\nUBUNTU_CODENAME=noble\n',
}
#: Each stock cloud image's apt sources, as its cloud-init writes them.
SOURCES = {
    "debian-12": {"sources.list.d/debian.sources":
                  "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n"
                  "Components: main\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\n"
                  "Suites: bookworm-security\nComponents: main\n"},
    "debian-13": {"sources.list.d/debian.sources":
                  "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie trixie-updates\n"
                  "Components: main\n"},
    "ubuntu-22.04": {"sources.list":
                     "deb http://archive.ubuntu.com/ubuntu jammy main restricted\n"
                     "deb http://archive.ubuntu.com/ubuntu jammy universe\n"
                     "deb http://archive.ubuntu.com/ubuntu jammy-updates main restricted\n"
                     "deb http://archive.ubuntu.com/ubuntu jammy-updates universe\n"
                     "deb http://security.ubuntu.com/ubuntu jammy-security main restricted\n"},
    "ubuntu-24.04": {"sources.list.d/ubuntu.sources":
                     "Types: deb\nURIs: http://archive.ubuntu.com/ubuntu/\n"
                     "Suites: noble noble-updates noble-backports\n"
                     "Components: main restricted universe multiverse\n"
                     "Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg\n"},
}
LOCK = "-o", "DPkg::Lock::Timeout=900"
INSTALL = ["apt-get", "install", "-y", "--no-install-recommends", *LOCK]
UPDATE = ["apt-get", "update", *LOCK]
NATIVE = [UPDATE, [*INSTALL, "docker.io", "docker-buildx", "apparmor", "xz-utils", "git",
                   "python3-venv"]]
APT_CALLS = {
    # Debian 12 has no docker-buildx: Debian 13's, from trixie pinned low.
    "debian-12": [UPDATE, [*INSTALL, "docker.io", "apparmor", "xz-utils", "git", "python3-venv"],
                  UPDATE, [*INSTALL, "-t", "trixie", "docker-buildx"]],
    # Debian 13's docker.io only recommends docker-cli, which has the docker command.
    "debian-13": [UPDATE, [*INSTALL, "docker.io", "docker-cli", "docker-buildx", "apparmor",
                           "xz-utils", "git", "python3-venv"]],
    "ubuntu-22.04": NATIVE, "ubuntu-24.04": NATIVE,
}

#: apt-get: records its arguments, its environment and whether apt's locks were
#: free when it ran; fails like a broken mirror when APT_FAIL names its subcommand.
APT_GET = """#!{python}
import fcntl, json, os, sys
root = os.environ["VMBINDER_GUEST_ROOT"]
free = True
for lock in ("var/lib/dpkg/lock-frontend", "var/lib/dpkg/lock", "var/lib/apt/lists/lock"):
    try:
        fd = os.open(os.path.join(root, lock), os.O_RDWR)
    except OSError:
        continue
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        free = False
    os.close(fd)
with open(os.environ["RECORD"], "a") as fh:
    fh.write(json.dumps(["apt-get"] + sys.argv[1:]) + "\\n")
with open(os.environ["RECORD"] + ".apt", "a") as fh:
    fh.write(json.dumps({{"locks_free": free, "frontend": os.environ.get("DEBIAN_FRONTEND"),
                         "needrestart": os.environ.get("NEEDRESTART_SUSPEND")}}) + "\\n")
if sys.argv[1] == os.environ.get("APT_FAIL"):
    for n in range(30):
        print(f"Get:{{n}} http://deb.debian.org/debian trixie/main amd64 Packages")
    print("Reading package lists...\\nE: Unable to locate package docker-buildx")
    sys.exit(100)
"""

#: Holds an fcntl write lock on a file, as apt does, for some seconds.
HOLD = """
import fcntl, sys, time
fh = open(sys.argv[1], "w")
fcntl.lockf(fh, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def distro_guest(tmp_path, jupyter, distro, sources=None) -> Guest:
    guest = Guest(tmp_path, jupyter, spec_for())
    (guest.root / "etc/os-release").write_text(OS_RELEASE[distro])
    for name, text in (SOURCES[distro] if sources is None else sources).items():
        (guest.root / "etc/apt" / name).parent.mkdir(parents=True, exist_ok=True)
        (guest.root / "etc/apt" / name).write_text(text)
    for lock in ("var/lib/dpkg/lock-frontend", "var/lib/dpkg/lock", "var/lib/apt/lists/lock"):
        (guest.root / lock).parent.mkdir(parents=True, exist_ok=True)
        (guest.root / lock).touch()
    (guest.bin / "apt-get").write_text(APT_GET.format(python=sys.executable))
    return guest


def apt_seen(guest) -> list[dict]:
    path = guest.record.with_name(guest.record.name + ".apt")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def phases(guest) -> list[dict]:
    lines = (guest.root / "dev/console").read_text().splitlines()
    return [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith("VMBINDER-PHASE ")]


@pytest.mark.parametrize("distro", list(APT_CALLS))
def test_each_distribution_installs_docker_with_buildx_by_its_own_package_names(
        tmp_path, jupyter, distro):
    guest = distro_guest(tmp_path, jupyter, distro)
    res = guest.run(NO_BUILDX="1")
    assert res.returncode == 0, res.stderr + (guest.root / "var/log/vmbinder/guest.log").read_text()
    assert guest.calls("apt-get") == APT_CALLS[distro]
    assert apt_seen(guest) == [{"locks_free": True, "frontend": "noninteractive",
                                "needrestart": "1"}] * len(APT_CALLS[distro])
    assert ["systemctl", "restart", "docker"] in guest.calls("systemctl")
    trixie = guest.root / "etc/apt/sources.list.d/vmbinder-trixie.sources"
    pin = guest.root / "etc/apt/preferences.d/vmbinder-trixie"
    if distro == "debian-12":
        assert trixie.read_text() == ("Types: deb\nURIs: http://deb.debian.org/debian\n"
                                      "Suites: trixie\nComponents: main\n")
        assert "Pin-Priority: 100" in pin.read_text()
    else:
        assert not trixie.exists() and not pin.exists()
    # Their stock sources have universe: nothing is added.
    assert not (guest.root / "etc/apt/sources.list.d/vmbinder-universe.sources").exists()
    assert guest.state()["ready"] is True


def test_docker_present_means_no_apt_at_all(tmp_path, jupyter):
    guest = distro_guest(tmp_path, jupyter, "ubuntu-22.04")
    assert guest.run().returncode == 0
    assert guest.calls("apt-get") == []


@pytest.mark.parametrize("distro, sources", [
    ("ubuntu-24.04", {"sources.list.d/ubuntu.sources":
                      "Types: deb\nURIs: http://nova.clouds.archive.ubuntu.com/ubuntu/\n"
                      "Suites: noble noble-updates\nComponents: main restricted\n\n"
                      "Types: deb\nURIs: http://security.ubuntu.com/ubuntu/\n"
                      "Suites: noble-security\nComponents: main restricted\n"}),
    ("ubuntu-22.04", {"sources.list": "deb http://nova.clouds.archive.ubuntu.com/ubuntu/ jammy "
                                      "main restricted\n# deb http://x.example/ubuntu jammy universe\n"}),
])
def test_ubuntu_without_universe_gets_it_beside_main(tmp_path, jupyter, distro, sources):
    guest = distro_guest(tmp_path, jupyter, distro, sources)
    assert guest.run(NO_BUILDX="1").returncode == 0
    added = (guest.root / "etc/apt/sources.list.d/vmbinder-universe.sources").read_text()
    if distro == "ubuntu-24.04":
        assert added == ("Types: deb\nURIs: http://nova.clouds.archive.ubuntu.com/ubuntu/\n"
                         "Suites: noble noble-updates\nComponents: universe\n\n"
                         "Types: deb\nURIs: http://security.ubuntu.com/ubuntu/\n"
                         "Suites: noble-security\nComponents: universe\n")
    else:
        assert added == ("Types: deb\nURIs: http://nova.clouds.archive.ubuntu.com/ubuntu/\n"
                         "Suites: jammy\nComponents: universe\n")
    assert guest.calls("apt-get") == NATIVE
    first = len(guest.calls())
    assert guest.run().returncode == 0  # once added, it stays as it is
    assert (guest.root / "etc/apt/sources.list.d/vmbinder-universe.sources").read_text() == added
    assert not [c for c in guest.calls()[first:] if c[0] == "apt-get"]


def hold(path, seconds) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "locked\n"
    return proc


@pytest.mark.parametrize("lock", ["var/lib/dpkg/lock-frontend", "var/lib/apt/lists/lock"])
def test_apt_waits_while_another_process_holds_its_lock_and_says_for_whom(
        tmp_path, jupyter, lock):
    guest = distro_guest(tmp_path, jupyter, "ubuntu-24.04")
    holder = hold(guest.root / lock, 4)
    t0 = time.monotonic()
    try:
        res = guest.run(NO_BUILDX="1")
    finally:
        holder.wait(timeout=30)
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - t0 >= 3.5  # it waited for the holder
    # apt-get ran only once the lock was free, and with apt's own timeout too.
    assert guest.calls("apt-get") == NATIVE
    assert all(seen["locks_free"] for seen in apt_seen(guest))
    docker = [p for p in phases(guest) if p["phase"] == "docker"]
    assert [p["status"] for p in docker] == ["started", "waiting", "started", "done"]
    waiting = docker[1]["detail"]
    assert waiting.startswith(f"/{lock} held by ") and waiting.endswith(f" (pid {holder.pid})")
    assert docker[2]["detail"].startswith("waited ")
    # What the host shows while it waits.
    lines = (guest.root / "dev/console").read_text().splitlines()
    upto = "\n".join(lines[:next(i for i, ln in enumerate(lines) if '"waiting"' in ln) + 1])
    assert readiness.console_probe(lambda: upto)() == (False, f"docker waiting: {waiting}")


def test_the_wait_for_the_lock_is_bounded_and_the_failure_names_the_holder(tmp_path, jupyter):
    guest = distro_guest(tmp_path, jupyter, "ubuntu-22.04")
    holder = hold(guest.root / "var/lib/dpkg/lock-frontend", 60)
    try:
        res = guest.run(NO_BUILDX="1", VMBINDER_GUEST_APT_WAIT="3")
    finally:
        holder.kill()
        holder.wait()
    assert res.returncode == 1
    assert guest.calls("apt-get") == []
    state = guest.state()
    assert (state["phase"], state["status"]) == ("docker", "failed")
    assert state["error"].startswith("TimeoutError: /var/lib/dpkg/lock-frontend still held by ")
    assert state["error"].endswith(f" (pid {holder.pid}) after 3 s")


def test_a_failing_apt_get_is_a_failed_phase_with_the_command_and_the_log_tail(tmp_path, jupyter):
    guest = distro_guest(tmp_path, jupyter, "debian-13")
    res = guest.run(NO_BUILDX="1", APT_FAIL="install")
    assert res.returncode == 1
    failed = phases(guest)[-1]
    error = ("apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=900 docker.io "
             "docker-cli docker-buildx apparmor xz-utils git python3-venv exited with 100")
    assert (failed["phase"], failed["status"], failed["error"]) == ("docker", "failed", error)
    assert failed["log"][-2:] == ["Reading package lists...",
                                  "E: Unable to locate package docker-buildx"]
    assert len(failed["log"]) == 10
    state = guest.state()
    assert (state["error"], state["log"]) == (error, failed["log"])
    assert len((guest.root / "dev/console").read_text().splitlines()[-1]) < 2000
    # The launch that waits for this guest stops with the same words.
    console = (guest.root / "dev/console").read_text()
    console += 'VMBINDER-PHASE {"phase": "docker", "status": "failed"}\n'  # re-emitted later
    with pytest.raises(errors.BuildFailed) as info:
        readiness.console_probe(lambda: console)()
    assert info.value.message == f"the guest step 'docker' failed: {error}"
    assert info.value.hint.endswith("\n  Reading package lists...\n"
                                    "  E: Unable to locate package docker-buildx")


def test_a_server_that_is_not_debian_or_ubuntu_is_told_which_images_work(tmp_path, jupyter):
    guest = distro_guest(tmp_path, jupyter, "debian-12")
    (guest.root / "etc/os-release").write_text('NAME="Fedora Linux"\nVERSION_ID=41\nID=fedora\n')
    assert guest.run(NO_BUILDX="1").returncode == 1
    state = guest.state()
    assert (state["phase"], state["status"]) == ("docker", "failed")
    assert state["error"] == ("RuntimeError: not a Debian or Ubuntu server (os-release "
                              "ID='fedora'): launch an Ubuntu 22.04/24.04 or Debian 12/13 image")
    assert guest.calls("apt-get") == []
