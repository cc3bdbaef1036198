-- TRUNCATE of a partly strong table (a weak table with strong columns) ran on the leader only:
-- no capture covers it (the strong capture takes row changes of its strong columns, the weak one
-- row changes of the rest). It is refused, as for a weak table, with DELETE as what to do.
-- (Dropping a trigger that is not there says so in a NOTICE, which is no client's business.)

CREATE FUNCTION pgmix.refuse_partly_strong_truncate() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of % would not replicate: its weak columns replicate only by row changes', TG_ARGV[0]
        USING ERRCODE = '0A000',
              HINT = format('Use DELETE FROM %s; it replicates to every node.', TG_ARGV[0]);
END
$fn$;

CREATE OR REPLACE FUNCTION pgmix.install_strong(t regclass, cols text[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgmix SET client_min_messages = warning AS $$
DECLARE
    tname text := pgmix.qualified(t);
    v_keys text[];
BEGIN
    SELECT coalesce(array_agg(a.attname::text ORDER BY k.ord), '{}') INTO v_keys
        FROM pg_index i, unnest(i.indkey) WITH ORDINALITY k(attnum, ord), pg_attribute a
        WHERE i.indrelid = t AND i.indisprimary AND a.attrelid = t AND a.attnum = k.attnum;
    IF EXISTS (SELECT 1 FROM pgmix.strong_tables s WHERE s.tbl = tname AND s.keys = v_keys AND s.cols = install_strong.cols)
       AND EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = t AND tgname = 'pgmix_strong')
       AND (cardinality(cols) = 0 OR EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = t AND tgname = 'pgmix_strong_no_truncate')) THEN
        RETURN;
    END IF;
    EXECUTE format('CREATE OR REPLACE TRIGGER pgmix_strong AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION pgmix.capture_strong(%L, %L, %L)',
                   tname, tname, v_keys::text, cols::text);
    IF cardinality(cols) = 0 THEN
        EXECUTE format('DROP TRIGGER IF EXISTS pgmix_strong_no_truncate ON %s', tname);
        EXECUTE format('CREATE OR REPLACE TRIGGER pgmix_strong_truncate AFTER TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION pgmix.capture_strong_truncate(%L)', tname, tname);
    ELSE
        EXECUTE format('DROP TRIGGER IF EXISTS pgmix_strong_truncate ON %s', tname);
        EXECUTE format('CREATE OR REPLACE TRIGGER pgmix_strong_no_truncate BEFORE TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION pgmix.refuse_partly_strong_truncate(%L)', tname, tname);
    END IF;
    INSERT INTO pgmix.strong_tables VALUES (tname, v_keys, install_strong.cols)
        ON CONFLICT (tbl) DO UPDATE SET keys = excluded.keys, cols = excluded.cols;
END
$$;

CREATE OR REPLACE FUNCTION pgmix.remove_strong(t regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgmix SET client_min_messages = warning AS $$
BEGIN
    IF t IS NULL THEN
        RETURN;
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS pgmix_strong ON %s', pgmix.qualified(t));
    EXECUTE format('DROP TRIGGER IF EXISTS pgmix_strong_truncate ON %s', pgmix.qualified(t));
    EXECUTE format('DROP TRIGGER IF EXISTS pgmix_strong_no_truncate ON %s', pgmix.qualified(t));
    DELETE FROM pgmix.strong_tables WHERE tbl = pgmix.qualified(t);
END
$$;

-- Partly strong tables captured before this version get the refusal now.
SELECT pgmix.install_strong(to_regclass(s.tbl), s.cols) FROM pgmix.strong_tables s
    WHERE cardinality(s.cols) > 0 AND to_regclass(s.tbl) IS NOT NULL;
