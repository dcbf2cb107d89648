#!/usr/bin/env python3
"""Append a large, realistic audit log to a migrated weightgate SQLite database,
with a correct hash chain, fast (about 1,000,000 events in well under a minute).

The chain hash of an event is SHA-256 over b"weightgate-audit-v1\\n" followed by
the compact serde_json encoding of this struct, fields in this order (see
`Canonical` and `event_hash_at` in src/audit.rs):

    seq, at, action, outcome, reason, actor, subject, model_id, application_id,
    grant_id, researcher_id, file_id, range_start, range_end, bytes, client_ip,
    user_agent, request_id, prev_hash

Option fields that are None encode as JSON null; strings are encoded as
serde_json does (no spaces, non-ASCII left as UTF-8, control characters
escaped), which json.dumps(..., ensure_ascii=False) matches for the values
written here.

The log continues whatever chain the database already holds, and first checks
that this encoding reproduces the hashes weightgate itself stored for those
events: a mismatch stops it before it writes anything.

The mix follows what a busy portal records: researchers apply, confirm, are
approved (review.approved + grant.created), open their access page
(links.issued), and fetch files (file.fetch, then file.delivered, ok or
aborted, sometimes ranged to resume); a few links are refused (expired, bad
signature, revoked grant); reviewers sign in; some grants are revoked. Grant
activity is heavy-tailed. Timestamps rise over the last 90 days up to now.
"""

import argparse
import bisect
import hashlib
import json
import random
import re
import sqlite3
import sys
import time
import uuid

PREFIX = b"weightgate-audit-v1\n"
GENESIS = "0" * 64
COLUMNS = (
    "seq, at, action, outcome, reason, actor, subject, model_id, application_id, grant_id, "
    "researcher_id, file_id, range_start, range_end, bytes, client_ip, user_agent, request_id, prev_hash, hash"
)
# The encoded field names, in the struct's order.
FIELDS = (
    "seq", "at", "action", "outcome", "reason", "actor", "subject", "model_id", "application_id",
    "grant_id", "researcher_id", "file_id", "range_start", "range_end", "bytes", "client_ip",
    "user_agent", "request_id", "prev_hash",
)
TEMPLATE = "{" + ",".join('"%s":%%s' % f for f in FIELDS) + "}"

_cache = {}


def js(v):
    """A string (or None) as serde_json writes it; repeated values are cached."""
    if v is None:
        return "null"
    r = _cache.get(v)
    if r is None:
        r = json.dumps(v, ensure_ascii=False)
        if len(_cache) < 200_000:
            _cache[v] = r
    return r


def ji(v):
    return "null" if v is None else str(int(v))


def canonical(row):
    """The bytes hashed for a row (a tuple in COLUMNS order, hash excluded)."""
    (seq, at, action, outcome, reason, actor, subject, model_id, application_id, grant_id,
     researcher_id, file_id, range_start, range_end, nbytes, client_ip, user_agent, request_id,
     prev_hash) = row[:19]
    text = TEMPLATE % (
        ji(seq), ji(at), js(action), js(outcome), js(reason), js(actor), js(subject), js(model_id),
        js(application_id), js(grant_id), js(researcher_id), js(file_id), ji(range_start),
        ji(range_end), ji(nbytes), js(client_ip), js(user_agent), js(request_id), js(prev_hash),
    )
    return PREFIX + text.encode("utf-8")


# How weightgate stores an event (see the migration 20261204090000_audit_terms):
# each repeated text as the number of its term in audit_terms, the hashes as
# bytes, a lower-case hyphenated UUID request id as its 16 bytes.
STORED_COLUMNS = (
    "seq, at, action_term, outcome_term, reason_term, actor_term, subject_term, model_term, application_term, "
    "grant_term, researcher_term, file_term, range_start, range_end, bytes, client_ip_term, user_agent_term, "
    "request_uuid, request_text, prev_hash, hash, occurrences"
)
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class Terms:
    """The numbers of audit_terms, with the new terms written in batches."""

    def __init__(self, db):
        self.db = db
        self.ids = dict(db.execute("SELECT term, id FROM audit_terms"))
        self.next = (db.execute("SELECT max(id) FROM audit_terms").fetchone()[0] or 0) + 1
        self.new = []

    def id(self, text):
        if text is None:
            return None
        i = self.ids.get(text)
        if i is None:
            i = self.ids[text] = self.next
            self.next += 1
            self.new.append((i, text))
        return i

    def flush(self):
        self.db.executemany("INSERT INTO audit_terms (id, term) VALUES (?, ?)", self.new)
        self.new.clear()


def stored(row, terms):
    """A row in COLUMNS order (hash last) as weightgate stores it."""
    (seq, at, action, outcome, reason, actor, subject, model_id, application_id, grant_id,
     researcher_id, file_id, range_start, range_end, nbytes, client_ip, user_agent, request_id,
     prev_hash, h) = row
    t = terms.id
    uuid_bytes = bytes.fromhex(request_id.replace("-", "")) if request_id and UUID.match(request_id) else None
    return (seq, at, t(action), t(outcome), t(reason), t(actor), t(subject), t(model_id), t(application_id),
            t(grant_id), t(researcher_id), t(file_id), range_start, range_end, nbytes, t(client_ip), t(user_agent),
            uuid_bytes, None if uuid_bytes or request_id is None else request_id,
            bytes.fromhex(prev_hash), bytes.fromhex(h), None)


def new_id(rng):
    return "%020x" % rng.getrandbits(80)


def check_existing(db):
    """Recomputes the hashes of the events already stored; returns the head."""
    seq, prev = 0, GENESIS
    n = 0
    for row in db.execute(f"SELECT {COLUMNS} FROM audit_log ORDER BY seq"):
        if row[0] != seq + 1 or row[18] != prev:
            sys.exit(f"fill_audit.py: the existing chain is broken at event {row[0]}")
        h = hashlib.sha256(canonical(row)).hexdigest()
        if h != row[19]:
            sys.exit(
                f"fill_audit.py: this encoding does not reproduce weightgate's hash of event {row[0]}:\n"
                f"  {canonical(row)!r}\n  computed {h}\n  stored   {row[19]}"
            )
        seq, prev = row[0], row[19]
        n += 1
    return seq, prev, n


class World:
    """Models, files, researchers, grants and reviewers the events talk about."""

    def __init__(self, rng, events, existing_models):
        self.rng = rng
        self.models = []
        slugs = ["llama-7b", "llama-70b", "mistral-med", "vision-xl", "speech-2", "tiny-chat"]
        for i, slug in enumerate(slugs):
            mid = existing_models[i][0] if i < len(existing_models) else new_id(rng)
            slug = existing_models[i][1] if i < len(existing_models) else slug
            nfiles = rng.randint(2, 8)
            release = "v%d" % rng.randint(1, 3)
            files = []
            for k in range(nfiles):
                size = rng.randint(1 << 30, 10 << 30)
                name = "model-%05d-of-%05d.safetensors" % (k + 1, nfiles)
                files.append((new_id(rng), f"{slug}/{release}/{name}", name, size))
            self.models.append((mid, slug, files))
        self.reviewers = ["reviewer%d@lab.example.org" % i for i in range(1, 6)]
        self.reviewer_ips = ["192.0.2.%d" % rng.randint(1, 254) for _ in self.reviewers]
        agents = [
            "curl/8.5.0", "curl/7.88.1", "weightgate/0.1.0", "python-requests/2.31.0", "Wget/1.21.3",
            "aria2/1.37.0",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
        ]
        self.browser = agents[6:]
        # About one grant per 500 events: 2,000 for a million.
        ngrants = max(20, events // 500)
        self.grants = []
        for g in range(ngrants):
            rid = new_id(rng)
            email = "researcher%d@uni%d.example.edu" % (g, rng.randint(1, 300))
            model = rng.choice(self.models)
            ips = []
            for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 5])):
                if rng.random() < 0.15:
                    ips.append("2001:db8:%x:%x::%x" % (rng.getrandbits(16), rng.getrandbits(16), rng.getrandbits(16)))
                else:
                    ips.append("%s.%d" % (rng.choice(["198.51.100", "203.0.113", "100.64.%d" % rng.randint(0, 255)]),
                                          rng.randint(1, 254)))
            self.grants.append({
                "id": new_id(rng), "app": new_id(rng), "rid": rid, "email": email, "model": model,
                "ips": ips, "agent": rng.choice(agents[:6]), "weight": 1.0 / (g + 1) ** 0.9,
                "revoked": False,
            })
        rng.shuffle(self.grants)
        # Grants start over the first 85% of the log; activity only after a grant starts.
        starts = sorted(rng.randrange(0, int(events * 0.85) + 1) for _ in self.grants)
        starts[0] = 0
        for g, s in zip(self.grants, starts):
            g["start"] = s
        self.cum = []
        total = 0.0
        for g in self.grants:
            total += g["weight"]
            self.cum.append(total)
        # A few grants are revoked part way.
        self.revocations = sorted(
            (rng.randrange(g["start"], events + 1), i)
            for i, g in enumerate(self.grants) if rng.random() < 0.02
        )

    def pick_grant(self, active):
        """A started grant, weighted by activity."""
        x = self.rng.random() * self.cum[active - 1]
        return self.grants[bisect.bisect_left(self.cum, x, 0, active - 1)]


def store_world(db, world, now_ms):
    """Writes the models, their published releases and files, and the researchers
    the events name, so that the reports find what the events talk about."""
    published = now_ms - 91 * 86_400_000
    for mid, slug, files in world.models:
        db.execute(
            "INSERT OR IGNORE INTO models (id, slug, title, terms, terms_version, created_at) VALUES (?, ?, ?, ?, 1, ?)",
            (mid, slug, slug, "Be nice.", published),
        )
        rid = "rel-" + mid
        name = files[0][1].split("/")[1]
        db.execute(
            "INSERT INTO releases (id, model_id, name, created_at, published_at) VALUES (?, ?, ?, ?, ?)",
            (rid, mid, name, published, published),
        )
        for fid, path, fname, size in files:
            db.execute(
                "INSERT INTO files (id, release_id, name, object_key, size, sha256, chunk_size, chunks)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, '[]')",
                (fid, rid, fname, path, size, "0" * 64, 1 << 26),
            )
    for g in world.grants:
        db.execute("INSERT INTO researchers (id, email, created_at) VALUES (?, ?, ?)", (g["rid"], g["email"], published))


def generate(world, rng, n_events, first_seq, prev, now_ms, canon_out, emit_cb):
    """Calls emit_cb(row, canonical_length) for each new event, in order; returns the new head."""
    span = 90 * 86_400_000
    t0 = now_ms - span
    pending = []  # events waiting to be emitted (multi-event scenarios)
    active = 0
    rev_i = 0
    i = 0
    seq = first_seq
    ngrants = len(world.grants)

    def ev(action, outcome="ok", reason=None, actor=None, subject=None, model_id=None, application_id=None,
           grant_id=None, researcher_id=None, file_id=None, rs=None, re_=None, nbytes=None, ip=None, ua=None):
        request_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        return [action, outcome, reason, actor, subject, model_id, application_id, grant_id, researcher_id,
                file_id, rs, re_, nbytes, ip, ua, request_id]

    while i < n_events:
        if not pending:
            if active < ngrants and world.grants[active]["start"] <= i:
                g = world.grants[active]
                active += 1
                ip = g["ips"][0]
                ua = rng.choice(world.browser)
                r = rng.randrange(len(world.reviewers))
                rev, rip = world.reviewers[r], world.reviewer_ips[r]
                mid = g["model"][0]
                pending += [
                    ev("application.submitted", subject=g["email"], model_id=mid, application_id=g["app"],
                       researcher_id=g["rid"], ip=ip, ua=ua),
                    ev("application.confirmed", subject=g["email"], model_id=mid, application_id=g["app"],
                       researcher_id=g["rid"], ip=ip, ua=ua),
                    ev("review.approved", actor=rev, subject=g["email"], model_id=mid, application_id=g["app"],
                       researcher_id=g["rid"], ip=rip, ua=world.browser[0]),
                    ev("grant.created", actor=rev, subject=g["email"], model_id=mid, application_id=g["app"],
                       grant_id=g["id"], researcher_id=g["rid"], ip=rip, ua=world.browser[0]),
                    ev("links.issued", subject=g["email"] + " via page", model_id=mid, grant_id=g["id"],
                       researcher_id=g["rid"], ip=ip, ua=ua),
                ]
            elif rev_i < len(world.revocations) and world.revocations[rev_i][0] <= i:
                g = world.grants[world.revocations[rev_i][1]]
                rev_i += 1
                if not g["revoked"] and g["start"] <= i:
                    g["revoked"] = True
                    r = rng.randrange(len(world.reviewers))
                    pending.append(ev("grant.revoked", reason="Terms broken: redistribution", actor=world.reviewers[r],
                                      subject=g["email"], model_id=g["model"][0], grant_id=g["id"],
                                      researcher_id=g["rid"], ip=world.reviewer_ips[r], ua=world.browser[0]))
                continue
            else:
                x = rng.random()
                if x < 0.90:
                    g = world.pick_grant(active)
                    mid, slug, files = g["model"]
                    fid, path, name, size = rng.choice(files)
                    ip = rng.choice(g["ips"])
                    subject = f"{g['email']} {path}"
                    if g["revoked"]:
                        pending.append(ev("file.fetch", "refused", "grant_revoked", subject=g["email"] + " " + name,
                                          model_id=mid, grant_id=g["id"], researcher_id=g["rid"], ip=ip, ua=g["agent"]))
                    else:
                        start = 0 if rng.random() < 0.7 else rng.randrange(0, size)
                        end = size - 1
                        if rng.random() < 0.2:  # a chunked client asks for 64 MiB ranges
                            start = rng.randrange(0, size >> 26) << 26
                            end = min(size - 1, start + (1 << 26) - 1)
                        want = end - start + 1
                        done = want if rng.random() < 0.88 else rng.randrange(0, want)
                        common = dict(subject=subject, model_id=mid, grant_id=g["id"], researcher_id=g["rid"],
                                      file_id=fid, rs=start, re_=end, ip=ip, ua=g["agent"])
                        pending.append(ev("file.fetch", **common))
                        pending.append(ev("file.delivered", "ok" if done == want else "aborted", nbytes=done, **common))
                elif x < 0.965:
                    g = world.pick_grant(active)
                    pending.append(ev("links.issued", subject=g["email"] + rng.choice([" via page", " via manifest"]),
                                      model_id=g["model"][0], grant_id=g["id"], researcher_id=g["rid"],
                                      ip=rng.choice(g["ips"]), ua=g["agent"]))
                elif x < 0.985:
                    g = world.pick_grant(active)
                    name = rng.choice(g["model"][2])[2]
                    if rng.random() < 0.5:
                        pending.append(ev("file.fetch", "refused", "link_expired", subject=g["email"] + " " + name,
                                          model_id=g["model"][0], grant_id=g["id"], researcher_id=g["rid"],
                                          ip=rng.choice(g["ips"]), ua=g["agent"]))
                    else:
                        pending.append(ev("file.fetch", "refused", rng.choice(["bad_signature", "malformed_link"]),
                                          subject=name, ip="203.0.113.%d" % rng.randint(1, 254), ua="curl/8.5.0"))
                else:
                    r = rng.randrange(len(world.reviewers))
                    if rng.random() < 0.9:
                        pending.append(ev("reviewer.sign_in", actor=world.reviewers[r], subject=world.reviewers[r],
                                          ip=world.reviewer_ips[r], ua=world.browser[0]))
                    else:
                        pending.append(ev("reviewer.sign_in", "refused", "bad_credentials", subject=world.reviewers[r],
                                          ip="198.51.100.%d" % rng.randint(1, 254), ua=world.browser[1]))
        e = pending.pop(0)
        seq += 1
        at = t0 + (span * i) // n_events
        row = (seq, at, *e[:-1], e[-1], prev)
        h = hashlib.sha256(c := canonical(row)).hexdigest()
        if canon_out is not None:
            canon_out.write(c)
        emit_cb(row + (h,), len(c))
        prev = h
        i += 1
    return seq, prev


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", required=True, help="DATA_DIR/weightgate.db of a migrated data dir")
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--canonical-out", help="also write every new event's hashed bytes to this file")
    p.add_argument("--summary", help="write a JSON summary here")
    p.add_argument("--store-world", action="store_true",
                   help="also write the models, releases, files and researchers the events name (once per database)")
    a = p.parse_args()

    rng = random.Random(a.seed)
    db = sqlite3.connect(a.db, isolation_level=None)
    db.execute("PRAGMA synchronous = OFF")
    db.execute("PRAGMA cache_size = -262144")
    seq0, prev, existing = check_existing(db)
    print(f"fill_audit.py: {existing} existing events reproduce their stored hashes; appending {a.events}",
          file=sys.stderr)
    existing_models = db.execute("SELECT id, slug FROM models ORDER BY created_at").fetchall()
    world = World(rng, a.events, existing_models)

    canon = open(a.canonical_out, "wb", buffering=1 << 20) if a.canonical_out else None
    stats = {"bytes": 0, "grants": {}}
    batch = []
    insert = f"INSERT INTO audit_events ({STORED_COLUMNS}) VALUES ({', '.join('?' * 22)})"
    terms = Terms(db)
    started = time.monotonic()
    db.execute("BEGIN")
    if a.store_world:
        store_world(db, world, int(time.time() * 1000))

    def emit(row, nbytes):
        stats["bytes"] += nbytes
        if row[9] is not None:
            stats["grants"][row[9]] = stats["grants"].get(row[9], 0) + 1
        batch.append(stored(row, terms))
        if len(batch) >= 50_000:
            terms.flush()
            db.executemany(insert, batch)
            batch.clear()

    seq, head = generate(world, rng, a.events, seq0, prev, int(time.time() * 1000), canon, emit)
    if batch:
        terms.flush()
        db.executemany(insert, batch)
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    if canon:
        canon.close()
    busiest, busiest_n = max(stats["grants"].items(), key=lambda kv: kv[1])
    actions = dict(db.execute(
        "SELECT t.term, count(*) FROM audit_events e JOIN audit_terms t ON t.id = e.action_term"
        " GROUP BY t.term ORDER BY 2 DESC").fetchall())
    total = db.execute("SELECT count(*) FROM audit_events").fetchone()[0]
    db.close()
    summary = {
        "appended": a.events,
        "total_events": total,
        "head_seq": seq,
        "head_hash": head,
        "canonical_bytes": stats["bytes"],
        "grants": len(stats["grants"]),
        "busiest_grant": busiest,
        "busiest_grant_events": busiest_n,
        "actions": actions,
        "seconds": round(time.monotonic() - started, 1),
    }
    print("fill_audit.py: " + json.dumps(summary), file=sys.stderr)
    if a.summary:
        with open(a.summary, "w") as f:
            json.dump(summary, f)


if __name__ == "__main__":
    main()
