"""psycopg 3 and the SQLAlchemy ORM through a pgmix node.

Usage: python clients.py CONNINFO SQLALCHEMY_URL [orm]
With `orm`, only the SQLAlchemy ORM part runs. Exits non-zero (with a traceback) on any failure; prints 'python clients: ok' at the end.
"""
import sys

import psycopg
from sqlalchemy import ForeignKey, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

conninfo = sys.argv[1]


def check_psycopg() -> None:
    with psycopg.connect(conninfo) as conn:
        conn.execute("DROP TABLE IF EXISTS py_items")
        conn.execute("CREATE TABLE py_items (id serial primary key, name text, price numeric, tags text[])")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO py_items (name, price, tags) VALUES (%s, %s, %s)",
                [(f"item {i}", i * 1.5, ["a", str(i)]) for i in range(100)],
            )
        conn.commit()
        # Pipeline mode: many statements in flight, one Sync at the end.
        with conn.pipeline():
            curs = [conn.execute("SELECT name FROM py_items WHERE id = %s", (i,)) for i in range(1, 51)]
        assert [c.fetchone()[0] for c in curs] == [f"item {i}" for i in range(50)]
        # Binary results.
        with conn.cursor(binary=True) as cur:
            cur.execute("SELECT sum(price), array_agg(id ORDER BY id) FROM py_items")
            total, ids = cur.fetchone()
            assert float(total) == sum(i * 1.5 for i in range(100)), total
            assert ids == list(range(1, 101))
        # COPY both ways.
        with conn.cursor() as cur:
            with cur.copy("COPY py_items (name, price, tags) FROM STDIN") as copy:
                for i in range(1000):
                    copy.write_row((f"copied {i}", i, ["c"]))
            conn.commit()
            rows = []
            with cur.copy("COPY (SELECT name FROM py_items WHERE name LIKE 'copied%' ORDER BY id) TO STDOUT") as copy:
                for row in copy.rows():
                    rows.append(row[0])
            assert len(rows) == 1000 and rows[0] == "copied 0", rows[:3]
        # A rolled-back transaction leaves nothing.
        try:
            with conn.transaction():
                conn.execute("INSERT INTO py_items (name) VALUES ('ghost')")
                conn.execute("SELECT 1/0")
        except psycopg.errors.DivisionByZero:
            pass
        assert conn.execute("SELECT count(*) FROM py_items WHERE name = 'ghost'").fetchone()[0] == 0
        # Server-side prepared statements: prepared once, then bound and executed with each value.
        got = [conn.execute("SELECT %s::int + 1", (i,), prepare=True).fetchone()[0] for i in range(10)]
        assert got == list(range(1, 11)), got
        prepared = conn.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE NOT from_sql AND statement = 'SELECT $1::int + 1'"
        ).fetchone()[0]
        assert prepared == 1, prepared
    # TLS between this client and pgmix, as libpq sees it (PQsslInUse). Postgres's pg_stat_ssl
    # would describe the other hop, pgmix's own connection to Postgres over a Unix socket.
    with psycopg.connect(conninfo) as conn:
        assert conn.pgconn.ssl_in_use is False, "sslmode=disable connection uses TLS"
    with psycopg.connect(conninfo.replace("sslmode=disable", "") + " sslmode=require") as conn:
        assert conn.pgconn.ssl_in_use is True, "sslmode=require connection does not use TLS"
        # A deep pipeline, in plaintext and over TLS: about 20 MB of requests in flight while the
        # replies are read as they come. pgmix must move both directions at once or it hangs.
        deep_pipeline(conn)
    with psycopg.connect(conninfo) as conn:
        deep_pipeline(conn)


def deep_pipeline(conn: psycopg.Connection) -> None:
    big = "x" * 1000
    with conn.pipeline():
        curs = [conn.execute("SELECT length(repeat(%s, 2))", (big,)) for _ in range(20000)]
    assert all(c.fetchone()[0] == 2000 for c in curs)


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "orm_author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    books: Mapped[list["Book"]] = relationship(back_populates="author", cascade="all, delete-orphan")


class Book(Base):
    __tablename__ = "orm_book"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    author_id: Mapped[int] = mapped_column(ForeignKey("orm_author.id"))
    author: Mapped[Author] = relationship(back_populates="books")


def check_sqlalchemy() -> None:
    engine = create_engine(sys.argv[2])
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add(Author(name="Le Guin", books=[Book(title="The Dispossessed"), Book(title="Earthsea")]))
        s.add(Author(name="Lem", books=[Book(title="Solaris")]))
        s.commit()
    with Session(engine) as s:
        lem = s.scalars(select(Author).where(Author.name == "Lem")).one()
        assert [b.title for b in lem.books] == ["Solaris"]
        lem.name = "Stanisław Lem"
        s.commit()
    with Session(engine) as s:
        titles = s.scalars(select(Book.title).join(Author).where(Author.name == "Stanisław Lem")).all()
        assert titles == ["Solaris"], titles
        s.add(Author(name="Never saved"))
        s.flush()
        s.rollback()
    with Session(engine) as s:
        assert s.scalars(select(Author).where(Author.name == "Never saved")).first() is None
        le_guin = s.scalars(select(Author).where(Author.name == "Le Guin")).one()
        s.delete(le_guin)
        s.commit()
    with Session(engine) as s:
        assert s.scalars(select(Book)).all().__len__() == 1
    Base.metadata.drop_all(engine)
    engine.dispose()


if sys.argv[3:] != ["orm"]:
    check_psycopg()
check_sqlalchemy()
print("python clients: ok")
