-- DDL on a session's temporary objects stays in that session. Inside a strong transaction it
-- was recorded like any DDL, so every other node ran it in its apply session, where the
-- temporary table outlived the entry: the next entry's CREATE TEMP TABLE of that name failed
-- there, and the table shadowed the real one of its name for the entries after it.
--
-- A command whose objects are all temporary is not recorded. CREATE and ALTER name their objects
-- at ddl_command_end (schema `pg_temp`); DROP names them only at sql_drop, which comes first and
-- leaves its verdict in a transaction-local setting for ddl_command_end to read.

CREATE FUNCTION pgmix.note_dropped() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgmix AS $$
DECLARE
    temporary boolean;
BEGIN
    -- A rule or trigger has no schema of its own: it is temporary when its relation is.
    SELECT bool_and(o.is_temporary OR (o.schema_name IS NULL AND o.object_identity LIKE '% on pg_temp.%'))
        INTO temporary FROM pg_event_trigger_dropped_objects() o;
    PERFORM set_config('pgmix.dropped_temporary', CASE WHEN temporary THEN 'on' ELSE '' END, true);
END
$$;
CREATE EVENT TRIGGER pgmix_0_note_dropped ON sql_drop EXECUTE FUNCTION pgmix.note_dropped();

CREATE OR REPLACE FUNCTION pgmix.record_ddl() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    path text := pg_catalog.current_setting('search_path');
    q text;
    first text;
    commands bigint;
    temporary bigint;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pgmix', true);
    SELECT count(*), count(*) FILTER (WHERE c.schema_name = 'pg_temp') INTO commands, temporary
        FROM pg_event_trigger_ddl_commands() c;
    IF coalesce(current_setting('pgmix.strong', true), '') = 'on'
       AND NOT (commands > 0 AND commands = temporary)
       AND NOT (commands = 0 AND coalesce(current_setting('pgmix.dropped_temporary', true), '') = 'on') THEN
        q := current_query();
        first := pgmix.first_word(q);
        IF first IS NULL OR first NOT IN ('create', 'alter', 'drop', 'comment', 'grant', 'revoke', 'security',
                                          'import', 'refresh', 'reindex', 'cluster') THEN
            RAISE EXCEPTION 'DDL inside a % statement (a DO block, a function, a procedure or a trigger) cannot be replicated exactly', coalesce(upper(first), 'non-DDL')
                USING ERRCODE = '0A000',
                      HINT = 'Run the DDL as a statement of its own: pgmix replays the DDL statement itself on the other nodes.';
        END IF;
        PERFORM pgmix.note_ddl(q, path, pgmix.statement_role());
    END IF;
    PERFORM pg_catalog.set_config('pgmix.dropped_temporary', '', true);
    PERFORM pg_catalog.set_config('search_path', path, true);
END
$$;
