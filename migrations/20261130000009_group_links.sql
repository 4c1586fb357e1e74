-- Groups joined by forwarding. Two groups are two MessageBoxes. A send
-- port of the source group with address mbx://LINK/RECEIVE_PORT publishes into the target
-- group named by its link; the target sees the message as received on RECEIVE_PORT.
--
-- Source side: the links. `database_url` is a secret reference (env:NAME, file:PATH) or a
-- URL without a password; the host that forwards resolves it.
CREATE TABLE group_links (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name              text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_][A-Za-z0-9_.-]*$'),
    database_url      text NOT NULL,
    target_group_id   uuid NOT NULL,
    target_group_name text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- Target side: what was forwarded in. The key (source group, send port, source message)
-- deduplicates a resend after a crash between this commit and the source's completion.
-- A row is published into this MessageBox by one host instance at a time (in id order,
-- so an ordered forwarding port's messages are published in the order they came); then
-- its body and context are dropped but the row stays as the receipt until the source,
-- having recorded its completion, forgets it (`forgotten_at`): no time window turns a
-- late resend into a duplicate. A forgotten receipt is kept one more dedup window (24 h)
-- against a stale sender (one whose claim was reclaimed while it was paused), then
-- purged by maintenance.
CREATE TABLE forward_inbox (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_group      uuid NOT NULL,
    source_group_name text NOT NULL,
    send_port         text NOT NULL,
    source_message_id uuid NOT NULL,
    message_id        uuid NOT NULL,
    receive_port      text NOT NULL,
    content_type      text,
    context           jsonb,
    body              bytea,
    -- a body above 1 MiB comes in forward_chunks, one chunk per call, in the accept's
    -- transaction; the inbox publish moves them to message_chunks
    body_size         bigint NOT NULL DEFAULT 0,
    chunked           boolean NOT NULL DEFAULT false,
    published         boolean NOT NULL DEFAULT false,
    received_at       timestamptz NOT NULL DEFAULT now(),
    forgotten_at      timestamptz,
    UNIQUE (source_group, send_port, source_message_id),
    -- an id given here twice would make the publish fail for good
    UNIQUE (message_id)
);
CREATE INDEX forward_inbox_pending ON forward_inbox (id) WHERE NOT published;
CREATE INDEX forward_inbox_forgotten ON forward_inbox (forgotten_at) WHERE forgotten_at IS NOT NULL;

-- Chunks of forwarded bodies above 1 MiB, until the inbox publish moves them.
CREATE TABLE forward_chunks (
    source_group      uuid NOT NULL,
    send_port         text NOT NULL,
    source_message_id uuid NOT NULL,
    seq               integer NOT NULL,
    data              bytea NOT NULL,
    PRIMARY KEY (source_group, send_port, source_message_id, seq)
);

-- An ordered forwarding port's fencing epoch as this group last saw it (keyed by the
-- port's name and id in its group, so a port deleted and created again is a new stream): a former owner of
-- the source port (a lower epoch) is refused here, so its late batch cannot land behind
-- the new owner's. The row lock also makes one stream's batches commit one after another.
CREATE TABLE forward_streams (
    source_group uuid NOT NULL,
    send_port    text NOT NULL,
    epoch        bigint NOT NULL,
    PRIMARY KEY (source_group, send_port)
);

-- What a linking group may call here, and nothing else: these functions run as their
-- owner (the migrator), so the forwarder role needs EXECUTE on them only (mbx roles create).
CREATE FUNCTION mbx_forward_hello()
RETURNS TABLE (group_id uuid, group_name text, schema_version bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
    SELECT g.id, g.name, (SELECT max(version) FROM _sqlx_migrations WHERE success)
      FROM mbx_group g
$$;

CREATE FUNCTION mbx_forward_declarations()
RETURNS TABLE (name text, type text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
    SELECT p.name, p.type FROM properties p
$$;

-- One chunk of a large body, sent before the accept in the same transaction.
CREATE FUNCTION mbx_forward_chunk(p_source_group uuid, p_send_port text, p_source_message_id uuid,
                                  p_seq int, p_data bytea)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    INSERT INTO forward_chunks (source_group, send_port, source_message_id, seq, data)
    VALUES (p_source_group, p_send_port, p_source_message_id, p_seq, p_data)
    ON CONFLICT (source_group, send_port, source_message_id, seq) DO UPDATE SET data = excluded.data
$$;

-- Accepts a batch (and forgets the receipts `p_forget` of what the source completed
-- since): refuses with SQLSTATE MB001 when the receive port does not exist, MB002
-- when this group is throttled (too many forwarded messages wait to be published), MB003
-- when an ordered stream's epoch is older than one seen; otherwise inserts what is new and
-- returns, per message, its id here and whether it was already here.
CREATE FUNCTION mbx_forward_accept(
    p_source_group uuid, p_source_name text, p_send_port text, p_receive_port text,
    p_epoch bigint, p_stream text, p_source_ids uuid[], p_ids uuid[], p_content_types text[],
    p_contexts jsonb[], p_bodies bytea[], p_sizes bigint[], p_forget uuid[])
RETURNS TABLE (source_message_id uuid, message_id uuid, duplicate boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
#variable_conflict use_column
DECLARE
    seen bigint;
    waiting bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM receive_ports r WHERE r.name = p_receive_port) THEN
        RAISE EXCEPTION 'receive port ''%'' does not exist in group ''%''', p_receive_port,
            (SELECT g.name FROM mbx_group g) USING ERRCODE = 'MB001';
    END IF;
    IF p_epoch IS NOT NULL THEN
        INSERT INTO forward_streams AS s (source_group, send_port, epoch)
        VALUES (p_source_group, p_stream, p_epoch)
        ON CONFLICT (source_group, send_port) DO UPDATE SET epoch = greatest(s.epoch, excluded.epoch)
        RETURNING s.epoch INTO seen;
        IF seen > p_epoch THEN
            RAISE EXCEPTION 'send port ''%'' of group % forwarded at epoch % here already; epoch % is fenced off',
                p_send_port, p_source_group, seen, p_epoch USING ERRCODE = 'MB003';
        END IF;
    END IF;
    -- receipts of messages the source has completed since its last batch (published ones:
    -- a row not yet published here is a message, not a receipt)
    IF cardinality(p_forget) > 0 THEN
        UPDATE forward_inbox f SET forgotten_at = now()
         WHERE f.source_group = p_source_group AND f.send_port = p_send_port
           AND f.source_message_id = ANY (p_forget) AND f.forgotten_at IS NULL;
    END IF;
    -- what this group will publish must be publishable: ids not taken here, and every
    -- chunked body's chunks all there
    IF EXISTS (SELECT 1 FROM messages m WHERE m.id = ANY (p_ids)) THEN
        RAISE EXCEPTION 'a message id given is taken in this group' USING ERRCODE = 'MB004';
    END IF;
    IF EXISTS (
        SELECT 1 FROM unnest(p_source_ids, p_bodies, p_sizes) AS t(s, b, sz)
         WHERE t.b IS NULL
           AND coalesce((SELECT sum(length(c.data)) FROM forward_chunks c
                          WHERE c.source_group = p_source_group AND c.send_port = p_send_port
                            AND c.source_message_id = t.s), 0) <> t.sz) THEN
        RAISE EXCEPTION 'a chunked body''s chunks do not add up to its size' USING ERRCODE = 'MB004';
    END IF;
    -- how many wait, bounded from above in two index probes (the inbox is published in
    -- id order, so what follows its oldest waiting row is waiting too): no count per call
    SELECT coalesce((SELECT max(f.id) FROM forward_inbox f)
                    - (SELECT min(f.id) FROM forward_inbox f WHERE NOT f.published) + 1, 0)
      INTO waiting;
    IF waiting >= 20000 THEN
        RAISE EXCEPTION 'group ''%'' is throttled: % forwarded messages wait to be published',
            (SELECT g.name FROM mbx_group g), waiting USING ERRCODE = 'MB002';
    END IF;
    -- wakes this group's instances at commit (a forward batch is many messages: the
    -- serialised commit of a notifying transaction costs little here)
    PERFORM pg_notify('mbx_inbox', '');
    RETURN QUERY
    WITH ins AS (
        INSERT INTO forward_inbox (source_group, source_group_name, send_port, source_message_id,
                                   message_id, receive_port, content_type, context, body,
                                   body_size, chunked)
        SELECT p_source_group, p_source_name, p_send_port, t.s, t.m, p_receive_port, t.ct, t.ctx, t.b,
               t.sz, t.b IS NULL
          FROM unnest(p_source_ids, p_ids, p_content_types, p_contexts, p_bodies, p_sizes)
               AS t(s, m, ct, ctx, b, sz)
        ON CONFLICT (source_group, send_port, source_message_id) DO NOTHING
        RETURNING forward_inbox.source_message_id, forward_inbox.message_id),
    -- a resend's chunks are not needed once the first copy is published (its chunks were
    -- moved then); while it waits, the resent chunks are its own, the same bytes
    unneeded AS (
        DELETE FROM forward_chunks c
         WHERE c.source_group = p_source_group AND c.send_port = p_send_port
           AND c.source_message_id = ANY (p_source_ids)
           AND NOT EXISTS (SELECT 1 FROM ins WHERE ins.source_message_id = c.source_message_id)
           AND EXISTS (SELECT 1 FROM forward_inbox f
                        WHERE f.source_group = p_source_group AND f.send_port = p_send_port
                          AND f.source_message_id = c.source_message_id AND f.published)
        RETURNING 1)
    SELECT i.source_message_id, i.message_id, false FROM ins i
    UNION ALL
    SELECT f.source_message_id, f.message_id, true FROM forward_inbox f
     WHERE f.source_group = p_source_group AND f.send_port = p_send_port
       AND f.source_message_id = ANY (p_source_ids);
END
$$;

-- The receipts of messages published here and not forgotten, after `p_after` (id order),
-- for the source to check which of them it has completed.
CREATE FUNCTION mbx_forward_receipts(p_source_group uuid, p_send_port text, p_after bigint, p_limit int)
RETURNS TABLE (id bigint, source_message_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
    SELECT f.id, f.source_message_id FROM forward_inbox f
     WHERE f.source_group = p_source_group AND f.send_port = p_send_port AND f.published
       AND f.forgotten_at IS NULL AND f.id > p_after
     ORDER BY f.id LIMIT p_limit
$$;

-- Forgets receipts whose completion the source recorded: marks them (a row not yet
-- published is still published; maintenance purges forgotten receipts a dedup window
-- later).
CREATE FUNCTION mbx_forward_forget(p_source_group uuid, p_send_port text, p_source_ids uuid[])
RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    WITH gone AS (
        UPDATE forward_inbox f SET forgotten_at = now()
         WHERE f.source_group = p_source_group AND f.send_port = p_send_port
           AND f.source_message_id = ANY (p_source_ids) AND f.forgotten_at IS NULL
        RETURNING 1)
    SELECT count(*) FROM gone
$$;

REVOKE EXECUTE ON FUNCTION mbx_forward_hello(), mbx_forward_declarations(),
    mbx_forward_accept(uuid, text, text, text, bigint, text, uuid[], uuid[], text[], jsonb[], bytea[], bigint[], uuid[]),
    mbx_forward_chunk(uuid, text, uuid, int, bytea),
    mbx_forward_receipts(uuid, text, bigint, int),
    mbx_forward_forget(uuid, text, uuid[]) FROM PUBLIC;

-- Links are configuration: hosts pick up a change at once.
CREATE TRIGGER group_links_notify AFTER INSERT OR UPDATE OR DELETE ON group_links
    FOR EACH STATEMENT EXECUTE FUNCTION mbx_notify_config();
