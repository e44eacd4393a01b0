"""vmbinder.localrepo: a folder served over git:// on loopback, cloned for real."""

from __future__ import annotations

import subprocess
import sys

from vmbinder.localrepo import HOST_FROM_GUEST, bare_repository, serve


def test_a_plain_folder_is_served_and_clones_shallow(tmp_path):
    folder = tmp_path / "repo"
    (folder / "binder").mkdir(parents=True)
    (folder / "binder" / "requirements.txt").write_text("numpy\n")
    (folder / "index.ipynb").write_text("{}\n")
    with serve(folder) as url:
        assert url.startswith(f"git://{HOST_FROM_GUEST}:") and url.endswith("/repo.git")
        loopback = url.replace(HOST_FROM_GUEST, "127.0.0.1")
        # repo2docker clones HEAD with --depth 1, which the dumb HTTP transport cannot do.
        subprocess.run(["git", "clone", "-q", "--depth", "1", loopback, str(tmp_path / "clone")],
                       check=True, timeout=60)
    assert (tmp_path / "clone" / "binder" / "requirements.txt").read_text() == "numpy\n"
    assert (tmp_path / "clone" / "index.ipynb").exists()
    # Serving stopped with the context.
    res = subprocess.run(["git", "ls-remote", loopback], check=False, capture_output=True, timeout=60)
    assert res.returncode != 0


def test_a_work_tree_is_served_as_committed(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", "-C", str(work)]
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    (work / "committed.txt").write_text("yes\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    (work / "uncommitted.txt").write_text("no\n")
    bare = bare_repository(work, tmp_path / "out")
    files = subprocess.run(["git", "--git-dir", str(bare), "ls-tree", "--name-only", "HEAD"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert files == ["committed.txt"]


def test_only_the_commit_checked_out_is_served(tmp_path):
    work = tmp_path / "work"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", "-c", "commit.gpgsign=false",
           "-C", str(work)]
    subprocess.run(["git", "init", "-q", "-b", "dev", str(work)], check=True)
    (work / "a.txt").write_text("a\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    subprocess.run([*git, "tag", "private-tag"], check=True)
    subprocess.run([*git, "checkout", "-q", "-b", "secret"], check=True)
    (work / "secret.txt").write_text("s\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "secret"], check=True)
    subprocess.run([*git, "checkout", "-q", "dev"], check=True)
    with serve(work) as url:
        refs = subprocess.run(["git", "ls-remote", url.replace(HOST_FROM_GUEST, "127.0.0.1")],
                              capture_output=True, text=True, check=True, timeout=60).stdout
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert sorted(line.split("\t")[1] for line in refs.splitlines()) == ["HEAD", "refs/heads/main"]
    assert {line.split("\t")[0] for line in refs.splitlines()} == {head}


def test_the_command_gets_the_url_and_its_exit_code_is_returned(tmp_path):
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "a.txt").write_text("a\n")
    probe = ("import subprocess, sys; url = sys.argv[1].replace('10.0.2.2', '127.0.0.1'); "
             "out = subprocess.run(['git', 'ls-remote', url], capture_output=True, text=True); "
             "sys.exit(3 if 'HEAD' in out.stdout else 1)")
    res = subprocess.run([sys.executable, "-m", "vmbinder.localrepo", str(folder), "--",
                          sys.executable, "-c", probe, "{url}"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 3, res.stderr
    assert "serving" in res.stderr and "git://10.0.2.2:" in res.stderr


def test_a_missing_folder_is_refused(tmp_path):
    res = subprocess.run([sys.executable, "-m", "vmbinder.localrepo", str(tmp_path / "nope"), "--",
                          "true"], check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "is not a folder" in res.stderr


def test_listen_serves_on_another_address_and_names_it_in_the_url(tmp_path):
    """For guests that reach this machine at an address of its own (the real-compute
    testbed's "internet" namespace): the URL names that address, not 10.0.2.2."""
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "a.txt").write_text("a\n")
    probe = ("import subprocess, sys; "
             "out = subprocess.run(['git', 'ls-remote', sys.argv[1]], capture_output=True, text=True); "
             "sys.exit(3 if 'HEAD' in out.stdout else 1)")
    res = subprocess.run([sys.executable, "-m", "vmbinder.localrepo", str(folder), "--listen",
                          "127.0.0.2", "--", sys.executable, "-c", probe, "{url}"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 3, res.stderr
    assert "git://127.0.0.2:" in res.stderr
    with serve(folder, listen="127.0.0.1", host="192.0.2.7") as url:
        assert url.startswith("git://192.0.2.7:")
