"""Source parsing: what users type or paste -> what repo2docker is given."""

from __future__ import annotations

import socket

import pytest

from vmbinder.errors import BadRequest
from vmbinder.sources import (
    ACCEPTED_FORMS,
    KINDS,
    Source,
    normalize_open_file,
    normalize_urlpath,
    parse_source,
    resolve_source,
    validate_ref,
    validate_subdir,
)

SHA = "0123456789abcdef0123456789abcdef01234567"
HS = "8f7c2f0341ef4180b0dbe97f59130756"
GIST = "5b3fe8e5e3c0f0b1f5b4f3f1c4f1e1d2"
GH = "https://github.com/owner/repo"
MB = "https://mybinder.org/v2"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("source parsing must not use the network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


# input -> (repo, kind, ref, subdir, open (a file of the repository), urlpath)
PARSED = [
    # plain git URLs, kept as given apart from a trailing slash
    ("https://git.example.org/group/project.git", ("https://git.example.org/group/project.git", "git", None, None, None, None)),
    ("https://git.example.org/group/project/", ("https://git.example.org/group/project", "git", None, None, None, None)),
    ("http://git.example.org/project", ("http://git.example.org/project", "git", None, None, None, None)),
    ("  https://git.example.org/p.git \n", ("https://git.example.org/p.git", "git", None, None, None, None)),
    # SSH URLs of public hosts -> their https form (the server has no key to clone with)
    ("ssh://git@github.com/owner/repo.git", (GH, "git", None, None, None, None)),
    ("git@github.com:owner/repo.git", (GH, "git", None, None, None, None)),
    ("git@gitlab.com:group/sub/project.git", ("https://gitlab.com/group/sub/project", "git", None, None, None, None)),
    ("ssh://git@codeberg.org/owner/repo.git", ("https://codeberg.org/owner/repo", "git", None, None, None, None)),
    ("git@bitbucket.org:owner/repo.git", ("https://bitbucket.org/owner/repo", "git", None, None, None, None)),
    (f"git@gist.github.com:{GIST}.git", (f"https://gist.github.com/{GIST}.git", "gist", None, None, None, None)),
    ("git://git.example.org/project.git", ("git://git.example.org/project.git", "git", None, None, None, None)),
    ("https://bitbucket.org/owner/repo", ("https://bitbucket.org/owner/repo", "git", None, None, None, None)),
    # GitHub
    ("https://github.com/owner/repo", (GH, "git", None, None, None, None)),
    ("https://github.com/owner/repo.git", (GH, "git", None, None, None, None)),
    ("https://github.com/owner/repo/", (GH, "git", None, None, None, None)),
    ("http://www.github.com/owner/repo#readme", (GH, "git", None, None, None, None)),
    ("github.com/owner/repo", (GH, "git", None, None, None, None)),
    ("gh:owner/repo", (GH, "git", None, None, None, None)),
    ("https://github.com/owner/repo/tree/main", (GH, "git", "main", None, None, None)),
    ("https://github.com/owner/repo/tree/v1.2.3/", (GH, "git", "v1.2.3", None, None, None)),
    ("https://github.com/owner/repo/tree/main/binder/env", (GH, "git", "main", None, "binder/env", None)),
    ("https://github.com/owner/repo/tree/main/my%20env", (GH, "git", "main", None, "my env", None)),
    ("https://github.com/owner/repo/releases/tag/v2.0", (GH, "git", "v2.0", None, None, None)),
    ("https://github.com/owner/repo/blob/main/index.ipynb", (GH, "git", "main", None, "index.ipynb", None)),
    ("https://github.com/owner/repo/blob/main/a.ipynb%3Fx%3D1", (GH, "git", "main", None, "a.ipynb?x=1", None)),
    ("https://github.com/owner/repo/blob/dev/notebooks/a%20b.ipynb",
     (GH, "git", "dev", None, "notebooks/a b.ipynb", None)),
    (f"https://github.com/owner/repo/commit/{SHA}", (GH, "git", SHA, None, None, None)),
    # GitLab: gitlab.com at any depth, self-hosted when the path has /-/
    ("https://gitlab.com/group/project", ("https://gitlab.com/group/project", "git", None, None, None, None)),
    ("https://gitlab.com/group/sub/project.git", ("https://gitlab.com/group/sub/project", "git", None, None, None, None)),
    ("gitlab.com/group/project", ("https://gitlab.com/group/project", "git", None, None, None, None)),
    ("https://gitlab.com/g/sub/proj/-/tree/main/env?ref_type=heads", ("https://gitlab.com/g/sub/proj", "git", "main", None, "env", None)),
    ("https://gitlab.com/g/proj/-/blob/v2/nb/x.ipynb", ("https://gitlab.com/g/proj", "git", "v2", None, "nb/x.ipynb", None)),
    ("https://git.example.org/g/sub/proj/-/tree/dev/env", ("https://git.example.org/g/sub/proj", "git", "dev", None, "env", None)),
    ("https://git.example.org/g/proj/-/blob/main/a.ipynb", ("https://git.example.org/g/proj", "git", "main", None, "a.ipynb", None)),
    ("https://git.example.org/g/proj/-/commit/" + SHA, ("https://git.example.org/g/proj", "git", SHA, None, None, None)),
    # gists
    (f"https://gist.github.com/user/{GIST}", (f"https://gist.github.com/user/{GIST}.git", "gist", None, None, None, None)),
    (f"https://gist.github.com/{GIST}", (f"https://gist.github.com/{GIST}.git", "gist", None, None, None, None)),
    (f"https://gist.github.com/user/{GIST}/{SHA}", (f"https://gist.github.com/user/{GIST}.git", "gist", SHA, None, None, None)),
    # DOIs in every spelling -> the bare DOI
    ("10.5281/zenodo.3242074", ("10.5281/zenodo.3242074", "doi", None, None, None, None)),
    ("doi:10.5281/zenodo.3242074", ("10.5281/zenodo.3242074", "doi", None, None, None, None)),
    ("DOI:10.6084/m9.figshare.9782777.v1", ("10.6084/m9.figshare.9782777.v1", "doi", None, None, None, None)),
    ("doi: 10.7910/DVN/TJCLKP", ("10.7910/DVN/TJCLKP", "doi", None, None, None, None)),
    ("https://doi.org/10.5281/zenodo.3242074", ("10.5281/zenodo.3242074", "doi", None, None, None, None)),
    ("http://dx.doi.org/10.5281/zenodo.3242074/", ("10.5281/zenodo.3242074", "doi", None, None, None, None)),
    ("https://doi.org/10.1000/a%2Fb", ("10.1000/a/b", "doi", None, None, None, None)),
    ("doi.org/10.4211/hs." + HS, ("10.4211/hs." + HS, "doi", None, None, None, None)),
    # data repositories, as repo2docker detects them
    ("https://zenodo.org/records/3242074", ("https://zenodo.org/records/3242074", "zenodo", None, None, None, None)),
    ("https://zenodo.org/record/3242074/", ("https://zenodo.org/record/3242074", "zenodo", None, None, None, None)),
    ("https://www.zenodo.org/records/3242074?preview=1", ("https://zenodo.org/records/3242074", "zenodo", None, None, None, None)),
    ("https://zenodo.org/records/3242074/files/a.zip?download=1", ("https://zenodo.org/records/3242074", "zenodo", None, None, None, None)),
    ("https://sandbox.zenodo.org/records/12345", ("https://sandbox.zenodo.org/records/12345", "zenodo", None, None, None, None)),
    ("https://zenodo.org/doi/10.5281/zenodo.18553140", ("https://zenodo.org/doi/10.5281/zenodo.18553140", "zenodo", None, None, None, None)),
    ("https://figshare.com/articles/binder-examples_requirements/9784088",
     ("https://figshare.com/articles/binder-examples_requirements/9784088", "figshare", None, None, None, None)),
    ("https://figshare.com/articles/dataset/title/9782777/2/",
     ("https://figshare.com/articles/dataset/title/9782777/2", "figshare", None, None, None, None)),
    ("https://dataverse.harvard.edu/dataset.xhtml?persistentId=doi:10.7910/DVN/TJCLKP",
     ("https://dataverse.harvard.edu/dataset.xhtml?persistentId=doi:10.7910/DVN/TJCLKP", "dataverse", None, None, None, None)),
    ("https://data.example.edu/dataset.xhtml?persistentId=doi:10.1/X&version=1.0#files",
     ("https://data.example.edu/dataset.xhtml?persistentId=doi:10.1/X&version=1.0", "dataverse", None, None, None, None)),
    ("https://dataverse.harvard.edu/citation?persistentId=doi:10.7910/DVN/6ZXAGT/3YRRYJ",
     ("https://dataverse.harvard.edu/citation?persistentId=doi:10.7910/DVN/6ZXAGT/3YRRYJ", "dataverse", None, None, None, None)),
    ("https://dataverse.harvard.edu/api/access/datafile/3323458",
     ("https://dataverse.harvard.edu/api/access/datafile/3323458", "dataverse", None, None, None, None)),
    (f"https://www.hydroshare.org/resource/{HS}/", (f"https://www.hydroshare.org/resource/{HS}", "hydroshare", None, None, None, None)),
    (f"http://hydroshare.org/resource/{HS}", (f"https://www.hydroshare.org/resource/{HS}", "hydroshare", None, None, None, None)),
    ("https://demo.ckan.org/dataset/sample-dataset-1", ("https://demo.ckan.org/dataset/sample-dataset-1", "ckan", None, None, None, None)),
    ("https://data.depositar.io/dataset/turtles/?activity_id=93df",
     ("https://data.depositar.io/dataset/turtles/?activity_id=93df", "ckan", None, None, None, None)),
    # Software Heritage: qualifiers dropped, hex lower-cased
    (f"swh:1:dir:{SHA}", (f"swh:1:dir:{SHA}", "swh", None, None, None, None)),
    (f"swh:1:rev:{SHA}", (f"swh:1:rev:{SHA}", "swh", None, None, None, None)),
    (f"swh:1:dir:{SHA.upper()};origin=https://github.com/o/r;visit=swh:1:snp:{SHA}",
     (f"swh:1:dir:{SHA}", "swh", None, None, None, None)),
    # Binder launch links, every provider; the link's ref is kept
    (f"{MB}/gh/owner/repo/HEAD", (GH, "git", "HEAD", None, None, None)),
    (f"{MB}/gh/owner/repo/main?urlpath=lab", (GH, "git", "main", None, None, "lab")),
    (f"{MB}/gh/owner/repo.git/master?urlpath=%2Flab%2Ftree%2Fa%20b.ipynb", (GH, "git", "master", None, None, "lab/tree/a b.ipynb")),
    (f"{MB}/gh/owner/repo/feature/x?labpath=nb/index.ipynb", (GH, "git", "feature/x", None, "nb/index.ipynb", None)),
    (f"{MB}/gh/owner/repo/HEAD?filepath=index.ipynb", (GH, "git", "HEAD", None, "index.ipynb", None)),
    (f"{MB}/gh/owner/repo/HEAD?filepath=data/", (GH, "git", "HEAD", None, "data", None)),
    (f"{MB}/gh/owner/repo/HEAD?urlpath=rstudio/&labpath=x.ipynb", (GH, "git", "HEAD", None, "x.ipynb", None)),
    (f"{MB}/gh/owner/repo/HEAD?urlpath=rstudio/&filepath=x.ipynb", (GH, "git", "HEAD", None, "x.ipynb", None)),
    (f"{MB}/gh/owner/repo/HEAD?urlpath=%2Frstudio%2F", (GH, "git", "HEAD", None, None, "rstudio/")),
    # an nbgitpuller link, escaped twice: once in the urlpath, once in its repo
    (f"{MB}/gh/owner/repo/HEAD?urlpath=git-pull%3Frepo%3Dhttps%253A%252F%252Fgithub.com%252Fo%252Fdata%26branch%3Dmain",
     (GH, "git", "HEAD", None, None, "git-pull?repo=https%3A%2F%2Fgithub.com%2Fo%2Fdata&branch=main")),
    (f"{MB}/gh/owner/repo/HEAD?urlpath=voila%2Frender%2Fapp.ipynb%3Fvoila-theme%3Ddark",
     (GH, "git", "HEAD", None, None, "voila/render/app.ipynb?voila-theme=dark")),
    (f"{MB}/gh/owner/repo", (GH, "git", None, None, None, None)),
    (f"{MB}/gh/owner/repo/HEAD?labpath=a(1).ipynb", (GH, "git", "HEAD", None, "a(1).ipynb", None)),
    ("mybinder.org/v2/gh/owner/repo/v1.0", (GH, "git", "v1.0", None, None, None)),
    ("https://binder.example.org/services/binder/v2/gh/owner/repo/dev?labpath=a.ipynb", (GH, "git", "dev", None, "a.ipynb", None)),
    (f"{MB}/gist/user/{GIST}/HEAD?filepath=a.ipynb", (f"https://gist.github.com/user/{GIST}.git", "gist", None, None, "a.ipynb", None)),
    (f"{MB}/gist/user/{GIST}/master", (f"https://gist.github.com/user/{GIST}.git", "gist", None, None, None, None)),
    (f"{MB}/gist/user/{GIST}/{SHA}?urlpath=lab", (f"https://gist.github.com/user/{GIST}.git", "gist", SHA, None, None, "lab")),
    (f"{MB}/gl/group%2Fsub%2Fproject/main?labpath=a.ipynb", ("https://gitlab.com/group/sub/project", "git", "main", None, "a.ipynb", None)),
    (f"{MB}/gl/group%2Fproject/HEAD?urlpath=tree", ("https://gitlab.com/group/project", "git", "HEAD", None, None, "tree")),
    (f"{MB}/git/https%3A%2F%2Fgit.example.org%2Fproject.git/main?filepath=a.ipynb",
     ("https://git.example.org/project.git", "git", "main", None, "a.ipynb", None)),
    (f"{MB}/git/https%3A%2F%2Fgithub.com%2Fowner%2Frepo/" + SHA, (GH, "git", SHA, None, None, None)),
    (f"{MB}/git/git%40github.com%3Aowner%2Frepo.git/release%2F2?urlpath=lab",
     (GH, "git", "release/2", None, None, "lab")),
    (f"{MB}/zenodo/10.5281/zenodo.3242074/", ("10.5281/zenodo.3242074", "zenodo", None, None, None, None)),
    (f"{MB}/zenodo/10.5281/zenodo.3242074/?labpath=index.ipynb", ("10.5281/zenodo.3242074", "zenodo", None, None, "index.ipynb", None)),
    (f"{MB}/figshare/10.6084/m9.figshare.9782777.v1/?filepath=a.ipynb",
     ("10.6084/m9.figshare.9782777.v1", "figshare", None, None, "a.ipynb", None)),
    (f"{MB}/dataverse/10.7910/DVN/TJCLKP/?urlpath=lab", ("10.7910/DVN/TJCLKP", "dataverse", None, None, None, "lab")),
    (f"{MB}/hydroshare/{HS}/", (f"https://www.hydroshare.org/resource/{HS}", "hydroshare", None, None, None, None)),
    (f"{MB}/hydroshare/10.4211%2Fhs.{HS}/?labpath=a.ipynb", (f"https://www.hydroshare.org/resource/{HS}", "hydroshare", None, None, "a.ipynb", None)),
    (f"{MB}/ckan/https%3A%2F%2Fdemo.ckan.org%2Fdataset%2Fsample-dataset-1/?urlpath=lab",
     ("https://demo.ckan.org/dataset/sample-dataset-1", "ckan", None, None, None, "lab")),
    # Codeberg and other Forgejo/Gitea hosts
    ("https://codeberg.org/owner/repo", ("https://codeberg.org/owner/repo", "git", None, None, None, None)),
    ("codeberg.org/owner/repo.git", ("https://codeberg.org/owner/repo", "git", None, None, None, None)),
    ("https://codeberg.org/owner/repo/src/branch/main/notebooks/a.ipynb",
     ("https://codeberg.org/owner/repo", "git", "main", None, "notebooks/a.ipynb", None)),
    ("https://codeberg.org/owner/repo/src/tag/v1", ("https://codeberg.org/owner/repo", "git", "v1", None, None, None)),
    (f"https://git.example.org/owner/repo/src/commit/{SHA}/docs",
     ("https://git.example.org/owner/repo", "git", SHA, None, "docs", None)),
    # nbviewer shows a repository's notebook
    ("https://nbviewer.org/github/owner/repo/blob/main/nb/a.ipynb", (GH, "git", "main", None, "nb/a.ipynb", None)),
    ("https://nbviewer.jupyter.org/github/owner/repo/tree/dev/", (GH, "git", "dev", None, None, None)),
    ("https://nbviewer.org/github/owner/repo", (GH, "git", None, None, None, None)),
    (f"https://nbviewer.org/gist/user/{GIST}", (f"https://gist.github.com/user/{GIST}.git", "gist", None, None, None, None)),
    (f"https://nbviewer.org/gist/{GIST}", (f"https://gist.github.com/{GIST}.git", "gist", None, None, None, None)),
    # Software Heritage's browser -> its SWHID
    (f"https://archive.softwareheritage.org/swh:1:dir:{SHA};origin=https://github.com/o/r/",
     (f"swh:1:dir:{SHA}", "swh", None, None, None, None)),
    (f"https://archive.softwareheritage.org/browse/revision/{SHA}/",
     (f"swh:1:rev:{SHA}", "swh", None, None, None, None)),
    (f"https://archive.softwareheritage.org/browse/directory/{SHA}/",
     (f"swh:1:dir:{SHA}", "swh", None, None, None, None)),
    # Zenodo's DOI badge -> its DOI; an institution's Figshare portal -> figshare.com
    ("[![DOI](https://zenodo.org/badge/DOI/10.5281/zenodo.3242074.svg)](https://doi.org/10.5281/zenodo.3242074)",
     ("10.5281/zenodo.3242074", "doi", None, None, None, None)),
    ("https://zenodo.org/badge/DOI/10.5281/zenodo.3242074.svg", ("10.5281/zenodo.3242074", "doi", None, None, None, None)),
    ("https://monash.figshare.com/articles/dataset/Some_title/12345678",
     ("https://figshare.com/articles/dataset/Some_title/12345678", "figshare", None, None, None, None)),
    # badges wrapping a launch link
    ("[![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/owner/repo/HEAD?labpath=x.ipynb)",
     (GH, "git", "HEAD", None, "x.ipynb", None)),
    ("[![Launch](https://mybinder.org/badge.svg)](https://mybinder.org/v2/gl/g%2Fp/main)",
     ("https://gitlab.com/g/p", "git", "main", None, None, None)),
    (".. image:: https://mybinder.org/badge_logo.svg\n :target: https://mybinder.org/v2/gh/owner/repo/main?urlpath=lab\n",
     (GH, "git", "main", None, None, "lab")),
    ('<a href="https://mybinder.org/v2/gh/owner/repo/HEAD?urlpath=lab&amp;x=1">'
     '<img src="https://mybinder.org/badge_logo.svg" alt="Binder"></a>',
     (GH, "git", "HEAD", None, None, "lab")),
    ('<a href="https://binder.example.org/v2/zenodo/10.5281/zenodo.3242074/"><img src="b.svg"></a>',
     ("10.5281/zenodo.3242074", "zenodo", None, None, None, None)),
]


@pytest.mark.parametrize("text, expected", PARSED, ids=[t[:70] for t, _ in PARSED])
def test_parse_source(text, expected):
    source = parse_source(text)
    assert (source.repo, source.kind, source.ref, source.subdir, source.open, source.urlpath) == expected
    assert source.given == text.strip()
    assert source.kind in KINDS


def test_source_is_frozen_with_defaults():
    source = Source(repo=GH, kind="git")
    assert (source.ref, source.subdir, source.open, source.given) == (None, None, None, "")
    with pytest.raises(AttributeError):
        source.repo = "x"  # type: ignore[misc]


# input -> words the message must contain
REFUSED = [
    ("", "empty"),
    ("   \n\t ", "empty"),
    ("-rf", "starts with '-'"),
    ("--help", "starts with '-'"),
    ("foo", "not a repository URL"),
    ("owner/repo", "https://github.com/owner/repo"),
    ("ftp://git.example.org/repo.git", "ftp: scheme"),
    ("file:///home/me/repo", "file: scheme"),
    ("/home/me/repo", "local path"),
    ("./repo", "local path"),
    ("~/repo", "local path"),
    ("https://git.example.org/repo\nrm -rf /", "control characters"),
    ("https://git.example.org/a\x00b", "control characters"),
    ("https://git.example.org/a\x1bb", "control characters"),
    ("https://git.example.org/" + "a" * 300, "at most 255"),
    ("https://git.example.org/my repo", "whitespace"),
    ("https://git.example.org", "no repository path"),
    ("https://git.example.org:notaport/r", "not a valid URL"),
    ("https://user:s3cret@git.example.org/r.git", "password or token"),
    ("https://github.com/owner", "names no repository"),
    ("https://ghp_abcdef0123456789@github.com/o/r", "user name or token"),
    ("https://glpat-xyz@gitlab.example.org/g/p.git", "user name or token"),
    ("ssh://git@git.example.org:2222/group/project.git", "SSH URL"),
    ("git@git.example.org:/srv/repo.git", "SSH URL"),
    ("https://nbviewer.org/urls/example.org/a.ipynb", "notebook file, not a repository"),
    ("https://archive.softwareheritage.org/browse/origin/directory/?origin_url=https://github.com/o/r",
     "without a fixed directory"),
    ("https://codeberg.org/owner/repo/issues/1", "not a link to the repository"),

    ("https://github.com/owner/repo/issues/3", "not a link to the repository"),
    ("https://github.com/owner/re po", "whitespace"),
    ("https://github.com/own%24r/repo", "not a valid name"),
    ("https://gitlab.com/group", "names no GitLab project"),
    ("https://gitlab.com/g/p/-/issues/1", "not a link to the repository"),
    ("https://zenodo.org/communities/binder", "not a Zenodo record"),
    ("https://figshare.com/articles/figure/title/123", "not a Figshare article"),
    ("https://www.hydroshare.org/resource/nothex/", "not a HydroShare resource"),
    ("https://mybinder.org/about", "not a Binder launch link"),
    ("https://mybinder.org/repo/owner/repo", "not a Binder launch link"),
    ("https://mybinder.org/v3/gh/owner/repo/HEAD", "not a Binder launch link"),
    ("10.5281", "not a DOI"),
    ("doi:nonsense", "not a repository URL"),
    ("swh:1:cnt:" + SHA, "swh:1:cnt object"),
    ("swh:1:snp:" + SHA, "swh:1:snp object"),
    ("swh:1:rel:" + SHA, "swh:1:rel object"),
    ("swh:2:dir:" + SHA, "swh:2:dir object"),
    ("swh:1:dir:1234", "not a valid Software Heritage id"),
    ("https://github.com/owner/repo/tree/bad..ref", "'..'"),
    ("https://github.com/owner/repo/tree/main/..%2Fetc", "'..' component"),
    (f"{MB}/gh/owner", "owner/repo/ref"),
    (f"{MB}/gh/owner/repo/-rf", "starts with '-'"),
    (f"{MB}/gh/owner/repo/HEAD?urlpath=lab%23x", "'#'"),
    (f"{MB}/gh/owner/repo/HEAD?labpath=../../etc/passwd", "'..' component"),
    (f"{MB}/gh/owner/repo/HEAD?urlpath=http://evil.example", "is a URL"),
    (f"{MB}/gl/project/main", "group%2Fproject"),
    (f"{MB}/git/file%3A%2F%2F%2Ftmp%2Fr/main", "file: scheme"),
    (f"{MB}/git/10.5281%2Fzenodo.1/main", "does not hold a git repository URL"),
    (f"{MB}/zenodo/not-a-doi/", "not a DOI"),
    (f"{MB}/hydroshare/abc/", "32-hex"),
    (f"{MB}/ckan/https%3A%2F%2Fdemo.ckan.org%2Fgroup%2Fx/", "CKAN dataset URL"),
    ("[![Binder](https://mybinder.org/badge_logo.svg)](https://example.org/not-binder)", "no Binder launch link"),
    ('<a href="https://example.org/x"><img src="b.svg"></a>', "no Binder launch link"),
    (".. image:: https://mybinder.org/badge_logo.svg\n :target: https://mybinder.org/", "no Binder launch link"),
    ("[link](https://github.com/owner/repo)", "no Binder launch link"),
]


@pytest.mark.parametrize("text, words", REFUSED, ids=[repr(t[:60]) for t, _ in REFUSED])
def test_refusals(text, words):
    with pytest.raises(BadRequest) as info:
        parse_source(text)
    err = info.value
    assert words in err.message
    assert err.hint
    assert err.exit_code == 2


@pytest.mark.parametrize("text", ["", "-rf", "foo", "ftp://x/y", "file:///x", "/tmp/r", "a\x00b", "x" * 300])
def test_unrecognised_input_is_named_and_hint_lists_accepted_forms(text):
    with pytest.raises(BadRequest) as info:
        parse_source(text)
    assert info.value.hint == ACCEPTED_FORMS
    assert repr(text.strip()[:60])[:-1] in info.value.message


def test_long_input_is_truncated_in_the_message():
    with pytest.raises(BadRequest) as info:
        parse_source("https://git.example.org/" + "a" * 300)
    assert len(info.value.message) < 200
    assert "..." in info.value.message


@pytest.mark.parametrize("text", ["https://me:ghp_SECRET@github.com/o/r", "https://ghp_SECRET@github.com/o/r",
                                  "https://oauth2:glpat-SECRET@gitlab.com/g/p.git"])
def test_credentials_are_not_echoed_and_private_repositories_are_explained(text):
    with pytest.raises(BadRequest) as info:
        parse_source(text)
    assert "SECRET" not in info.value.message and "SECRET" not in info.value.hint
    assert "***" in info.value.message
    assert "metadata" in info.value.message
    assert "--git-token-file FILE or --git-token-env VAR" in info.value.hint


def test_ssh_urls_of_other_hosts_say_why_and_what_to_do():
    with pytest.raises(BadRequest) as info:
        parse_source("git@git.example.org:g/p.git")
    assert "no SSH key" in info.value.message
    assert "https URL" in info.value.hint and "private repositories" in info.value.hint


@pytest.mark.parametrize("text, ref_path", [
    ("https://github.com/owner/repo/tree/feature/x/docs", ("feature", "x", "docs")),
    ("https://github.com/owner/repo/blob/main/a.ipynb", ("main", "a.ipynb")),
    ("https://github.com/owner/repo/tree/main", ()),
    ("https://codeberg.org/o/r/src/branch/release/2", ("release", "2")),
])
def test_a_forge_url_keeps_its_segments_for_a_ref_holding_slashes(text, ref_path):
    assert parse_source(text).ref_path == ref_path


def test_accepted_forms_lists_every_kind_of_input():
    for example in ("https://github.com/owner/repo", "git@github.com:", "gitlab.com", "gist.github.com",
                    "10.5281/zenodo", "doi:", "https://doi.org/", "zenodo.org/records", "figshare.com",
                    "dataverse", "hydroshare.org/resource", "ckan", "swh:1:dir:", "mybinder.org/v2/gh",
                    "badge_logo.svg"):
        assert example in ACCEPTED_FORMS
    for source in ("https://github.com/owner/repo", "10.5281/zenodo.3242074",
                   "https://zenodo.org/records/3242074", "https://demo.ckan.org/dataset/sample-dataset-1",
                   "https://mybinder.org/v2/gh/owner/repo/HEAD?labpath=index.ipynb",
                   "https://figshare.com/articles/dataset/title/9782777",
                   "https://dataverse.harvard.edu/dataset.xhtml?persistentId=doi:10.7910/DVN/TJCLKP",
                   "https://www.hydroshare.org/resource/8f7c2f0341ef4180b0dbe97f59130756"):
        assert source in ACCEPTED_FORMS
        parse_source(source)


# ---------------------------------------------------------------- resolve_source

def test_options_override_what_the_text_says():
    source = resolve_source("https://github.com/owner/repo/blob/main/env/a.ipynb",
                            ref="v2", subdir="./binder/", urlpath="rstudio/")
    assert (source.repo, source.ref, source.subdir, source.open, source.urlpath) == \
        (GH, "v2", "binder", None, "rstudio/")
    source = resolve_source(f"{MB}/gh/owner/repo/HEAD?urlpath=lab", open_path="b.ipynb")
    assert (source.open, source.urlpath) == ("b.ipynb", None)


def test_options_fill_in_what_the_text_leaves_out():
    source = resolve_source("https://git.example.org/p.git", ref=SHA, subdir="env", open_path="index.ipynb")
    assert (source.ref, source.subdir, source.open, source.urlpath) == (SHA, "env", "index.ipynb", None)


def test_open_and_urlpath_together_are_refused():
    with pytest.raises(BadRequest) as info:
        resolve_source(GH, open_path="a.ipynb", urlpath="lab")
    assert "both say what to open" in info.value.message
    assert "not both" in info.value.hint


def test_parsed_fields_survive_when_no_option_is_given():
    source = resolve_source(f"{MB}/gh/owner/repo/dev?labpath=a.ipynb")
    assert (source.ref, source.open) == ("dev", "a.ipynb")


def test_subdir_dot_clears_a_parsed_subdir():
    assert resolve_source("https://github.com/owner/repo/tree/main/env", subdir=".").subdir is None


def test_options_are_validated():
    with pytest.raises(BadRequest, match="ref '-x'"):
        resolve_source(GH, ref="-x")
    with pytest.raises(BadRequest, match="absolute"):
        resolve_source(GH, subdir="/etc")
    with pytest.raises(BadRequest, match="'..' component"):
        resolve_source(GH, open_path="../x")


@pytest.mark.parametrize("text", [
    "10.5281/zenodo.3242074", "https://zenodo.org/records/1", f"{MB}/figshare/10.6084/m9.figshare.1.v1/",
    "https://dataverse.harvard.edu/api/access/datafile/1", f"https://www.hydroshare.org/resource/{HS}",
    f"swh:1:rev:{SHA}",
])
def test_ref_is_refused_for_sources_fetched_without_git(text):
    with pytest.raises(BadRequest) as info:
        resolve_source(text, ref="main")
    assert info.value.message.startswith("--ref applies to git sources only;")
    assert "drop --ref" in info.value.hint
    # subdir and open still apply: repo2docker uses them for any content
    source = resolve_source(text, subdir="env", urlpath="lab")
    assert (source.subdir, source.urlpath) == ("env", "lab")


@pytest.mark.parametrize("text", [GH, f"https://gist.github.com/user/{GIST}", "https://demo.ckan.org/dataset/x"])
def test_ref_is_accepted_for_git_gist_and_ckan(text):
    assert resolve_source(text, ref="main").ref == "main"


# ---------------------------------------------------------------- field validation

@pytest.mark.parametrize("ref", [
    "main", "master", "HEAD", "v1.2.3", "feature/x", "release/2024.1", SHA, "a" * 255, "user@host", "fix-#12",
])
def test_valid_refs(ref):
    assert validate_ref(ref) == ref


@pytest.mark.parametrize("ref, words", [
    ("", "1 to 255"),
    ("a" * 256, "1 to 255"),
    ("-main", "starts with '-'"),
    ("has space", "whitespace"),
    ("tab\there", "whitespace"),
    ("nul\x00", "whitespace or control"),
    ("a..b", "'..'"),
    ("a~1", "~"),
    ("a^", "^"),
    ("a:b", ":"),
    ("a?", "?"),
    ("a*", "*"),
    ("a[1]", "["),
    ("a\\b", "\\"),
    ("a@{1}", "'@{'"),
    ("a//b", "'//'"),
    ("@", "'@{'"),
    ("/main", "starts with '/'"),
    ("main/", "ends with '/'"),
    ("main.", "'.'"),
    ("main.lock", ".lock"),
    ("a.lock/b", ".lock"),
    ("feature/.hidden", "starting with '.'"),
])
def test_invalid_refs(ref, words):
    with pytest.raises(BadRequest) as info:
        validate_ref(ref)
    assert words in info.value.message
    assert "branch, tag or commit" in info.value.hint


@pytest.mark.parametrize("subdir, expected", [
    ("binder", "binder"),
    ("a/b", "a/b"),
    ("./a/b/", "a/b"),
    ("a//b", "a/b"),
    ("a/./b", "a/b"),
    ("my env", "my env"),
    (".", None),
    ("./", None),
    (".binder", ".binder"),
])
def test_valid_subdirs(subdir, expected):
    assert validate_subdir(subdir) == expected


@pytest.mark.parametrize("subdir, words", [
    ("", "1 to 255"),
    ("a" * 256, "1 to 255"),
    ("/etc", "absolute"),
    ("..", "'..' component"),
    ("a/../../b", "'..' component"),
    ("a/..", "'..' component"),
    ("-rf", "starts with '-'"),
    ("./-rf", "starts with '-'"),
    ("a\nb", "control"),
    ("a\x00", "control"),
])
def test_invalid_subdirs(subdir, words):
    with pytest.raises(BadRequest) as info:
        validate_subdir(subdir)
    assert words in info.value.message
    assert "relative directory" in info.value.hint


@pytest.mark.parametrize("path, expected", [
    ("index.ipynb", "index.ipynb"),
    ("/index.ipynb", "index.ipynb"),
    ("./notebooks/intro.ipynb", "notebooks/intro.ipynb"),
    # a folder named like a Jupyter route is still a folder of the repository
    ("notebooks/intro.ipynb", "notebooks/intro.ipynb"),
    ("doc/guide.ipynb", "doc/guide.ipynb"),
    ("files/data.csv", "files/data.csv"),
    ("view/a.html", "view/a.html"),
    ("tree/x.ipynb", "tree/x.ipynb"),
    ("lab/x.ipynb", "lab/x.ipynb"),
    ("edit/a.py", "edit/a.py"),
    ("proxy/a.py", "proxy/a.py"),
    ("voila/app.ipynb", "voila/app.ipynb"),
    ("docs/my file.ipynb", "docs/my file.ipynb"),
    ("docs/my%20file.ipynb", "docs/my file.ipynb"),
    ("100%.ipynb", "100%.ipynb"),
    ("what?.ipynb", "what?.ipynb"),
    ("a#1.ipynb", "a#1.ipynb"),
    ("data/", "data"),
])
def test_open_files(path, expected):
    assert normalize_open_file(path) == expected


@pytest.mark.parametrize("path, words", [
    ("", "empty"),
    ("/", "empty"),
    ("  ", "empty"),
    ("../secret", "'..' component"),
    ("a/%2E%2E/b", "'..' component"),
    ("a\nb", "control"),
    ("a%0Ab", "control"),
    ("x" * 250, "longer than 246"),
    ("https://evil.example/", "is a URL"),
])
def test_invalid_open_files(path, words):
    with pytest.raises(BadRequest) as info:
        normalize_open_file(path)
    assert info.value.message.startswith("--open ")
    assert words in info.value.message
    assert "--urlpath" in info.value.hint


@pytest.mark.parametrize("path, expected", [
    ("lab", "lab"),
    ("/lab", "lab"),
    ("lab?reset", "lab?reset"),
    ("tree/data", "tree/data"),
    ("rstudio/", "rstudio/"),
    ("/shiny/app/", "shiny/app/"),
    ("proxy/8050/", "proxy/8050/"),
    ("voila/render/app.ipynb", "voila/render/app.ipynb"),
    ("voila/render/app.ipynb?voila-theme=dark", "voila/render/app.ipynb?voila-theme=dark"),
    ("lab/tree/my%20file.ipynb", "lab/tree/my file.ipynb"),
    # an nbgitpuller link: the query keeps its escapes
    ("git-pull?repo=https%3A%2F%2Fgithub.com%2Fo%2Fr&urlpath=lab%2Ftree%2Fr%2F&branch=main",
     "git-pull?repo=https%3A%2F%2Fgithub.com%2Fo%2Fr&urlpath=lab%2Ftree%2Fr%2F&branch=main"),
    ("git-pull?repo=https://github.com/o/r&urlpath=lab/tree/r/",
     "git-pull?repo=https://github.com/o/r&urlpath=lab/tree/r/"),
])
def test_urlpaths(path, expected):
    assert normalize_urlpath(path) == expected


@pytest.mark.parametrize("path, words", [
    ("", "names no path"),
    ("/", "names no path"),
    ("?x=1", "names no path"),
    ("../secret", "'..' component"),
    ("lab/tree/../../etc", "'..' component"),
    ("lab#x", "'#'"),
    ("a%3Fb", "escaped '?'"),
    ("lab?x=a b", "whitespace in its query"),
    ("a\nb", "control"),
    ("x" * 256, "longer than 255"),
    ("https://evil.example/", "is a URL"),
])
def test_invalid_urlpaths(path, words):
    with pytest.raises(BadRequest) as info:
        normalize_urlpath(path)
    assert info.value.message.startswith("--urlpath ")
    assert words in info.value.message
    assert "--open" in info.value.hint
