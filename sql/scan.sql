-- Guild member scan in fake mode: pages of 1000, complete only after the
-- last page, reconcile after the scan; the shrink guard on scans.
\i sql/include/reset.sql
SELECT lhdiscord.map_role('hauling.member', '900000000000000131');
INSERT INTO lhdiscord.fake_members
  SELECT (200000000000000000 + g)::text, ARRAY['900000000000000131'] FROM generate_series(1, 2500) g;
INSERT INTO lhdiscord.users (user_id, username, membership_level) VALUES (1, 'alice', 'traveler'), (2, 'bob', 'traveler');
SELECT (lhdiscord.link_account(1, '200000000000000007', 'alice_d')).id IS NOT NULL AS linked;
SELECT lhdiscord.drain_outbox();
TRUNCATE lhdiscord.fake_calls;

SELECT lhdiscord.request_member_scan() AS scan \gset
SELECT complete, trusted, source, member_count FROM lhdiscord.member_snapshots WHERE id = :scan;
SELECT kind, state, payload->>'snapshot_id' = :'scan' AS for_snapshot FROM lhdiscord.outbox WHERE kind = 'member_scan';
SELECT lhdiscord.drain_outbox();
SELECT method, route FROM lhdiscord.fake_calls ORDER BY id;
SELECT complete, trusted, member_count, scan_after FROM lhdiscord.member_snapshots WHERE id = :scan;
SELECT state, attempts FROM lhdiscord.outbox WHERE kind = 'member_scan';
-- The scan was followed by a reconcile: bob (no account) was suspended.
SELECT user_id, status FROM lhdiscord.users ORDER BY 1;
SELECT subject_user_id, after_json->>'snapshot_id' = :'scan' AS evidence_is_scan
  FROM lhdiscord.audit_log WHERE action = 'entitlement.reconcile';

-- An emptied guild: the scan completes but is held back.
DELETE FROM lhdiscord.fake_members;
SELECT lhdiscord.request_member_scan() AS scan2 \gset
SELECT lhdiscord.drain_outbox();
SELECT complete, trusted, member_count FROM lhdiscord.member_snapshots WHERE id = :scan2;
SELECT snapshot_id = :scan AS still_uses_previous FROM lhdiscord.access_context();
SELECT user_id, status FROM lhdiscord.users ORDER BY 1;

-- No guild configured: a clear error, nothing queued.
SET lhdiscord.guild_id = '';
SELECT lhdiscord.request_member_scan();
RESET lhdiscord.guild_id;
SELECT count(*) AS scans FROM lhdiscord.outbox WHERE kind = 'member_scan';
