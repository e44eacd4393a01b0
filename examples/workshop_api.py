"""Run a workshop from a script: the same operations as `vmbinder workshop up`,
`roster` and `down`, as a library.

    python examples/workshop_api.py up examples/workshop.yaml roster.html
    python examples/workshop_api.py down examples/workshop.yaml

The cloud is chosen as for the openstack CLI (OS_CLOUD, clouds.yaml). Errors are
vmbinder.errors.VmbinderError with .message, .hint and .exit_code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from vmbinder import errors
from vmbinder.providers.openstack import OpenStackProvider
from vmbinder.workshops import roster, seats
from vmbinder.workshops import up as workshop_up
from vmbinder.workshops.file import load


class Printer:
    """A batch reporter: called from several threads, one line per change."""

    def seat(self, name: str, state: str, detail: str = "") -> None:
        print(f"{name}: {state} {detail}", file=sys.stderr)


def up(file: str, html: str) -> int:
    ws = load(file)
    provider = OpenStackProvider()  # OS_CLOUD
    key = Path.home() / ".ssh" / "id_ed25519.pub"
    result = workshop_up.run(provider, ws, reporter=Printer(), parallel=8,
                             public_key=key.read_text() if key.exists() else None)
    if result.partly_failed:
        print(f"some seats failed: {result.failure().message}", file=sys.stderr)
    for seat in result.seats:
        print(seat.seat.name, seat.action, seat.server.address if seat.server else "-")
    entries, left_out = seats.roster_entries(provider, ws)
    # Mode 0600 from the start: the page holds every seat's token.
    with os.fdopen(os.open(html, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        fh.write(roster.to_html(ws.name, entries, source=ws.source.repo))
    print(f"{len(entries)} seats in {html}; left out: {[s.seat.name for s in left_out]}")
    return 10 if result.partly_failed else 0


def down(file: str) -> int:
    removed = seats.down(OpenStackProvider(), load(file), snapshots=True)
    for item in removed:
        print("removed", item.kind, item.name)
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("up", "down"):
        sys.exit(__doc__)
    try:
        sys.exit(up(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "roster.html")
                 if sys.argv[1] == "up" else down(sys.argv[2]))
    except errors.VmbinderError as exc:
        print(f"error: {exc.message}\nhint: {exc.hint}", file=sys.stderr)
        sys.exit(exc.exit_code)
