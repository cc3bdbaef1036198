-- Any role can use the strong path, and no role can become more than it is.
--
-- Clients run as their own Postgres roles, which have no privileges in schema `pgmix`. What a
-- client session must run of pgmix's (the leader taking a transaction's effects at COMMIT, and
-- noting the roles a role statement changed) lives in schema `pgmix_session`, open to everyone,
-- as SECURITY DEFINER functions that do nothing without this database's secret, which only
-- pgmix's own connections can read (pgmix passes it as a bind parameter, so it is never in a
-- query text). Everything in `pgmix` is pgmix's alone.
--
-- DDL travels as the statement that ran, and only a statement that is DDL itself: DDL run from
-- inside a DO block, a function, a procedure or a trigger is refused (the statement that ran is
-- then not the DDL, and running it again elsewhere would run its other work twice). On the
-- other nodes the DDL runs inside a SECURITY DEFINER function owned by the role that ran it,
-- where neither SET ROLE nor SET SESSION AUTHORIZATION can be used: nothing it runs can become
-- pgmix's superuser.
--
-- Roles are shared objects, for which Postgres fires no event trigger: around a role statement
-- pgmix compares the roles before and after (`roles_state`) and logs what changed as an `R`
-- effect, with each role's password as the verifier Postgres stores, never as typed.

CREATE TABLE pgmix.secret (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    token text NOT NULL
);
INSERT INTO pgmix.secret (token) VALUES (gen_random_uuid()::text || gen_random_uuid()::text);

CREATE SCHEMA pgmix_session;
GRANT USAGE ON SCHEMA pgmix_session TO PUBLIC;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA pgmix FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA pgmix REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

CREATE FUNCTION pgmix.check_secret(token text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pgmix AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgmix.secret s WHERE s.token = check_secret.token) THEN
        RAISE EXCEPTION 'only pgmix itself may call this function' USING ERRCODE = '42501';
    END IF;
END
$$;

CREATE FUNCTION pgmix_session.take_effects(max_bytes bigint, token text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgmix AS $$
BEGIN
    PERFORM pgmix.check_secret(token);
    RETURN pgmix.take_effects(max_bytes);
END
$$;

-- The role that runs a top-level statement: its SET ROLE, else its session user. (Inside this
-- SECURITY DEFINER trigger function current_user is pgmix's; the settings are the caller's.)
CREATE FUNCTION pgmix.statement_role() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pgmix AS $$
    SELECT CASE WHEN current_setting('role') = 'none' THEN session_user::text ELSE current_setting('role') END
$$;

-- The first word of a statement text, lower case, past whitespace and comments.
CREATE FUNCTION pgmix.first_word(q text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pgmix AS $$
    SELECT lower(substring(regexp_replace(q, '^(\s+|--[^\n]*(\n|$)|/\*([^*]|\*[^/])*\*/)*', '') from '^[A-Za-z]+'))
$$;

-- No SET clause: the caller's search_path is read before anything resolves a name, and is what
-- the other nodes run the DDL with; then the function's own path is set, and the caller's put
-- back at the end.
CREATE OR REPLACE FUNCTION pgmix.record_ddl() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    path text := pg_catalog.current_setting('search_path');
    q text;
    first text;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pgmix', true);
    IF coalesce(current_setting('pgmix.strong', true), '') = 'on' THEN
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
    PERFORM pg_catalog.set_config('search_path', path, true);
END
$$;

-- Runs DDL from the log as the role that ran it, with its search_path: inside a function owned
-- by that role and SECURITY DEFINER, where no SET ROLE or SET SESSION AUTHORIZATION can undo it.
-- The function is dropped again, so no role owns anything of pgmix's.
CREATE FUNCTION pgmix.run_ddl(who text, sql text, path text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pgmix AS $$
DECLARE
    fn text := 'ddl_as_' || md5(who || clock_timestamp()::text);
BEGIN
    EXECUTE format('CREATE FUNCTION pgmix.%I(sql text, path text) RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS '
                   '$f$ BEGIN PERFORM pg_catalog.set_config(''search_path'', path, true); EXECUTE sql; END $f$', fn);
    EXECUTE format('ALTER FUNCTION pgmix.%I(text, text) OWNER TO %I', fn, who);
    EXECUTE format('SELECT pgmix.%I($1, $2)', fn) USING sql, path;
    EXECUTE format('DROP FUNCTION pgmix.%I(text, text)', fn);
END
$$;

-- Settings whose value is a list: ALTER ROLE ... SET takes them unquoted.
CREATE FUNCTION pgmix.is_list_setting(name text) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pgmix AS $$
    SELECT lower(name) IN ('search_path', 'temp_tablespaces', 'datestyle', 'session_preload_libraries',
                           'local_preload_libraries', 'log_destination')
$$;

-- The roles pgmix replicates (not the bootstrap superuser or the predefined ones), by oid, with
-- their attributes, their password verifier, their memberships and their settings.
CREATE FUNCTION pgmix.roles_state() RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pgmix AS $$
    SELECT coalesce(jsonb_object_agg(a.oid::text, jsonb_build_object(
        'name', a.rolname, 'super', a.rolsuper, 'inherit', a.rolinherit, 'createrole', a.rolcreaterole,
        'createdb', a.rolcreatedb, 'login', a.rolcanlogin, 'replication', a.rolreplication,
        'bypassrls', a.rolbypassrls, 'connlimit', a.rolconnlimit, 'password', a.rolpassword,
        'valid_until', a.rolvaliduntil::text,
        'member_of', (SELECT coalesce(jsonb_agg(jsonb_build_array(g.rolname, m.admin_option) ORDER BY g.rolname), '[]')
                      FROM pg_auth_members m JOIN pg_authid g ON g.oid = m.roleid WHERE m.member = a.oid),
        'settings', (SELECT coalesce(jsonb_agg(jsonb_build_array(d.datname, s.setconfig) ORDER BY d.datname NULLS FIRST), '[]')
                     FROM pg_db_role_setting s LEFT JOIN pg_database d ON d.oid = s.setdatabase
                     WHERE s.setrole = a.oid))), '{}')
    FROM pg_authid a
    WHERE a.oid >= 16384
$$;

CREATE FUNCTION pgmix_session.roles_state(token text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgmix AS $$
BEGIN
    PERFORM pgmix.check_secret(token);
    RETURN pgmix.roles_state();
END
$$;

-- After a role statement: what changed since `before` (roles_state then), as an R effect of the
-- transaction: the roles dropped and renamed (by name), and the whole state of every role
-- created or changed.
CREATE FUNCTION pgmix_session.note_roles(before jsonb, token text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgmix AS $$
DECLARE
    after jsonb;
    dropped jsonb;
    renamed jsonb;
    changed jsonb;
BEGIN
    PERFORM pgmix.check_secret(token);
    after := pgmix.roles_state();
    SELECT coalesce(jsonb_agg(b.value->'name'), '[]') INTO dropped
        FROM jsonb_each(before) b WHERE NOT after ? b.key;
    SELECT coalesce(jsonb_agg(jsonb_build_array(b.value->'name', after->b.key->'name')), '[]') INTO renamed
        FROM jsonb_each(before) b WHERE after ? b.key AND after->b.key->'name' <> b.value->'name';
    SELECT coalesce(jsonb_agg(a.value), '[]') INTO changed
        FROM jsonb_each(after) a WHERE before->a.key IS DISTINCT FROM a.value;
    IF dropped = '[]' AND renamed = '[]' AND changed = '[]' THEN
        RETURN;
    END IF;
    INSERT INTO pgmix.strong_effects (op, new)
        VALUES ('R', jsonb_build_object('dropped', dropped, 'renamed', renamed, 'roles', changed));
END
$$;

-- After a statement about other cluster-wide objects (ALTER DATABASE, COMMENT ON ROLE or
-- DATABASE, REASSIGN OWNED): the statement itself, replayed like DDL.
CREATE FUNCTION pgmix_session.note_statement(sql text, path text, token text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgmix AS $$
BEGIN
    PERFORM pgmix.check_secret(token);
    INSERT INTO pgmix.strong_effects (op, sql, path, who) VALUES ('S', sql, path, pgmix.statement_role());
END
$$;

-- Makes the roles here what an R effect says (`whole`: a snapshot's complete state, which drops
-- nothing).
CREATE FUNCTION pgmix.apply_roles(x jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pgmix AS $$
DECLARE
    r jsonb;
    n jsonb;
    m jsonb;
    s jsonb;
    kv text;
    k text;
    v text;
BEGIN
    FOR n IN SELECT value FROM jsonb_array_elements(coalesce(x->'renamed', '[]')) LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = n->>0) THEN
            EXECUTE format('ALTER ROLE %I RENAME TO %I', n->>0, n->>1);
        END IF;
    END LOOP;
    FOR n IN SELECT value FROM jsonb_array_elements(coalesce(x->'dropped', '[]')) LOOP
        EXECUTE format('DROP ROLE IF EXISTS %I', n#>>'{}');
    END LOOP;
    FOR r IN SELECT value FROM jsonb_array_elements(coalesce(x->'roles', '[]')) LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r->>'name') THEN
            EXECUTE format('CREATE ROLE %I', r->>'name');
        END IF;
        EXECUTE format('ALTER ROLE %I WITH %s %s %s %s %s %s %s CONNECTION LIMIT %s PASSWORD %s VALID UNTIL %L',
            r->>'name',
            CASE WHEN (r->>'super')::boolean THEN 'SUPERUSER' ELSE 'NOSUPERUSER' END,
            CASE WHEN (r->>'inherit')::boolean THEN 'INHERIT' ELSE 'NOINHERIT' END,
            CASE WHEN (r->>'createrole')::boolean THEN 'CREATEROLE' ELSE 'NOCREATEROLE' END,
            CASE WHEN (r->>'createdb')::boolean THEN 'CREATEDB' ELSE 'NOCREATEDB' END,
            CASE WHEN (r->>'login')::boolean THEN 'LOGIN' ELSE 'NOLOGIN' END,
            CASE WHEN (r->>'replication')::boolean THEN 'REPLICATION' ELSE 'NOREPLICATION' END,
            CASE WHEN (r->>'bypassrls')::boolean THEN 'BYPASSRLS' ELSE 'NOBYPASSRLS' END,
            (r->>'connlimit')::int,
            coalesce(quote_literal(r->>'password'), 'NULL'),
            coalesce(r->>'valid_until', 'infinity'));
    END LOOP;
    -- Memberships and settings once every role of the effect exists.
    FOR r IN SELECT value FROM jsonb_array_elements(coalesce(x->'roles', '[]')) LOOP
        FOR k IN SELECT g.rolname FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid
                 JOIN pg_roles u ON u.oid = am.member WHERE u.rolname = r->>'name' LOOP
            IF NOT EXISTS (SELECT 1 FROM jsonb_array_elements(r->'member_of') e WHERE e.value->>0 = k) THEN
                EXECUTE format('REVOKE %I FROM %I', k, r->>'name');
            END IF;
        END LOOP;
        FOR m IN SELECT value FROM jsonb_array_elements(coalesce(r->'member_of', '[]')) LOOP
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = m->>0) THEN
                EXECUTE format('GRANT %I TO %I %s', m->>0, r->>'name',
                               CASE WHEN (m->>1)::boolean THEN 'WITH ADMIN OPTION' ELSE '' END);
            END IF;
        END LOOP;
        EXECUTE format('ALTER ROLE %I RESET ALL', r->>'name');
        FOR k IN SELECT d.datname FROM pg_db_role_setting st JOIN pg_database d ON d.oid = st.setdatabase
                 JOIN pg_roles u ON u.oid = st.setrole WHERE u.rolname = r->>'name' LOOP
            EXECUTE format('ALTER ROLE %I IN DATABASE %I RESET ALL', r->>'name', k);
        END LOOP;
        FOR s IN SELECT value FROM jsonb_array_elements(coalesce(r->'settings', '[]')) LOOP
            IF s->>0 IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = s->>0) THEN
                CONTINUE;
            END IF;
            FOR kv IN SELECT jsonb_array_elements_text(s->1) LOOP
                k := split_part(kv, '=', 1);
                v := substr(kv, length(k) + 2);
                EXECUTE format('ALTER ROLE %I %s SET %I = %s', r->>'name',
                               CASE WHEN s->>0 IS NULL THEN '' ELSE format('IN DATABASE %I', s->>0) END, k,
                               CASE WHEN pgmix.is_list_setting(k) AND v ~ '^[A-Za-z0-9_$", .-]*$' THEN v
                                    ELSE quote_literal(v) END);
            END LOOP;
        END LOOP;
    END LOOP;
END
$$;

-- Applies one entry's effects on a node that did not run the transaction (see 0004): DDL as the
-- role that ran it (`run_ddl`), and role changes (`apply_roles`).
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
                           e->>'tbl', pgmix.strong_cols(t, e->'new', ''), pgmix.strong_cols(t, e->'new', 'r.'),
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

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA pgmix FROM PUBLIC;

-- Committed entries this node could not apply (a statement that fails here only): the node went
-- on with the log, so the others keep their majority, and serves no strong read from its own
-- Postgres until it has been repaired from a snapshot (see `consensus::apply`). Kept in the
-- node's own database.
CREATE TABLE pgmix.unapplied (
    idx bigint PRIMARY KEY,
    database text NOT NULL,
    what text NOT NULL,
    sqlstate text NOT NULL,
    message text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);

-- The leader holds a strong transaction open (not prepared) until its entry commits, then
-- commits it in its own session with the database's applied marker moved to the entry, so the
-- entry is applied here exactly once (see `consensus::apply::Held`). Its DDL is journaled (for
-- snapshots), and its staged chunks, if any, dropped.
CREATE FUNCTION pgmix_session.committed(i bigint, g text, ddl jsonb, token text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgmix AS $$
BEGIN
    PERFORM pgmix.check_secret(token);
    UPDATE pgmix.strong_applied SET idx = i WHERE idx < i;
    IF ddl IS NOT NULL THEN
        PERFORM pgmix.journal_ddl(i, ddl);
    END IF;
    PERFORM pgmix.journal_staged(g);
END
$$;

-- pgmix forces deferred constraints before it takes a transaction's effects (a constraint that
-- fails at COMMIT, after the entry is on the log, would commit everywhere but here); its own
-- check is passed over then, in its own COMMIT, which it marks with the database's secret.
CREATE OR REPLACE FUNCTION pgmix.strong_untaken() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgmix AS $$
BEGIN
    IF current_setting('pgmix.committing', true) = (SELECT token FROM pgmix.secret) THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM pgmix.strong_effects WHERE seq = NEW.seq) THEN
        RAISE EXCEPTION 'this transaction wrote strong data, which commits only through pgmix''s own COMMIT'
            USING ERRCODE = '0A000',
                  HINT = 'Send COMMIT as a statement of its own (not inside a multi-statement query).';
    END IF;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION pgmix.strong_untaken() FROM PUBLIC;
