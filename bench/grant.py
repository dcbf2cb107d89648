#!/usr/bin/env python3
"""Obtain a grant from a running weightgate portal over HTTP, as a researcher
and a reviewer would in a browser, and print the grant's manifest JSON.

Steps: GET /models/SLUG (CSRF cookie + token), POST the application form, read
the confirmation link from the .eml in the outbox, GET then POST it, sign in
at /admin/login, find the application on /admin, approve it, read the access
link from the approval e-mail, GET /access/TOKEN/manifest.json.

Standard library only (urllib + cookie jar), so it needs no virtualenv.
"""

import argparse
import email
import email.policy
import html
import http.cookiejar
import pathlib
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

TOKEN_RE = re.compile(r'name="authenticity_token"\s+value="([^"]*)"')


class Browser:
    def __init__(self, base):
        self.base = base.rstrip("/")
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def _open(self, path, data=None):
        url = path if path.startswith("http") else self.base + path
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(url, data=body, headers={"User-Agent": "weightgate-bench/1"})
        try:
            with self.opener.open(req, timeout=30) as resp:
                return resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace")
            sys.exit(f"grant.py: {'POST' if data is not None else 'GET'} {url} -> {e.code}\n{text[:2000]}")

    def get(self, path):
        return self._open(path)

    def post(self, path, data):
        return self._open(path, data)


def csrf(page):
    m = TOKEN_RE.search(page)
    if not m:
        sys.exit("grant.py: no authenticity_token on the page")
    return html.unescape(m.group(1))


def mail_links(outbox, pattern):
    """Every link matching `pattern` in the .eml files of the outbox."""
    found = []
    for path in sorted(pathlib.Path(outbox).glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        parts = [msg] if not msg.is_multipart() else list(msg.walk())
        for part in parts:
            if part.get_content_maintype() != "text":
                continue
            found += re.findall(pattern, part.get_content())
    return found


def wait_for_link(outbox, pattern, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        links = mail_links(outbox, pattern)
        if links:
            return links[-1]
        time.sleep(0.2)
    sys.exit(f"grant.py: no e-mail with a link matching {pattern} in {outbox} after {timeout}s")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base", required=True, help="portal URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--slug", required=True)
    p.add_argument("--outbox", required=True)
    p.add_argument("--admin-email", required=True)
    p.add_argument("--admin-password", required=True)
    p.add_argument("--researcher", default="researcher@bench.invalid")
    a = p.parse_args()
    base = re.escape(a.base.rstrip("/"))

    researcher = Browser(a.base)
    page = researcher.get(f"/models/{a.slug}")
    researcher.post(
        f"/models/{a.slug}/apply",
        {
            "authenticity_token": csrf(page),
            "name": "Bench Researcher",
            "email": a.researcher,
            "affiliation": "Benchmark Lab",
            "intended_use": "Measuring download throughput of the portal.",
            "accept_terms": "on",
        },
    )
    confirm = wait_for_link(a.outbox, base + r"/confirm/[A-Za-z0-9_\-]+")
    page = researcher.get(confirm)
    researcher.post(confirm, {"authenticity_token": csrf(page)})

    reviewer = Browser(a.base)
    page = reviewer.get("/admin/login")
    reviewer.post(
        "/admin/login",
        {"authenticity_token": csrf(page), "email": a.admin_email, "password": a.admin_password},
    )
    queue = reviewer.get("/admin")
    ids = re.findall(r'href="/admin/applications/([A-Za-z0-9_\-]+)"', queue)
    if not ids:
        sys.exit("grant.py: no application waiting on /admin (did the sign-in work?)")
    app_id = ids[0]
    page = reviewer.get(f"/admin/applications/{app_id}")
    reviewer.post(f"/admin/applications/{app_id}/approve", {"authenticity_token": csrf(page), "days": ""})

    access = wait_for_link(a.outbox, base + r"/access/[A-Za-z0-9_\-]+")
    sys.stdout.write(researcher.get(access.rstrip("/") + "/manifest.json"))


if __name__ == "__main__":
    main()
