-- The strong path: what a strong transaction did, captured while it runs on the leader, so that
-- the leader can put it on the Raft log at commit and every other node can apply it.
--
-- A strong transaction's row changes, TRUNCATEs and DDL are written to `pgmix.strong_effects` in
-- the transaction itself; at commit pgmix takes them out again (`take_effects`, before PREPARE
-- TRANSACTION), so no row of this table ever commits and concurrent transactions never see each
-- other's. A savepoint rolled back takes its effects with it.
--
-- Strong tables are written only through pgmix: the capture refuses a write made outside a
-- strong transaction (one that has not set `pgmix.strong`), which would change one node only.

-- Raft entries now carry transactions' effects, megabytes for a large COPY: kept as the text
-- they are written and read as, not parsed into jsonb and printed back.
ALTER TABLE pgmix.raft_log ALTER COLUMN entry TYPE text USING entry::text;

CREATE TABLE pgmix.strong_effects (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- I(nsert), U(pdate), D(elete), T(runcate), S(QL: DDL as text)
    op "char" NOT NULL,
    tbl text,
    -- The row's key ({column: value}), or the whole row when `keyed` is false (no primary key).
    old jsonb,
    keyed boolean,
    -- The row after: all of it, or for a table with only some strong columns, the key and those.
    new jsonb,
    sql text,
    path text,
    who text
);

-- Which tables have strong capture, with what it was installed for (to skip reinstalling).
CREATE TABLE pgmix.strong_tables (
    tbl text PRIMARY KEY,
    keys text[] NOT NULL,
    cols text[] NOT NULL
);

-- How far this database has applied the log: the index of the last strong entry applied here,
-- committed in the same transaction as its effects, so no entry is applied twice.
CREATE TABLE pgmix.strong_applied (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    idx bigint NOT NULL DEFAULT 0
);
INSERT INTO pgmix.strong_applied DEFAULT VALUES;

-- Prepared transactions this node rolled back as in doubt, recorded before the rollback.
CREATE TABLE pgmix.strong_rolled_back (
    gid text PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION pgmix.strong_guard(tbl text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('pgmix.strong', true), '') <> 'on' THEN
        RAISE EXCEPTION 'table % holds strong data, which only a strong transaction through pgmix may write', tbl
            USING ERRCODE = '0A000',
                  HINT = 'Write it through a pgmix node: pgmix commits strong writes on every node at once.';
    END IF;
END
$$;

CREATE FUNCTION pgmix.capture_strong() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgmix AS $$
DECLARE
    tbl text := TG_ARGV[0];
    keys text[] := TG_ARGV[1]::text[];
    -- Empty: every column is strong. Else only these are (the rest replicate weakly).
    cols text[] := TG_ARGV[2]::text[];
    keyed boolean := cardinality(keys) > 0;
    o jsonb;
    n jsonb;
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pgmix.strong_guard(tbl);
        INSERT INTO pgmix.strong_effects (op, tbl, new) VALUES ('I', tbl, to_jsonb(NEW));
        RETURN NULL;
    END IF;
    o := to_jsonb(OLD);
    IF TG_OP = 'DELETE' THEN
        PERFORM pgmix.strong_guard(tbl);
        INSERT INTO pgmix.strong_effects (op, tbl, old, keyed)
            VALUES ('D', tbl, CASE WHEN keyed THEN pgmix.pick(o, keys) ELSE o END, keyed);
        RETURN NULL;
    END IF;
    n := to_jsonb(NEW);
    IF cardinality(cols) > 0 THEN
        -- A weak write of a partly strong table: nothing strong changed.
        IF pgmix.pick(o, cols) IS NOT DISTINCT FROM pgmix.pick(n, cols) THEN
            RETURN NULL;
        END IF;
        n := pgmix.pick(n, keys || cols);
    END IF;
    PERFORM pgmix.strong_guard(tbl);
    INSERT INTO pgmix.strong_effects (op, tbl, old, keyed, new)
        VALUES ('U', tbl, CASE WHEN keyed THEN pgmix.pick(o, keys) ELSE o END, keyed, n);
    RETURN NULL;
END
$$;

CREATE FUNCTION pgmix.capture_strong_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgmix AS $$
BEGIN
    PERFORM pgmix.strong_guard(TG_ARGV[0]);
    INSERT INTO pgmix.strong_effects (op, tbl) VALUES ('T', TG_ARGV[0]);
    RETURN NULL;
END
$$;

-- Installs strong capture on `t` (all columns when `cols` is empty), or brings it up to date
-- after its primary key changed; does nothing when it is already as wanted (CREATE TRIGGER locks
-- the table against writes).
CREATE FUNCTION pgmix.install_strong(t regclass, cols text[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgmix AS $$
DECLARE
    tname text := pgmix.qualified(t);
    v_keys text[];
BEGIN
    SELECT coalesce(array_agg(a.attname::text ORDER BY k.ord), '{}') INTO v_keys
        FROM pg_index i, unnest(i.indkey) WITH ORDINALITY k(attnum, ord), pg_attribute a
        WHERE i.indrelid = t AND i.indisprimary AND a.attrelid = t AND a.attnum = k.attnum;
    IF EXISTS (SELECT 1 FROM pgmix.strong_tables s WHERE s.tbl = tname AND s.keys = v_keys AND s.cols = install_strong.cols)
       AND EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = t AND tgname = 'pgmix_strong') THEN
        RETURN;
    END IF;
    EXECUTE format('CREATE OR REPLACE TRIGGER pgmix_strong AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION pgmix.capture_strong(%L, %L, %L)',
                   tname, tname, v_keys::text, cols::text);
    IF cardinality(cols) = 0 THEN
        EXECUTE format('CREATE OR REPLACE TRIGGER pgmix_strong_truncate AFTER TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION pgmix.capture_strong_truncate(%L)', tname, tname);
    END IF;
    INSERT INTO pgmix.strong_tables VALUES (tname, v_keys, install_strong.cols)
        ON CONFLICT (tbl) DO UPDATE SET keys = excluded.keys, cols = excluded.cols;
END
$$;

CREATE FUNCTION pgmix.remove_strong(t regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgmix AS $$
BEGIN
    IF t IS NULL THEN
        RETURN;
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS pgmix_strong ON %s', pgmix.qualified(t));
    EXECUTE format('DROP TRIGGER IF EXISTS pgmix_strong_truncate ON %s', pgmix.qualified(t));
    DELETE FROM pgmix.strong_tables WHERE tbl = pgmix.qualified(t);
END
$$;

-- Capture follows CREATE TABLE and ALTER TABLE for strong tables as for weak ones.
CREATE OR REPLACE FUNCTION pgmix.on_ddl() RETURNS event_trigger
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
        -- Strong capture only where pgmix runs a cluster (it writes the rules only there).
        IF rule.weak IS NOT NULL AND (NOT rule.weak OR cardinality(rule.strong) > 0) THEN
            PERFORM pgmix.install_strong(r.t, CASE WHEN rule.weak THEN rule.strong ELSE '{}' END);
        ELSIF rule.weak IS NOT NULL AND EXISTS (SELECT 1 FROM pgmix.strong_tables WHERE tbl = pgmix.qualified(r.t)) THEN
            PERFORM pgmix.remove_strong(r.t);
        END IF;
    END LOOP;
END
$$;

-- DDL in a strong transaction is recorded as text, in order with its row effects. One client
-- statement can run several DDL commands (and pgmix's own capture triggers are DDL too): all of
-- them come from the same query text, recorded once.
CREATE FUNCTION pgmix.note_ddl(q text, path text, who text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgmix AS $$
DECLARE
    last pgmix.strong_effects;
BEGIN
    SELECT * INTO last FROM pgmix.strong_effects ORDER BY seq DESC LIMIT 1;
    IF FOUND AND last.op = 'S' AND last.sql = q THEN
        RETURN;
    END IF;
    INSERT INTO pgmix.strong_effects (op, sql, path, who) VALUES ('S', q, path, who);
END
$$;

-- Not SECURITY DEFINER: current_user is the role that ran the DDL, which the other nodes run it as.
-- Event triggers fire in the order of their names: this one comes before pgmix_capture_ddl, whose
-- own CREATE TRIGGER statements (run as pgmix's owner) share the client's query text and are then
-- recognised as recorded.
CREATE FUNCTION pgmix.record_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('pgmix.strong', true), '') = 'on' THEN
        PERFORM pgmix.note_ddl(current_query(), current_setting('search_path'), current_user::text);
    END IF;
END
$$;
CREATE EVENT TRIGGER pgmix_0_record_ddl ON ddl_command_end EXECUTE FUNCTION pgmix.record_ddl();

-- At commit: the transaction's effects in order, and the last value of every sequence owned by
-- a table it wrote (followers take sequence values from here: a new leader never reissues one).
-- NULL when the transaction changed nothing strong.
CREATE FUNCTION pgmix.take_effects() RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgmix AS $$
DECLARE
    effects jsonb;
    tables text[];
    seqs jsonb;
BEGIN
    WITH d AS (DELETE FROM pgmix.strong_effects RETURNING *)
    SELECT jsonb_agg(jsonb_build_object('op', op, 'tbl', tbl, 'old', old, 'keyed', keyed, 'new', new,
                                        'sql', sql, 'path', path, 'who', who) ORDER BY seq),
           array_agg(DISTINCT tbl) FILTER (WHERE tbl IS NOT NULL)
        INTO effects, tables FROM d;
    IF effects IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT jsonb_object_agg(s.seqrelid::regclass::text, pg_sequence_last_value(s.seqrelid)) INTO seqs
        FROM pg_depend dep JOIN pg_sequence s ON s.seqrelid = dep.objid
        WHERE dep.classid = 'pg_class'::regclass AND dep.refclassid = 'pg_class'::regclass
          AND dep.deptype IN ('a', 'i')
          AND dep.refobjid IN (SELECT to_regclass(t) FROM unnest(tables) t)
          AND pg_sequence_last_value(s.seqrelid) IS NOT NULL;
    RETURN jsonb_build_object('effects', effects, 'sequences', coalesce(seqs, '{}'))::text;
END
$$;

-- Column lists of `t` for writing a row given as JSON: the real, non-generated columns, those
-- of `only` when it is given.
CREATE FUNCTION pgmix.strong_cols(t regclass, only_cols jsonb, prefix text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pgmix AS $$
    SELECT string_agg(prefix || quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute
    WHERE attrelid = t AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
      AND (only_cols IS NULL OR only_cols ? attname)
$$;

-- The rows of `t` an effect names: by key, or the first row equal to the whole old row.
CREATE FUNCTION pgmix.strong_where(t regclass, e jsonb) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pgmix AS $$
    SELECT CASE WHEN (e->>'keyed')::boolean
        THEN format('(%s) = (SELECT %s FROM jsonb_populate_record(NULL::%s, $2) r)',
                    pgmix.strong_cols(t, e->'old', ''), pgmix.strong_cols(t, e->'old', 'r.'), t)
        ELSE format('ctid = (SELECT x.ctid FROM %s x WHERE to_jsonb(x) = $2 LIMIT 1)', t)
    END
$$;

CREATE FUNCTION pgmix.apply_inserts(tname text, rows jsonb[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pgmix AS $$
DECLARE
    t regclass := tname::regclass;
BEGIN
    EXECUTE format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM unnest($1) j, jsonb_populate_record(NULL::%s, j) r',
                   tname, pgmix.strong_cols(t, NULL, ''), pgmix.strong_cols(t, NULL, 'r.'), tname)
        USING rows;
END
$$;

-- Applies one entry's effects (from take_effects) on a node that did not run the transaction.
-- Runs as session_replication_role = replica, so no capture fires for what is applied; DDL runs
-- as `origin` and as the role that ran it, so capture follows new and altered tables here too.
CREATE FUNCTION pgmix.apply_strong(x jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pgmix AS $$
DECLARE
    e jsonb;
    batch jsonb[] := '{}';
    batch_tbl text;
    truncs text[] := '{}';
    t regclass;
    k text;
    v bigint;
BEGIN
    FOR e IN SELECT value FROM jsonb_array_elements(coalesce(x->'effects', '[]')) LOOP
        -- Consecutive inserts into one table are one statement (a COPY is many).
        IF batch_tbl IS NOT NULL AND (e->>'op' <> 'I' OR e->>'tbl' <> batch_tbl) THEN
            PERFORM pgmix.apply_inserts(batch_tbl, batch);
            batch := '{}';
            batch_tbl := NULL;
        END IF;
        -- Consecutive TRUNCATEs are one statement (tables that reference each other).
        IF cardinality(truncs) > 0 AND e->>'op' <> 'T' THEN
            EXECUTE 'TRUNCATE ' || array_to_string(truncs, ', ');
            truncs := '{}';
        END IF;
        CASE e->>'op'
        WHEN 'I' THEN
            batch_tbl := e->>'tbl';
            batch := array_append(batch, e->'new');
        WHEN 'T' THEN
            truncs := array_append(truncs, e->>'tbl');
        WHEN 'U' THEN
            t := (e->>'tbl')::regclass;
            EXECUTE format('UPDATE %s SET (%s) = (SELECT %s FROM jsonb_populate_record(NULL::%s, $1) r) WHERE %s',
                           e->>'tbl', pgmix.strong_cols(t, e->'new', ''), pgmix.strong_cols(t, e->'new', 'r.'),
                           e->>'tbl', pgmix.strong_where(t, e))
                USING e->'new', e->'old';
        WHEN 'D' THEN
            t := (e->>'tbl')::regclass;
            EXECUTE format('DELETE FROM %s WHERE %s', e->>'tbl', pgmix.strong_where(t, e)) USING NULL::jsonb, e->'old';
        WHEN 'S' THEN
            SET LOCAL session_replication_role = origin;
            PERFORM set_config('search_path', e->>'path', true);
            EXECUTE format('SET LOCAL ROLE %I', e->>'who');
            EXECUTE e->>'sql';
            RESET ROLE;
            PERFORM set_config('search_path', 'pg_catalog, pgmix', true);
            SET LOCAL session_replication_role = replica;
        END CASE;
    END LOOP;
    IF batch_tbl IS NOT NULL THEN
        PERFORM pgmix.apply_inserts(batch_tbl, batch);
    END IF;
    IF cardinality(truncs) > 0 THEN
        EXECUTE 'TRUNCATE ' || array_to_string(truncs, ', ');
    END IF;
    FOR k, v IN SELECT key, value::bigint FROM jsonb_each_text(coalesce(x->'sequences', '{}')) LOOP
        IF to_regclass(k) IS NOT NULL AND coalesce(pg_sequence_last_value(k::regclass), v - 1) < v THEN
            PERFORM setval(k::regclass, v);
        END IF;
    END LOOP;
END
$$;

-- A transaction that wrote strong data must commit through pgmix (which takes its effects before
-- PREPARE TRANSACTION). Whatever else commits it (a COMMIT inside a multi-statement query, a
-- misclassified statement) fails here instead of changing this node alone.
CREATE FUNCTION pgmix.strong_untaken() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgmix AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pgmix.strong_effects WHERE seq = NEW.seq) THEN
        RAISE EXCEPTION 'this transaction wrote strong data, which commits only through pgmix''s own COMMIT'
            USING ERRCODE = '0A000',
                  HINT = 'Send COMMIT as a statement of its own (not inside a multi-statement query).';
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER strong_effects_taken AFTER INSERT ON pgmix.strong_effects
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pgmix.strong_untaken();
