-- A file a former holder published is not a duplicate. A FILE receive location records,
-- with each source id it publishes, which copy of the source it was: the claimed file's
-- device, inode and ctime (read after the claim's rename). A file found still claimed
-- after its claimant stopped (between its commit and its delete) is that very file if
-- source id and identity both match: the new holder finishes its delete instead of
-- receiving it again. A new file dropped with the same name, size and mtime has another
-- identity and is still dropped as a duplicate. Nullable, no default: adding it rewrites
-- nothing; sources of other adapters (and rows published before) have none.
ALTER TABLE received_sources ADD COLUMN source_identity text;
