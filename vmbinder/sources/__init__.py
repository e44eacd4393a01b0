"""What the user typed -> a Source: the exact string repo2docker is given,
plus the ref, subdirectory and what to open (a file of the repository or a URL
path on the server) that the text implied.

Detection is a table of detect-then-parse functions tried in order, first
match wins, refusal last (the shape of repo2docker's content providers). A
detector returns None when the text is not its kind and raises BadRequest
when it is its kind but unusable. Pure: no I/O.

The parts: common (the Source record, the accepted forms and the helpers the
others share), fields (ref, subdir, file and URL path checks), links (mybinder.org
and BinderHub launch links), detect (the URL and text detectors, in order) and
parse (the entry points); credential reads a private repository's token.
"""

from .common import ACCEPTED_FORMS, KINDS, MAX_LEN, NO_REF_KINDS, Source, has_control
from .credential import GitCredential, check_source, read_credential
from .fields import normalize_open_file, normalize_urlpath, validate_ref, validate_subdir
from .parse import parse_source, resolve_source

__all__ = [
    "ACCEPTED_FORMS", "KINDS", "MAX_LEN", "NO_REF_KINDS", "GitCredential", "Source", "check_source",
    "has_control", "read_credential",
    "normalize_open_file", "normalize_urlpath", "parse_source", "resolve_source", "validate_ref",
    "validate_subdir",
]
