"""Drivers as applications use them, through one pgmix node: asyncpg, pg8000 and psycopg 3
(pipeline mode, executemany, COPY in a transaction), temporary tables, with parameterized statements inside and
outside transactions. The table `accounts (id int primary key, balance bigint)` with ids 1..10
must exist; what the script does to it keeps the total.

Usage: python drivers.py HOST PORT USER PASSWORD DATABASE
Exits non-zero with a traceback on any failure; prints 'drivers: ok' at the end.
"""
import asyncio
import io
import sys

import asyncpg
import pg8000.native
import psycopg

host, port, user, password, database = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
conninfo = f"host={host} port={port} user={user} password={password} dbname={database} sslmode=disable"


def total_psycopg() -> int:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute("SELECT sum(balance) FROM accounts").fetchone()[0]


async def check_asyncpg() -> None:
    conn = await asyncpg.connect(host=host, port=port, user=user, password=password, database=database, ssl=False)
    try:
        # Prepared first (Parse, Describe, Sync), then bound and executed: autocommit.
        await conn.execute("UPDATE accounts SET balance = balance - $1 WHERE id = $2", 1, 1)
        await conn.execute("UPDATE accounts SET balance = balance + $1 WHERE id = $2", 1, 2)
        got = await conn.fetchval("SELECT balance FROM accounts WHERE id = $1", 2)
        assert got is not None
        # The same statements in a transaction, several times (asyncpg caches its statements).
        for i in range(5):
            async with conn.transaction():
                await conn.execute("UPDATE accounts SET balance = balance - $1 WHERE id = $2", 1, 3)
                await conn.execute("UPDATE accounts SET balance = balance + $1 WHERE id = $2", 1, 4)
                assert await conn.fetchval("SELECT count(*) FROM accounts WHERE id = ANY($1::int[])", [3, 4]) == 2
        # A failed transaction is rolled back whole.
        try:
            async with conn.transaction():
                await conn.execute("UPDATE accounts SET balance = balance + 1000 WHERE id = $1", 5)
                await conn.execute("SELECT 1/0")
        except asyncpg.exceptions.DivisionByZeroError:
            pass
        # executemany: one prepared statement, many Bind/Execute.
        await conn.executemany("UPDATE accounts SET balance = balance + $1 WHERE id = $2", [(1, 6), (-1, 7)])
        # A prepared statement object, reused.
        stmt = await conn.prepare("SELECT balance FROM accounts WHERE id = $1")
        assert [await stmt.fetchval(i) for i in (1, 2)] == [await conn.fetchval("SELECT balance FROM accounts WHERE id = $1", i) for i in (1, 2)]
    finally:
        await conn.close()


def check_pg8000() -> None:
    conn = pg8000.native.Connection(user, host=host, port=port, password=password, database=database)
    try:
        conn.run("START TRANSACTION")
        conn.run("UPDATE accounts SET balance = balance - :a WHERE id = :i", a=2, i=8)
        conn.run("UPDATE accounts SET balance = balance + :a WHERE id = :i", a=2, i=9)
        conn.run("COMMIT")
        assert conn.run("SELECT count(*) FROM accounts WHERE id = :i", i=8) == [[1]]
        conn.run("BEGIN")
        conn.run("UPDATE accounts SET balance = balance + 100 WHERE id = :i", i=10)
        conn.run("ROLLBACK")
        # Unnamed statements, executed again and again.
        for i in range(1, 11):
            assert len(conn.run("SELECT balance FROM accounts WHERE id = :i", i=i)) == 1
        # A named prepared statement.
        ps = conn.prepare("SELECT balance FROM accounts WHERE id = :i")
        assert len(ps.run(i=1)) == 1
        ps.close()
        # Autocommit writes, each prepared (Parse, Sync), described (Describe, Sync) and run
        # (Bind, Execute, Sync) in units of their own; a COPY the same way.
        conn.run("UPDATE accounts SET balance = balance + :a WHERE id = :i", a=0, i=1)
        conn.run("CREATE TABLE IF NOT EXISTS driver_copy8000 (id int PRIMARY KEY, v text)")
        conn.run("DELETE FROM driver_copy8000")
        conn.run("COPY driver_copy8000 FROM STDIN", stream=io.BytesIO(b"1\tone\n2\ttwo\n"))
        assert conn.run("SELECT count(*) FROM driver_copy8000") == [[2]]
        # COPY out inside a strong transaction, where pg8000's Bind and Execute end at a Flush.
        conn.run("START TRANSACTION")
        conn.run("UPDATE accounts SET balance = balance + :a WHERE id = :i", a=0, i=1)
        out = io.BytesIO()
        conn.run("COPY (SELECT id, v FROM driver_copy8000 ORDER BY id) TO STDOUT", stream=out)
        conn.run("COMMIT")
        assert out.getvalue() == b"1\tone\n2\ttwo\n", out.getvalue()
    finally:
        conn.close()


def check_psycopg() -> None:
    with psycopg.connect(conninfo) as conn:
        # executemany sends BEGIN by the extended protocol, in a pipeline.
        with conn.cursor() as cur:
            cur.executemany(
                "UPDATE accounts SET balance = balance + %s WHERE id = %s", [(1, 1), (-1, 2), (1, 3), (-1, 4)]
            )
        conn.commit()
        # Pipeline mode inside a transaction.
        with conn.pipeline():
            conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (3, 5))
            conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (3, 6))
            cur = conn.execute("SELECT balance FROM accounts WHERE id = %s", (6,))
        assert cur.fetchone() is not None
        conn.commit()
        # COPY in a transaction, into a table of its own.
        conn.execute("CREATE TABLE IF NOT EXISTS driver_copy (id int PRIMARY KEY, v text)")
        conn.commit()
        conn.execute("DELETE FROM driver_copy")
        with conn.cursor() as cur:
            with cur.copy("COPY driver_copy (id, v) FROM STDIN") as copy:
                for i in range(100):
                    copy.write_row((i, f"row {i}"))
            assert conn.execute("SELECT count(*) FROM driver_copy").fetchone()[0] == 100
        conn.commit()
        with conn.cursor() as cur:
            got = []
            with cur.copy("COPY (SELECT id FROM driver_copy ORDER BY id) TO STDOUT") as copy:
                for row in copy.rows():
                    got.append(int(row[0]))
            assert got == list(range(100))
        conn.commit()


def check_temporary() -> None:
    """Temporary tables live in the session's own backend, whatever the schema file says."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE scratch (id int, v text)")
        conn.execute("INSERT INTO scratch VALUES (%s, %s), (%s, %s)", (1, "one", 2, "two"))
        assert conn.execute("SELECT count(*) FROM scratch").fetchone()[0] == 2
        with conn.cursor() as cur:
            with cur.copy("COPY scratch FROM STDIN") as copy:
                copy.write_row((3, "three"))
            with cur.copy("COPY (SELECT id FROM scratch ORDER BY id) TO STDOUT") as copy:
                assert [int(r[0]) for r in copy.rows()] == [1, 2, 3]
        conn.execute("DROP TABLE scratch")
        # A temporary table of a strong table's name hides it in this session, and what is
        # written to it goes nowhere else.
        conn.execute("CREATE TEMP TABLE accounts (id int, balance bigint)")
        conn.execute("INSERT INTO accounts VALUES (1, 1000000)")
        assert conn.execute("SELECT sum(balance) FROM accounts").fetchone()[0] == 1000000
        conn.execute("DROP TABLE accounts")
        assert conn.execute("SELECT count(*) FROM accounts").fetchone()[0] == 10
        # ON COMMIT DROP ends with its transaction.
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE batch (id int) ON COMMIT DROP")
            conn.execute("INSERT INTO batch SELECT generate_series(1, 5)")
            assert conn.execute("SELECT count(*) FROM batch").fetchone()[0] == 5
        try:
            conn.execute("SELECT count(*) FROM batch")
            raise AssertionError("batch outlived its transaction")
        except psycopg.errors.UndefinedTable:
            pass
        # A rolled-back CREATE leaves nothing; the name can be made again.
        conn.execute("BEGIN")
        conn.execute("CREATE TEMP TABLE again (id int)")
        conn.execute("ROLLBACK")
        conn.execute("CREATE TEMP TABLE again (id int)")
        conn.execute("INSERT INTO again VALUES (1)")
        assert conn.execute("SELECT count(*) FROM again").fetchone()[0] == 1
    with psycopg.connect(conninfo, autocommit=True) as conn:
        try:
            conn.execute("SELECT count(*) FROM again")
            raise AssertionError("a temporary table outlived its session")
        except psycopg.errors.UndefinedTable:
            pass


before = total_psycopg()
asyncio.run(asyncio.wait_for(check_asyncpg(), 60))
print("asyncpg: ok", flush=True)
check_pg8000()
print("pg8000: ok", flush=True)
check_psycopg()
print("psycopg: ok", flush=True)
check_temporary()
print("temporary tables: ok", flush=True)
after = total_psycopg()
assert before == after, (before, after)
print("drivers: ok")
