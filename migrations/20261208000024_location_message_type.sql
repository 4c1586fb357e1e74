-- The message type a receive location stamps on what it receives (`--message-type`):
-- a JSON or passthru body has no root name to take `mbx.MessageType` from, and an
-- orchestration's event filter (`with.type`) and a send port's filter select by it.
-- NULL: none (the xml pipeline sets it from the root element).
ALTER TABLE receive_locations ADD COLUMN message_type text CHECK (message_type <> '');
