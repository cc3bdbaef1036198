-- Weak replication: the change log every node keeps and serves to its peers, the per-row
-- versions the merge rule needs, the cursors of what was applied from each peer, the changes
-- that could not be applied yet, and the capture trigger that fills the log in the same
-- transaction as the user's write.

-- The change log: local writes (origin = this node) and the changes applied from peers, kept so
-- that they can be forwarded to a node that missed them. Rows are read in (xid, seq) order, and
-- only below the oldest running transaction (see pgmix.log_horizon), so a reader never moves
-- past a row whose transaction has not committed yet.
CREATE TABLE pgmix.changes (
    xid bigint NOT NULL DEFAULT pg_current_xact_id()::text::bigint,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    origin integer NOT NULL,
    -- The highest timestamp in the change: its age is the replication lag it stands for.
    hlc bigint NOT NULL,
    -- The table, schema-qualified and quoted, ready to splice into SQL.
    tbl text NOT NULL,
    -- The primary key as a JSON object {column: value}.
    key jsonb NOT NULL,
    ins bigint,
    ins_node integer,
    del bigint,
    del_node integer,
    -- The columns written: {column: [hlc, node, value]}.
    cols jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (xid, seq)
);

-- What the merge rule knows of each row: the version of its latest insert and delete, each
-- column's version {column: [hlc, node]}, and, while the row is deleted, the column values
-- under its tombstone (`ghost`), which a later insert may bring back. `top` is the highest
-- timestamp anywhere in the row: a local write is stamped above it.
CREATE TABLE pgmix.versions (
    tbl text NOT NULL,
    key jsonb NOT NULL,
    ins bigint,
    ins_node integer,
    del bigint,
    del_node integer,
    cols jsonb NOT NULL DEFAULT '{}',
    ghost jsonb,
    top bigint NOT NULL,
    PRIMARY KEY (tbl, key)
);

-- The highest timestamp received from any peer: local timestamps are issued above it.
CREATE TABLE pgmix.clock (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    hlc bigint NOT NULL
);
INSERT INTO pgmix.clock (hlc) VALUES (0);

-- How far this node has applied each peer's change log: updated in the apply's transaction.
CREATE TABLE pgmix.cursors (
    source integer PRIMARY KEY,
    xid bigint NOT NULL,
    seq bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Changes that could not be applied (a missing table, a constraint, a type a DDL changed). They
-- are retried until they apply; nothing is dropped.
CREATE TABLE pgmix.conflicts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source integer NOT NULL,
    origin integer NOT NULL,
    hlc bigint NOT NULL,
    tbl text NOT NULL,
    key jsonb NOT NULL,
    ins bigint,
    ins_node integer,
    del bigint,
    del_node integer,
    cols jsonb NOT NULL,
    reason text NOT NULL,
    sqlstate text NOT NULL,
    attempts integer NOT NULL DEFAULT 1,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_try timestamptz NOT NULL DEFAULT now()
);

-- The tables whose weak writes are captured: their key columns, and whether whole rows are
-- weak (inserts and deletes replicate) or only some columns (updates of those replicate).
CREATE TABLE pgmix.tables (
    tbl text PRIMARY KEY,
    key text[] NOT NULL,
    whole boolean NOT NULL,
    cols text[] NOT NULL
);

-- The newest (xid) below which every transaction has ended: log rows under it are final.
CREATE FUNCTION pgmix.log_horizon() RETURNS bigint LANGUAGE sql STABLE AS
$$ SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint $$;

-- {k: j->k} for each of `keys` that `j` holds.
CREATE FUNCTION pgmix.pick(j jsonb, keys text[]) RETURNS jsonb LANGUAGE sql IMMUTABLE AS
$$ SELECT coalesce(jsonb_object_agg(k, j->k), '{}') FROM unnest(keys) k WHERE j ? k $$;

-- {column: [h, node]} for each column of `vals`.
CREATE FUNCTION pgmix.stamps(vals jsonb, h bigint, node integer) RETURNS jsonb LANGUAGE sql IMMUTABLE AS
$$ SELECT coalesce(jsonb_object_agg(k, jsonb_build_array(h, node)), '{}') FROM jsonb_object_keys(vals) k $$;

-- {column: [h, node, value]} for each column of `vals`.
CREATE FUNCTION pgmix.stamped(vals jsonb, h bigint, node integer) RETURNS jsonb LANGUAGE sql IMMUTABLE AS
$$ SELECT coalesce(jsonb_object_agg(e.key, jsonb_build_array(h, node, e.value)), '{}') FROM jsonb_each(vals) e $$;

-- The capture trigger, AFTER each row of a table with weak columns. Arguments: this node's id,
-- the quoted table name, whether the whole row is weak, the key columns, and (for a table with
-- only some weak columns) those columns.
--
-- A write is stamped above the row's `top`, so above every version of what it overwrites, and
-- above the clock's floor (what peers sent), and at least the wall clock: the row lock the user's
-- statement holds orders two local writes of one row, and the later one is stamped higher. The
-- log row and the versions are written in the user's transaction: a rollback captures nothing,
-- a commit loses nothing.
CREATE FUNCTION pgmix.capture() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgmix AS $fn$
DECLARE
    me integer := TG_ARGV[0]::integer;
    tname text := TG_ARGV[1];
    whole boolean := TG_ARGV[2]::boolean;
    keycols text[] := TG_ARGV[3]::text[];
    weakcols text[] := TG_ARGV[4]::text[];
    n jsonb;
    o jsonb;
    nk jsonb;
    ok jsonb;
    w bigint;
    h bigint;
    vals jsonb;
BEGIN
    w := greatest(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint << 16,
                  (SELECT c.hlc + 1 FROM pgmix.clock c));
    IF TG_OP <> 'DELETE' THEN
        n := to_jsonb(NEW);
        nk := pgmix.pick(n, keycols);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        o := to_jsonb(OLD);
        ok := pgmix.pick(o, keycols);
    END IF;
    IF NOT whole THEN
        n := pgmix.pick(n, weakcols);
        o := pgmix.pick(o, weakcols);
    END IF;
    IF TG_OP = 'UPDATE' AND (nk = ok OR NOT whole) THEN
        SELECT coalesce(jsonb_object_agg(e.key, e.value), '{}') INTO vals FROM jsonb_each(n) e
            WHERE e.value IS DISTINCT FROM o->e.key;
        IF vals = '{}' THEN
            RETURN NULL;
        END IF;
        INSERT INTO pgmix.versions AS v (tbl, key, ins, ins_node, cols, top)
            VALUES (tname, nk, 0, 0, pgmix.stamps(vals, w, me), w)
            ON CONFLICT (tbl, key) DO UPDATE SET
                top = greatest(excluded.top, v.top + 1),
                cols = v.cols || pgmix.stamps(vals, greatest(excluded.top, v.top + 1), me)
            RETURNING v.top INTO h;
        INSERT INTO pgmix.changes (origin, hlc, tbl, key, cols)
            VALUES (me, h, tname, nk, pgmix.stamped(vals, h, me));
        RETURN NULL;
    END IF;
    -- A delete, or the old key of an update that changed the key.
    IF o IS NOT NULL THEN
        INSERT INTO pgmix.versions AS v (tbl, key, del, del_node, ghost, top)
            VALUES (tname, ok, w, me, o, w)
            ON CONFLICT (tbl, key) DO UPDATE SET
                top = greatest(excluded.top, v.top + 1),
                del = greatest(excluded.top, v.top + 1),
                del_node = me,
                ghost = excluded.ghost
            RETURNING v.top INTO h;
        INSERT INTO pgmix.changes (origin, hlc, tbl, key, del, del_node)
            VALUES (me, h, tname, ok, h, me);
    END IF;
    -- An insert, or the new key of an update that changed the key.
    IF n IS NOT NULL THEN
        INSERT INTO pgmix.versions AS v (tbl, key, ins, ins_node, cols, top)
            VALUES (tname, nk, w, me, pgmix.stamps(n, w, me), w)
            ON CONFLICT (tbl, key) DO UPDATE SET
                top = greatest(excluded.top, v.top + 1),
                ins = greatest(excluded.top, v.top + 1),
                ins_node = me,
                cols = v.cols || pgmix.stamps(n, greatest(excluded.top, v.top + 1), me),
                ghost = NULL
            RETURNING v.top INTO h;
        INSERT INTO pgmix.changes (origin, hlc, tbl, key, ins, ins_node, cols)
            VALUES (me, h, tname, nk, h, me, pgmix.stamped(n, h, me));
    END IF;
    RETURN NULL;
END
$fn$;

-- TRUNCATE would empty a weak table on one node only: refused, with what to do instead.
CREATE FUNCTION pgmix.refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of weak table % would not replicate', TG_ARGV[0]
        USING ERRCODE = '0A000',
              HINT = format('Use DELETE FROM %s; it replicates to every node.', TG_ARGV[0]);
END
$fn$;
