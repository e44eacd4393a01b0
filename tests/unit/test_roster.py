"""Roster rendering: CSV, JSON and the printable HTML page."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from vmbinder.workshops import roster
from vmbinder.workshops.roster import Entry

URL = "https://203-0-113-{n}.sslip.io/lab/tree/index.ipynb?token={t}"


def entries():
    return [
        Entry("ws-01", 1, "Ada Lovelace", "ada@example.org", URL.format(n=10, t="a" * 64),
              URL.format(n=10, t="a" * 64).replace("/tree/index.ipynb", ""), "2026-11-24T08:00Z"),
        Entry("ws-02", 2, '<script>alert("x")</script> & Ø', None, URL.format(n=11, t="b" * 64)),
        Entry("ws-03", 3, "=HYPERLINK(\"http://evil\")", "@cmd", URL.format(n=12, t="c" * 64)),
        Entry("ws-04", 4, None, None, URL.format(n=13, t="d" * 64)),
    ]


def test_csv_has_a_header_and_one_exact_row_per_seat():
    rows = list(csv.reader(io.StringIO(roster.to_csv("ws", entries()))))
    assert rows[0] == list(roster.COLUMNS)
    assert rows[1] == ["ws-01", "1", "Ada Lovelace", "ada@example.org", URL.format(n=10, t="a" * 64),
                       "https://203-0-113-10.sslip.io/lab?token=" + "a" * 64, "2026-11-24T08:00Z"]
    assert rows[2][2] == '<script>alert("x")</script> & Ø'
    assert rows[4] == ["ws-04", "4", "", "", URL.format(n=13, t="d" * 64), "", ""]
    assert len(rows) == 5


def test_csv_neutralises_spreadsheet_formulas_in_names_and_emails():
    rows = list(csv.reader(io.StringIO(roster.to_csv("ws", entries()))))
    assert rows[3][2] == "'=HYPERLINK(\"http://evil\")" and rows[3][3] == "'@cmd"


def test_json_has_the_workshop_and_every_field():
    doc = json.loads(roster.to_json("ws", entries()))
    assert doc["workshop"] == "ws" and len(doc["seats"]) == 4
    assert doc["seats"][0] == {"seat": "ws-01", "number": 1, "participant": "Ada Lovelace",
                               "email": "ada@example.org", "url": URL.format(n=10, t="a" * 64),
                               "lab_url": "https://203-0-113-10.sslip.io/lab?token=" + "a" * 64,
                               "expires": "2026-11-24T08:00Z"}


def test_html_has_one_card_with_its_own_qr_code_per_seat_and_escapes_names():
    page = roster.to_html("ws <1>", entries(), source="https://github.com/org/course")
    assert page.count('<div class="card">') == 4
    assert page.count("<svg") == 4
    for e in entries():
        assert roster.qr_svg(e.url) in page
        assert page.count(e.url.replace("&", "&amp;")) == 2  # the link and its text
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Ø" in page
    assert "Seat 4" in page and "<title>Workshop ws &lt;1&gt;</title>" in page
    # Nothing loaded from elsewhere: the only URLs are the cards' own links.
    assert not re.search(r'\ssrc=', page)
    hrefs = re.findall(r'href="([^"]*)"', page)
    assert sorted(hrefs) == sorted(e.url for e in entries())
    # The token is in the cards only, never in the title or heading.
    head = page.split('<div class="cards">')[0]
    assert "token" not in head


def test_an_empty_roster_says_so():
    page = roster.to_html("ws", [])
    assert "No seat answered" in page and "<svg" not in page
    assert roster.to_csv("ws", []) == ",".join(roster.COLUMNS) + "\n"


def test_render_picks_the_format_and_refuses_others():
    assert roster.render("json", "ws", []) == roster.to_json("ws", [])
    with pytest.raises(ValueError):
        roster.render("pdf", "ws", [])
