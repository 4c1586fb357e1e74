-- Receipts are found by the source message id first. The unique key of migration 9 led
-- with (source_group, send_port): a function's cached generic plan used only that prefix
-- and filtered the message ids out of every receipt of the port — an accept, a forget and
-- the duplicate check each read the whole inbox of the port, tombstones included (24 h of
-- them), so forwarding slowed down as it went. With the message id leading, the only way
-- into the index is the ids asked for. `ON CONFLICT (source_group, send_port,
-- source_message_id)` infers the new index as its arbiter (the column order is free).
CREATE UNIQUE INDEX forward_inbox_receipt
    ON forward_inbox (source_message_id, source_group, send_port);
ALTER TABLE forward_inbox DROP CONSTRAINT forward_inbox_source_group_send_port_source_message_id_key;

-- The same accept, with the duplicates' answer and the resent chunks' clean-up only when
-- the batch held a duplicate (the inserted rows are known from the insert itself), so a
-- batch of new messages touches the inbox only through its insert.
CREATE OR REPLACE FUNCTION mbx_forward_accept(
    p_source_group uuid, p_source_name text, p_send_port text, p_receive_port text,
    p_epoch bigint, p_stream text, p_source_ids uuid[], p_ids uuid[], p_content_types text[],
    p_contexts jsonb[], p_bodies bytea[], p_sizes bigint[], p_forget uuid[])
RETURNS TABLE (source_message_id uuid, message_id uuid, duplicate boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
#variable_conflict use_column
DECLARE
    seen bigint;
    waiting bigint;
    new_sources uuid[];
    new_ids uuid[];
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
         WHERE f.source_message_id = ANY (p_forget)
           AND f.source_group = p_source_group AND f.send_port = p_send_port
           AND f.forgotten_at IS NULL;
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
    WITH ins AS (
        INSERT INTO forward_inbox (source_group, source_group_name, send_port, source_message_id,
                                   message_id, receive_port, content_type, context, body,
                                   body_size, chunked)
        SELECT p_source_group, p_source_name, p_send_port, t.s, t.m, p_receive_port, t.ct, t.ctx, t.b,
               t.sz, t.b IS NULL
          FROM unnest(p_source_ids, p_ids, p_content_types, p_contexts, p_bodies, p_sizes)
               AS t(s, m, ct, ctx, b, sz)
        ON CONFLICT (source_group, send_port, source_message_id) DO NOTHING
        RETURNING forward_inbox.source_message_id, forward_inbox.message_id)
    SELECT coalesce(array_agg(ins.source_message_id), '{}'), coalesce(array_agg(ins.message_id), '{}')
      INTO new_sources, new_ids FROM ins;
    RETURN QUERY SELECT n.s, n.m, false FROM unnest(new_sources, new_ids) AS n(s, m);
    IF cardinality(new_sources) < cardinality(p_source_ids) THEN
        -- duplicates: answered with the id given the first time
        RETURN QUERY
        SELECT f.source_message_id, f.message_id, true FROM forward_inbox f
         WHERE f.source_message_id = ANY (p_source_ids)
           AND f.source_group = p_source_group AND f.send_port = p_send_port
           AND NOT (f.source_message_id = ANY (new_sources));
        -- a resend's chunks are not needed once the first copy is published (its chunks
        -- were moved then); while it waits, the resent chunks are its own, the same bytes
        DELETE FROM forward_chunks c
         WHERE c.source_group = p_source_group AND c.send_port = p_send_port
           AND c.source_message_id = ANY (p_source_ids)
           AND EXISTS (SELECT 1 FROM forward_inbox f
                        WHERE f.source_message_id = c.source_message_id
                          AND f.source_group = p_source_group AND f.send_port = p_send_port
                          AND f.published);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION mbx_forward_forget(p_source_group uuid, p_send_port text, p_source_ids uuid[])
RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    WITH gone AS (
        UPDATE forward_inbox f SET forgotten_at = now()
         WHERE f.source_message_id = ANY (p_source_ids)
           AND f.source_group = p_source_group AND f.send_port = p_send_port
           AND f.forgotten_at IS NULL
        RETURNING 1)
    SELECT count(*) FROM gone
$$;
