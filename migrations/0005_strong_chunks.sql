-- Large strong transactions: their effects go on the log in chunks of about a set size, so no
-- node holds a whole large COPY in memory.
--
-- The leader takes the effects out in order, a chunk at a time (`take_effects(max_bytes)`), and
-- appends each chunk as an entry of its own before PREPARE TRANSACTION. Every node stages a chunk
-- here when it applies that entry, in the database the transaction ran in. The transaction's
-- Commit entry then applies the staged chunks in order and its own last effects, in one local
-- transaction, and removes them. A chunk whose Commit never comes (the leader failed first) is
-- removed once an entry of a later term is applied in the same database.

CREATE TABLE pgmix.strong_staged (
    gid text NOT NULL,
    -- The log index of the chunk's entry: chunks apply in this order.
    idx bigint NOT NULL,
    -- The term the gid names.
    term bigint NOT NULL,
    effects text NOT NULL,
    PRIMARY KEY (gid, idx)
);

DROP FUNCTION pgmix.take_effects();

-- The last values of the sequences owned by `tables` (taken and set forward with the effects,
-- so a new leader never reissues one).
CREATE FUNCTION pgmix.owned_sequences(tables text[]) RETURNS TABLE (name text, value bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pgmix AS $$
    SELECT s.seqrelid::regclass::text, pg_sequence_last_value(s.seqrelid)
    FROM pg_depend dep JOIN pg_sequence s ON s.seqrelid = dep.objid
    WHERE dep.classid = 'pg_class'::regclass AND dep.refclassid = 'pg_class'::regclass
      AND dep.deptype IN ('a', 'i')
      AND dep.refobjid IN (SELECT to_regclass(t) FROM unnest(tables) t)
      AND pg_sequence_last_value(s.seqrelid) IS NOT NULL
$$;

-- At commit: the transaction's next effects in order, about `max_bytes` of them, with the last
-- value of every sequence owned by a table they wrote (followers take sequence values from here:
-- a new leader never reissues one), and whether effects remain. NULL when nothing remains.
CREATE FUNCTION pgmix.take_effects(max_bytes bigint) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgmix AS $$
DECLARE
    effects jsonb;
    tables text[];
    seqs jsonb;
    cur bigint;
    sz bigint;
    total bigint := 0;
    last bigint;
    more boolean := false;
BEGIN
    -- Walks the primary key in order and stops at the size: cheap however many effects remain.
    FOR cur, sz IN SELECT e.seq, pg_column_size(e.*) FROM pgmix.strong_effects e ORDER BY e.seq LOOP
        total := total + sz;
        last := cur;
        IF total >= max_bytes THEN
            more := EXISTS (SELECT 1 FROM pgmix.strong_effects WHERE seq > cur);
            EXIT;
        END IF;
    END LOOP;
    IF last IS NULL THEN
        RETURN NULL;
    END IF;
    WITH d AS (DELETE FROM pgmix.strong_effects WHERE seq <= last RETURNING *)
    SELECT jsonb_agg(jsonb_build_object('op', op, 'tbl', tbl, 'old', old, 'keyed', keyed, 'new', new,
                                        'sql', sql, 'path', path, 'who', who) ORDER BY seq),
           array_agg(DISTINCT tbl) FILTER (WHERE tbl IS NOT NULL)
        INTO effects, tables FROM d;
    SELECT jsonb_object_agg(o.name, o.value) INTO seqs FROM pgmix.owned_sequences(tables) o;
    RETURN jsonb_build_object('effects', effects, 'sequences', coalesce(seqs, '{}'), 'more', more)::text;
END
$$;

-- Applies the chunks staged for `g`, in order; how many there were.
CREATE FUNCTION pgmix.apply_staged(g text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pgmix AS $$
DECLARE
    e text;
    n bigint := 0;
BEGIN
    FOR e IN SELECT effects FROM pgmix.strong_staged WHERE gid = g ORDER BY idx LOOP
        PERFORM pgmix.apply_strong(e::jsonb);
        n := n + 1;
    END LOOP;
    DELETE FROM pgmix.strong_staged WHERE gid = g;
    RETURN n;
END
$$;
