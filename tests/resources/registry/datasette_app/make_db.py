"""The database Datasette serves in the tests: one table of twelve rows."""

import sqlite3
import sys

with sqlite3.connect(sys.argv[1]) as db:
    db.execute("create table items (id integer primary key, name text)")
    db.executemany("insert into items (name) values (?)", [(f"item {i}",) for i in range(12)])
