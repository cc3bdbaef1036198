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

-- This database's change log's identity: a cursor into the log of a database that was replaced
-- (a node's Postgres set up anew) must not be taken for a cursor into the new one.
ALTER TABLE pgmix.node ADD COLUMN log_id uuid NOT NULL DEFAULT gen_random_uuid();

-- How far this node has applied each peer's change log: updated in the apply's transaction.
CREATE TABLE pgmix.cursors (
    source integer PRIMARY KEY,
    log_id text NOT NULL,
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
    -- The columns apply writes: every stored column of a whole table, the weak ones otherwise.
    cols text[] NOT NULL,
    -- The strong columns of a table that is not wholly weak (as the schema file says).
    strong text[] NOT NULL DEFAULT '{}'
);

-- The newest (xid) below which every transaction has ended: log rows under it are final.
CREATE FUNCTION pgmix.log_horizon() RETURNS bigint LANGUAGE sql STABLE AS
$$ SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint $$;

-- {k: j->k} for each of `keys` that `j` holds (verify compares rows by it).
CREATE FUNCTION pgmix.pick(j jsonb, keys text[]) RETURNS jsonb LANGUAGE sql IMMUTABLE AS
$$ SELECT coalesce(jsonb_object_agg(k, j->k), '{}') FROM unnest(keys) k WHERE j ? k $$;

-- Capture: each weak table gets a trigger function of its own, generated from its columns by
-- pgmix.install_capture, so that a write costs a few column comparisons rather than a generic
-- walk over the row as JSON. An event trigger generates it again in the same transaction as any
-- ALTER TABLE of a captured table, so no write to a new column is ever missed.
--
-- A write is stamped above the row's `top`, so above every version of what it overwrites, and
-- above the clock's floor (what peers sent), and at least the wall clock: the row lock the user's
-- statement holds orders two local writes of one row, and the later one is stamped higher. The
-- log row and the versions are written in the user's transaction: a rollback captures nothing,
-- a commit loses nothing. An UPDATE captures the columns whose value changed.

-- `"schema"."table"`, the form pgmix names tables in everywhere.
CREATE FUNCTION pgmix.qualified(t regclass) RETURNS text LANGUAGE sql STABLE AS
$$ SELECT '"' || replace(n.nspname, '"', '""') || '"."' || replace(c.relname, '"', '""') || '"'
   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = t $$;

-- Installs (or brings up to date) capture on `t`: whole rows when `whole`, else updates of the
-- columns not in `strong`. Returns false, installing nothing, when `t` has no primary key.
CREATE FUNCTION pgmix.install_capture(t regclass, whole boolean, strong text[]) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgmix AS $install$
DECLARE
    me integer := (SELECT node_id FROM pgmix.node);
    tname text := pgmix.qualified(t);
    fname text := 'capture_' || left(md5(tname || whole::text), 16);
    keys text[];
    cols text[];
    knew text;
    kold text;
    keysame text;
    diff text;
    -- Generated columns are computed on every node, never shipped.
    unshipped text;
    -- Settings under which JSON text of keys and values does not depend on the writer's
    -- session, for tables with types whose text does (time zones, float digits, intervals).
    settings text := '';
    body text;
BEGIN
    SELECT array_agg(a.attname::text ORDER BY k.ord) INTO keys
        FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = t AND i.indisprimary;
    IF keys IS NULL THEN
        RETURN false;
    END IF;
    -- A column counts as written when its value changed. Equality is not identity for every
    -- type (numeric 1.0 = 1.00, interval '1 day' = '24 hours', citext, nondeterministic
    -- collations), so only types whose equality is identity compare by `=`; the rest compare
    -- their text, bytewise.
    SELECT array_agg(a.attname::text ORDER BY a.attnum),
           string_agg(CASE WHEN a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'bool'::regtype,
                                               'uuid'::regtype, 'date'::regtype, 'timestamp'::regtype,
                                               'timestamptz'::regtype, 'bytea'::regtype, 'oid'::regtype)
                             OR (a.atttypid IN ('text'::regtype, 'varchar'::regtype)
                                 AND coalesce((SELECT co.collisdeterministic FROM pg_collation co
                                               WHERE co.oid = a.attcollation), true))
                THEN format('IF NEW.%1$I IS DISTINCT FROM OLD.%1$I THEN vals := vals || jsonb_build_object(%2$L, NEW.%1$I); END IF;', a.attname, a.attname)
                ELSE format('IF NEW.%1$I::text COLLATE "C" IS DISTINCT FROM OLD.%1$I::text COLLATE "C" THEN vals := vals || jsonb_build_object(%2$L, NEW.%1$I); END IF;', a.attname, a.attname)
                END, E'\n        ' ORDER BY a.attnum)
        INTO cols, diff
        FROM pg_attribute a
        WHERE a.attrelid = t AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
          AND (whole OR NOT a.attname::text = ANY(strong));
    IF EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid
               WHERE a.attrelid = t AND a.attnum > 0 AND NOT a.attisdropped
                 AND (ty.typtype IN ('c', 'r', 'm')
                      OR a.atttypid IN ('timestamptz'::regtype, 'timetz'::regtype, 'float4'::regtype,
                                        'float8'::regtype, 'interval'::regtype, 'money'::regtype)
                      OR ty.typelem IN ('timestamptz'::regtype, 'timetz'::regtype, 'float4'::regtype,
                                        'float8'::regtype, 'interval'::regtype)
                      OR ty.typbasetype IN ('timestamptz'::regtype, 'timetz'::regtype, 'float4'::regtype,
                                            'float8'::regtype, 'interval'::regtype))) THEN
        settings := 'SET TimeZone = ''UTC'' SET IntervalStyle = ''postgres'' SET extra_float_digits = 1 '
                    'SET DateStyle = ''ISO, MDY'' ';
    END IF;
    SELECT coalesce(' - ' || quote_literal(array_agg(a.attname::text)::text) || '::text[]', '') INTO unshipped
        FROM pg_attribute a WHERE a.attrelid = t AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated <> '';
    SELECT 'jsonb_build_object(' || string_agg(format('%L, NEW.%I', k, k), ', ') || ')',
           'jsonb_build_object(' || string_agg(format('%L, OLD.%I', k, k), ', ') || ')',
           string_agg(format('NEW.%1$I IS NOT DISTINCT FROM OLD.%1$I', k), ' AND ')
        INTO knew, kold, keysame FROM unnest(keys) k;
    body := format($body$
DECLARE
    w bigint;
    h bigint;
    k jsonb;
    vals jsonb := '{}';
    -- An UPDATE of a row written before capture began: shipped whole, as an insert.
    unseen boolean := false;
BEGIN
    w := greatest(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint << 16,
                  (SELECT c.hlc + 1 FROM pgmix.clock c));
    IF TG_OP = 'UPDATE' AND NOT %2$s AND NOT (%1$s) THEN
        RAISE EXCEPTION 'changing the primary key of %%, which has strong columns, is not supported', %6$L
            USING ERRCODE = '0A000', HINT = 'Delete the row and insert it with the new key.';
    END IF;
    IF TG_OP = 'UPDATE' AND (%1$s) THEN
        k := %3$s;
        unseen := %2$s AND NOT EXISTS (SELECT 1 FROM pgmix.versions v WHERE v.tbl = %6$L AND v.key = k);
    END IF;
    IF TG_OP = 'UPDATE' AND (%1$s) AND NOT unseen THEN
        %5$s
        IF vals = '{}' THEN
            RETURN NULL;
        END IF;
        INSERT INTO pgmix.versions AS v (tbl, key, ins, ins_node, cols, top)
            VALUES (%6$L, k, 0, 0, (SELECT jsonb_object_agg(s.col, jsonb_build_array(w, %7$s)) FROM jsonb_object_keys(vals) s(col)), w)
            ON CONFLICT (tbl, key) DO UPDATE SET
                top = greatest(excluded.top, v.top + 1),
                cols = v.cols || (SELECT jsonb_object_agg(s.col, jsonb_build_array(greatest(excluded.top, v.top + 1), %7$s)) FROM jsonb_object_keys(vals) s(col))
            RETURNING v.top INTO h;
        INSERT INTO pgmix.changes (origin, hlc, tbl, key, cols)
            VALUES (%7$s, h, %6$L, k, (SELECT jsonb_object_agg(e.key, jsonb_build_array(h, %7$s, e.value)) FROM jsonb_each(vals) e));
        RETURN NULL;
    END IF;
    -- A delete, or the old key of an update that changed the key.
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND NOT unseen) THEN
        k := %4$s;
        INSERT INTO pgmix.versions AS v (tbl, key, del, del_node, ghost, top)
            VALUES (%6$L, k, w, %7$s, to_jsonb(OLD)%8$s, w)
            ON CONFLICT (tbl, key) DO UPDATE SET
                top = greatest(excluded.top, v.top + 1),
                del = greatest(excluded.top, v.top + 1),
                del_node = %7$s,
                ghost = excluded.ghost
            RETURNING v.top INTO h;
        INSERT INTO pgmix.changes (origin, hlc, tbl, key, del, del_node) VALUES (%7$s, h, %6$L, k, h, %7$s);
    END IF;
    -- An insert, the new key of an update that changed the key, or a row capture had not seen.
    IF TG_OP <> 'DELETE' THEN
        k := %3$s;
        vals := to_jsonb(NEW)%8$s;
        INSERT INTO pgmix.versions AS v (tbl, key, ins, ins_node, cols, top)
            VALUES (%6$L, k, w, %7$s, (SELECT jsonb_object_agg(s.col, jsonb_build_array(w, %7$s)) FROM jsonb_object_keys(vals) s(col)), w)
            ON CONFLICT (tbl, key) DO UPDATE SET
                top = greatest(excluded.top, v.top + 1),
                ins = greatest(excluded.top, v.top + 1),
                ins_node = %7$s,
                cols = v.cols || (SELECT jsonb_object_agg(s.col, jsonb_build_array(greatest(excluded.top, v.top + 1), %7$s)) FROM jsonb_object_keys(vals) s(col)),
                ghost = NULL
            RETURNING v.top INTO h;
        INSERT INTO pgmix.changes (origin, hlc, tbl, key, ins, ins_node, cols)
            VALUES (%7$s, h, %6$L, k, h, %7$s, (SELECT jsonb_object_agg(e.key, jsonb_build_array(h, %7$s, e.value)) FROM jsonb_each(vals) e));
    END IF;
    RETURN NULL;
END
$body$, keysame, CASE WHEN whole THEN 'true' ELSE 'false' END, knew, kold, coalesce(diff, ''), tname, me, unshipped);
    IF NOT EXISTS (SELECT 1 FROM pg_proc p WHERE p.pronamespace = 'pgmix'::regnamespace
                   AND p.proname = fname AND p.prosrc = body
                   AND (settings = '') = (array_length(p.proconfig, 1) = 1)) THEN
        EXECUTE format('CREATE OR REPLACE FUNCTION pgmix.%I() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER '
                       'SET search_path = pg_catalog, pgmix %s AS %L', fname, settings, body);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger g JOIN pg_proc p ON p.oid = g.tgfoid
                   WHERE g.tgrelid = t AND g.tgname = 'pgmix_capture' AND p.proname = fname) THEN
        EXECUTE format('CREATE OR REPLACE TRIGGER pgmix_capture AFTER %s ON %s FOR EACH ROW EXECUTE FUNCTION pgmix.%I()',
                       CASE WHEN whole THEN 'INSERT OR UPDATE OR DELETE' ELSE 'UPDATE' END, tname, fname);
    END IF;
    IF whole AND NOT EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = t AND g.tgname = 'pgmix_no_truncate') THEN
        EXECUTE format('CREATE TRIGGER pgmix_no_truncate BEFORE TRUNCATE ON %s FOR EACH STATEMENT '
                       'EXECUTE FUNCTION pgmix.refuse_truncate(%L)', tname, tname);
    ELSIF NOT whole THEN
        EXECUTE format('DROP TRIGGER IF EXISTS pgmix_no_truncate ON %s', tname);
    END IF;
    IF whole THEN
        PERFORM pgmix.interleave(pg_get_serial_sequence(tname, a.attname)::regclass)
            FROM pg_attribute a
            WHERE a.attrelid = t AND a.attnum > 0 AND NOT a.attisdropped
              AND pg_get_serial_sequence(tname, a.attname) IS NOT NULL;
    END IF;
    INSERT INTO pgmix.tables (tbl, key, whole, cols, strong) VALUES (tname, keys, whole, cols, strong)
        ON CONFLICT (tbl) DO UPDATE SET key = excluded.key, whole = excluded.whole, cols = excluded.cols,
            strong = excluded.strong
        WHERE (pgmix.tables.key, pgmix.tables.whole, pgmix.tables.cols, pgmix.tables.strong)
              IS DISTINCT FROM (excluded.key, excluded.whole, excluded.cols, excluded.strong);
    RETURN true;
END
$install$;

-- Removes capture from `t` (no longer weak).
CREATE FUNCTION pgmix.remove_capture(t regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgmix AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS pgmix_capture ON %s', pgmix.qualified(t));
    EXECUTE format('DROP TRIGGER IF EXISTS pgmix_no_truncate ON %s', pgmix.qualified(t));
    DELETE FROM pgmix.tables WHERE tbl = pgmix.qualified(t);
END
$$;

-- The schema file as the database sees it, written by pgmix at every catalog check, so that a
-- table created or altered between two checks is captured in the DDL's own transaction.
CREATE TABLE pgmix.schema_rules (
    nsp text,               -- NULL for a name the file gives without a schema
    rel text NOT NULL,
    weak boolean NOT NULL,
    strong text[] NOT NULL DEFAULT '{}'
);
CREATE TABLE pgmix.schema_file (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    default_weak boolean NOT NULL,
    search_path text[] NOT NULL
);

-- The rule for table `t`, resolved as pgmix resolves the schema file: its schema-qualified
-- entry, else its unqualified one when its schema is on the file's search_path, else the
-- default. Both NULL before pgmix has written the file's rules.
CREATE FUNCTION pgmix.rule_for(t regclass, OUT weak boolean, OUT strong text[])
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pgmix AS $$
DECLARE
    v_nsp text;
    v_rel text;
    f pgmix.schema_file;
BEGIN
    SELECT n.nspname, c.relname INTO v_nsp, v_rel
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = t;
    SELECT * INTO f FROM pgmix.schema_file;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT r.weak, r.strong INTO weak, strong FROM pgmix.schema_rules r WHERE r.nsp = v_nsp AND r.rel = v_rel;
    IF FOUND THEN
        RETURN;
    END IF;
    IF v_nsp = ANY(f.search_path) THEN
        SELECT r.weak, r.strong INTO weak, strong FROM pgmix.schema_rules r WHERE r.nsp IS NULL AND r.rel = v_rel;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    weak := f.default_weak;
    strong := '{}';
END
$$;

-- After CREATE TABLE or ALTER TABLE, capture follows in the same transaction: a new weak table
-- is captured from its first row, and a new column of a captured one from its first write.
CREATE FUNCTION pgmix.on_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgmix AS $$
DECLARE
    r record;
    rule record;
BEGIN
    FOR r IN SELECT DISTINCT c.objid::regclass AS t FROM pg_event_trigger_ddl_commands() c
             JOIN pg_class pc ON pc.oid = c.objid JOIN pg_namespace n ON n.oid = pc.relnamespace
             WHERE c.classid = 'pg_class'::regclass AND c.object_type = 'table' AND pc.relpersistence <> 't'
               AND n.nspname NOT IN ('pgmix', 'pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' LOOP
        SELECT * INTO rule FROM pgmix.rule_for(r.t);
        IF rule.weak THEN
            PERFORM pgmix.install_capture(r.t, cardinality(rule.strong) = 0, rule.strong);
        ELSIF rule.weak IS NOT NULL AND EXISTS (SELECT 1 FROM pgmix.tables WHERE tbl = pgmix.qualified(r.t)) THEN
            PERFORM pgmix.remove_capture(r.t);
        END IF;
    END LOOP;
END
$$;
CREATE EVENT TRIGGER pgmix_capture_ddl ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE')
    EXECUTE FUNCTION pgmix.on_ddl();

-- Serial and identity keys of weak tables: each node's sequence steps by the cluster's
-- max_nodes and hands out only values that are its node id modulo it, so no two nodes issue the
-- same key. Idempotent: a sequence already interleaved is left as it is.
ALTER TABLE pgmix.node ADD COLUMN max_nodes integer NOT NULL DEFAULT 16;

CREATE FUNCTION pgmix.interleave(s regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgmix AS $$
DECLARE
    step bigint := (SELECT max_nodes FROM pgmix.node);
    want bigint := (SELECT node_id FROM pgmix.node) % (SELECT max_nodes FROM pgmix.node);
    inc bigint;
    last bigint;
    called boolean;
    next bigint;
BEGIN
    SELECT seqincrement INTO inc FROM pg_sequence WHERE seqrelid = s;
    EXECUTE format('SELECT last_value, is_called FROM %s', s) INTO last, called;
    next := CASE WHEN called THEN last + 1 ELSE last END;
    IF inc = step AND next % step = want THEN
        RETURN;
    END IF;
    next := next + ((want - next % step) % step + step) % step;
    EXECUTE format('ALTER SEQUENCE %s INCREMENT BY %s', s, step);
    PERFORM setval(s, next, false);
END
$$;

-- TRUNCATE would empty a weak table on one node only: refused, with what to do instead.
CREATE FUNCTION pgmix.refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of weak table % would not replicate', TG_ARGV[0]
        USING ERRCODE = '0A000',
              HINT = format('Use DELETE FROM %s; it replicates to every node.', TG_ARGV[0]);
END
$fn$;
