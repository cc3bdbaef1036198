-- Snapshots of the strong state, so the Raft log can be trimmed and a node too far behind is
-- brought up to date from a snapshot instead of from entries that are gone.
--
-- A snapshot holds each database's strong tables, their sequences, the chunks staged there, and
-- the DDL the log carried. The DDL is kept here as it is applied: a node installing a snapshot
-- runs the DDL it lacks first (so its tables have the leader's shape), then loads the rows.

-- DDL applied from the log in this database, in log order: (idx, n) is the entry's index and the
-- statement's place in it. `standalone` statements (CREATE DATABASE, ...) are kept in the node's
-- own database, naming the database they ran for.
CREATE TABLE pgmix.ddl_journal (
    idx bigint NOT NULL,
    n int NOT NULL,
    database text NOT NULL,
    sql text NOT NULL,
    path text NOT NULL DEFAULT '',
    who text NOT NULL DEFAULT '',
    standalone boolean NOT NULL DEFAULT false,
    PRIMARY KEY (idx, n)
);

-- Keeps the DDL of an entry's effects (`x`, as take_effects gave them) at index `i`.
CREATE FUNCTION pgmix.journal_ddl(i bigint, x jsonb) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pgmix AS $$
    INSERT INTO pgmix.ddl_journal (idx, n, database, sql, path, who)
    SELECT i, o::int, current_database(), e->>'sql', coalesce(e->>'path', ''), coalesce(e->>'who', '')
    FROM jsonb_array_elements(coalesce(x->'effects', '[]')) WITH ORDINALITY AS a(e, o)
    WHERE e->>'op' = 'S'
    ON CONFLICT DO NOTHING
$$;

-- Staged chunks are applied as before, and their DDL is kept under each chunk's index.
CREATE OR REPLACE FUNCTION pgmix.apply_staged(g text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pgmix AS $$
DECLARE
    e text;
    i bigint;
    n bigint := 0;
BEGIN
    FOR i, e IN SELECT idx, effects FROM pgmix.strong_staged WHERE gid = g ORDER BY idx LOOP
        PERFORM pgmix.apply_strong(e::jsonb);
        PERFORM pgmix.journal_ddl(i, e::jsonb);
        n := n + 1;
    END LOOP;
    DELETE FROM pgmix.strong_staged WHERE gid = g;
    RETURN n;
END
$$;

-- On the node that ran a chunked transaction: keeps its staged chunks' DDL and drops them.
CREATE FUNCTION pgmix.journal_staged(g text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pgmix AS $$
BEGIN
    PERFORM pgmix.journal_ddl(idx, effects::jsonb) FROM pgmix.strong_staged WHERE gid = g;
    DELETE FROM pgmix.strong_staged WHERE gid = g;
END
$$;

-- Loading a table from a snapshot, in a transaction running as session_replication_role =
-- replica (no capture, no user triggers, no foreign-key actions). A whole strong table is emptied
-- and filled. A partly strong one keeps the weak columns of the rows it has (their versions are
-- the weak merge's): its snapshot rows are collected in a temporary table first, then, matched by
-- key with the columns' own types, rows the snapshot lacks are deleted, rows whose strong columns
-- differ are taken out (their weak columns kept), and the rows missing are inserted, so a unique
-- strong value can move from one row to another.
CREATE FUNCTION pgmix.snapshot_begin(tname text, whole boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pgmix AS $$
BEGIN
    IF whole THEN
        EXECUTE 'DELETE FROM ' || tname;
    ELSE
        DROP TABLE IF EXISTS pg_temp.pgmix_snap;
        EXECUTE format('CREATE TEMP TABLE pgmix_snap ON COMMIT DROP AS SELECT * FROM %s WITH NO DATA', tname);
    END IF;
END
$$;

CREATE FUNCTION pgmix.snapshot_rows(tname text, whole boolean, rows jsonb[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pgmix AS $$
BEGIN
    IF whole THEN
        PERFORM pgmix.apply_inserts(tname, rows);
    ELSE
        EXECUTE format('INSERT INTO pg_temp.pgmix_snap SELECT r.* FROM unnest($1) j, jsonb_populate_record(NULL::%s, j) r',
                       tname)
            USING rows;
    END IF;
END
$$;

CREATE FUNCTION pgmix.snapshot_end(tname text, whole boolean, keys text[], cols text[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pgmix AS $$
DECLARE
    t regclass := tname::regclass;
    matched text := (SELECT string_agg(format('x.%1$I = s.%1$I', k), ' AND ') FROM unnest(keys) k);
    strong text[] := ARRAY(SELECT a.attname::text FROM pg_attribute a
                           WHERE a.attrelid = t AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                             AND a.attname = ANY (cols));
    weak text[] := ARRAY(SELECT a.attname::text FROM pg_attribute a
                         WHERE a.attrelid = t AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                           AND NOT a.attname = ANY (cols || keys));
BEGIN
    IF whole THEN
        RETURN;
    END IF;
    EXECUTE format('DELETE FROM %s x WHERE NOT EXISTS (SELECT 1 FROM pg_temp.pgmix_snap s WHERE %s)', tname, matched);
    IF cardinality(strong) > 0 THEN
        EXECUTE format('WITH d AS (DELETE FROM %s x USING pg_temp.pgmix_snap s WHERE %s AND ROW(%s) IS DISTINCT FROM ROW(%s) '
                       'RETURNING x.*) UPDATE pg_temp.pgmix_snap s SET %s FROM d x WHERE %s',
                       tname, matched,
                       (SELECT string_agg('x.' || quote_ident(c), ', ') FROM unnest(strong) c),
                       (SELECT string_agg('s.' || quote_ident(c), ', ') FROM unnest(strong) c),
                       CASE WHEN cardinality(weak) = 0 THEN format('%1$I = s.%1$I', keys[1])
                            ELSE (SELECT string_agg(format('%1$I = x.%1$I', c), ', ') FROM unnest(weak) c) END,
                       matched);
    END IF;
    EXECUTE format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM pg_temp.pgmix_snap s '
                   'WHERE NOT EXISTS (SELECT 1 FROM %s x WHERE %s)',
                   tname, pgmix.strong_cols(t, NULL, ''), pgmix.strong_cols(t, NULL, 's.'), tname, matched);
END
$$;

-- The last values of the sequences owned by strong tables, for a snapshot.
CREATE FUNCTION pgmix.strong_sequences() RETURNS TABLE (name text, value bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pgmix AS $$
    SELECT * FROM pgmix.owned_sequences(ARRAY(SELECT tbl FROM pgmix.strong_tables))
$$;
