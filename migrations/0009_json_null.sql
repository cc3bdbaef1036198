-- A json or jsonb column can hold JSON null, which is not SQL NULL. to_jsonb of a row makes both
-- `null`, and jsonb_populate_record makes both SQL NULL: a JSON null written on the leader was SQL
-- NULL on every other node, and in a NOT NULL column the entry could not be applied there at all
-- (SQLAlchemy's JSON tests found it). A row's JSON on the strong path (captured effects and
-- snapshot rows) now lists its columns that hold JSON null under the key "" (no column has an
-- empty name), and applying puts JSON null back in them.

-- The row as JSON, with the "" key when a json or jsonb column holds JSON null. Rows without a
-- null value anywhere, most of them, cost one jsonpath test.
CREATE FUNCTION pgmix.row_json(r anyelement, rel regclass) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pgmix AS $$
DECLARE
    j jsonb := to_jsonb(r);
    c text;
    present boolean;
    nulls text[] := '{}';
BEGIN
    IF NOT j @? '$.* ? (@ == null)' THEN
        RETURN j;
    END IF;
    FOR c IN SELECT a.attname FROM pg_attribute a
             WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
               AND a.atttypid IN ('json'::regtype, 'jsonb'::regtype) AND j -> a.attname::text = 'null'::jsonb LOOP
        EXECUTE format('SELECT ($1).%I IS NOT NULL', c) INTO present USING r;
        IF present THEN
            nulls := nulls || c;
        END IF;
    END LOOP;
    IF cardinality(nulls) = 0 THEN
        RETURN j;
    END IF;
    RETURN j || jsonb_build_object('', to_jsonb(nulls));
END
$$;

-- The values to write for the columns of `t` (those of `only_cols` when it is given) from a
-- row's JSON `j` (an SQL expression) populated as `r`: JSON null where the row says so.
CREATE FUNCTION pgmix.strong_vals(t regclass, only_cols jsonb, j text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pgmix AS $$
    SELECT string_agg(CASE WHEN atttypid IN ('json'::regtype, 'jsonb'::regtype)
                           THEN format('CASE WHEN (%s -> %L) ? %L THEN %L ELSE r.%I END', j, '', attname, 'null', attname)
                           ELSE 'r.' || quote_ident(attname) END, ', ' ORDER BY attnum)
    FROM pg_attribute
    WHERE attrelid = t AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
      AND (only_cols IS NULL OR only_cols ? attname)
$$;

CREATE OR REPLACE FUNCTION pgmix.apply_inserts(tname text, rows jsonb[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pgmix AS $$
DECLARE
    t regclass := tname::regclass;
BEGIN
    EXECUTE format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM unnest($1) j, jsonb_populate_record(NULL::%s, j) r',
                   tname, pgmix.strong_cols(t, NULL, ''), pgmix.strong_vals(t, NULL, 'j'), tname)
        USING rows;
END
$$;

CREATE OR REPLACE FUNCTION pgmix.capture_strong() RETURNS trigger
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
        INSERT INTO pgmix.strong_effects (op, tbl, new) VALUES ('I', tbl, pgmix.row_json(NEW, TG_RELID));
        RETURN NULL;
    END IF;
    o := to_jsonb(OLD);
    IF TG_OP = 'DELETE' THEN
        PERFORM pgmix.strong_guard(tbl);
        INSERT INTO pgmix.strong_effects (op, tbl, old, keyed)
            VALUES ('D', tbl, CASE WHEN keyed THEN pgmix.pick(o, keys) ELSE o END, keyed);
        RETURN NULL;
    END IF;
    n := pgmix.row_json(NEW, TG_RELID);
    IF cardinality(cols) > 0 THEN
        -- A weak write of a partly strong table: nothing strong changed.
        IF pgmix.pick(o, cols) IS NOT DISTINCT FROM pgmix.pick(n, cols) THEN
            RETURN NULL;
        END IF;
        n := pgmix.pick(n, keys || cols || ''::text);
    END IF;
    PERFORM pgmix.strong_guard(tbl);
    INSERT INTO pgmix.strong_effects (op, tbl, old, keyed, new)
        VALUES ('U', tbl, CASE WHEN keyed THEN pgmix.pick(o, keys) ELSE o END, keyed, n);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION pgmix.apply_strong(x jsonb) RETURNS void
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
                           e->>'tbl', pgmix.strong_cols(t, e->'new', ''), pgmix.strong_vals(t, e->'new', '$1'),
                           e->>'tbl', pgmix.strong_where(t, e))
                USING e->'new', e->'old';
        WHEN 'D' THEN
            t := (e->>'tbl')::regclass;
            EXECUTE format('DELETE FROM %s WHERE %s', e->>'tbl', pgmix.strong_where(t, e)) USING NULL::jsonb, e->'old';
        WHEN 'S' THEN
            SET LOCAL session_replication_role = origin;
            PERFORM pgmix.run_ddl(e->>'who', e->>'sql', e->>'path');
            SET LOCAL session_replication_role = replica;
        WHEN 'R' THEN
            PERFORM pgmix.apply_roles(e->'new');
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
