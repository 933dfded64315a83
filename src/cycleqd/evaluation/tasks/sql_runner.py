"""Runs SQL against a SQLite database inside the sandbox and answers in JSON (standard library only).

It is not imported by the evaluating process: :mod:`cycleqd.evaluation.tasks.sqlenv` gives its text to
each sandboxed run as the support file ``sql_runner.py``, started as ``python sql_runner.py`` with
the job as JSON on stdin (``mode``: ``build``, ``query``, ``script``, ``statement``, ``dump`` or
``batch``, the SQL, the database file and the row limit); the last line of stdout is the answer.
"""

import base64
import json
import sqlite3
import sys
import time


def value(v):
    """A cell as JSON can carry it (bytes as ``{"$bytes": hex}``)."""
    return {"$bytes": v.hex()} if isinstance(v, bytes) else v


def quote(name):
    """An SQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def fetch(cur, limit):
    """At most ``limit`` rows of a cursor, and whether there were more."""
    rows = cur.fetchmany(limit + 1)
    return [[value(v) for v in r] for r in rows[:limit]], len(rows) > limit


def dump(con, limit):
    """Every table's columns and rows (at most ``limit`` each), and whether any was cut."""
    tables = {}
    truncated = False
    names = [
        r[0]
        for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    for name in names:
        cur = con.execute("SELECT * FROM " + quote(name))
        rows, cut = fetch(cur, limit)
        truncated = truncated or cut
        tables[name] = {"columns": [d[0] for d in cur.description], "rows": rows}
    return tables, truncated


def build(con, job):
    """Create a database from a job's schema and table rows."""
    if job.get("schema"):
        con.executescript(job["schema"])
    existing = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for name, table in job.get("tables", {}).items():
        cols = table["columns"]
        types = table.get("types") or [""] * len(cols)
        if name not in existing:
            defs = ", ".join((quote(c) + " " + t).strip() for c, t in zip(cols, types))  # noqa: B905 - missing types are blank
            con.execute("CREATE TABLE " + quote(name) + " (" + defs + ")")
        marks = ", ".join("?" for _ in cols)
        con.executemany(
            "INSERT INTO "
            + quote(name)
            + " ("
            + ", ".join(quote(c) for c in cols)
            + ")"
            + " VALUES ("
            + marks
            + ")",
            table["rows"],
        )
    con.commit()


def run_one(con, job, mode, limit):
    """Answer one job on an open database (``build``, ``query``, ``script``, ``statement``, ``dump``)."""
    if mode == "build":
        build(con, job)
        return {"ok": True}
    if mode == "query":
        cur = con.execute(job["sql"])
        if cur.description is None:
            return {"ok": False, "error": "the statement returns no rows (expected a query)"}
        rows, cut = fetch(cur, limit)
        columns = [d[0] for d in cur.description]
        return {"ok": True, "columns": columns, "rows": rows, "truncated": cut}
    if mode == "script":
        con.executescript(job["sql"])
        con.commit()
        tables, cut = dump(con, limit)
        return {"ok": True, "tables": tables, "truncated": cut}
    if mode == "statement":
        cur = con.execute(job["sql"])
        if cur.description is not None:
            rows, cut = fetch(cur, limit)
            columns = [d[0] for d in cur.description]
            result = {"ok": True, "columns": columns, "rows": rows, "truncated": cut}
        else:
            result = {"ok": True, "rowcount": cur.rowcount}
        con.commit()
        return result
    if mode == "dump":
        tables, cut = dump(con, limit)
        return {"ok": True, "tables": tables, "truncated": cut}
    return {"ok": False, "error": "unknown mode " + repr(mode)}


def batch(job, limit):
    """Answer many queries, each on its own in-memory copy of its database."""
    # Each query runs on its own in-memory copy of its database, one after the other. Attaching
    # files is refused, so no query reaches a file; a query that is refused something, runs past its
    # time or exhausts memory is marked "retry" and the caller runs it alone, as without batching.
    if not hasattr(sqlite3.Connection, "deserialize"):
        return {"ok": False, "error": "batches need Python 3.11 or newer"}
    dbs = [base64.b64decode(d) for d in job["dbs"]]
    per_query = job.get("per_query_s", 1.0)
    answers = []
    for q in job["items"]:
        built = None
        if "build" in q:  # the item's database, built here from the dataset's schema and rows
            try:
                con = sqlite3.connect(":memory:")
                build(con, q["build"])
                built = con.serialize()
            except Exception as exc:
                answers.append({"ok": False, "error": type(exc).__name__ + ": " + str(exc), "stage": "build"})
                continue
            finally:
                con.close()
        con = sqlite3.connect(":memory:")
        flags = []

        def authorize(action, *args, flags=flags):
            if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
                flags.append("denied")
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK

        deadline = time.monotonic() + per_query

        def tick(deadline=deadline, flags=flags):
            if time.monotonic() > deadline:
                flags.append("slow")
                return 1
            return 0

        try:
            con.deserialize(built if built is not None else dbs[q["db"]])
            con.set_authorizer(authorize)
            con.set_progress_handler(tick, 1000)
            answer = run_one(con, q, q["mode"], limit)
        except MemoryError:
            answer = {"ok": False, "retry": True}
        except Exception as exc:
            answer = {"ok": False, "error": type(exc).__name__ + ": " + str(exc)}
        finally:
            con.close()
        if flags:
            answer = {"ok": False, "retry": True}
        elif built is not None:
            answer["db"] = base64.b64encode(built).decode()
        answers.append(answer)
    return {"ok": True, "answers": answers}


def main():
    """Read the job from stdin, answer it on the last line of stdout."""
    job = json.loads(sys.stdin.read())
    mode, limit = job["mode"], job.get("max_rows", 10000)
    if mode == "batch":
        result = batch(job, limit)
    else:
        con = sqlite3.connect(job.get("db", "db.sqlite"))
        try:
            result = run_one(con, job, mode, limit)
        except Exception as exc:
            result = {"ok": False, "error": type(exc).__name__ + ": " + str(exc)}
        finally:
            con.close()
    sys.stdout.write("\n" + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
