-- Governance modes and the role engine: portal-leading converges mapped
-- portal roles; discord-leading never writes them.
\i sql/include/reset.sql
\i sql/include/roles_setup.sql

INSERT INTO lhdiscord.users (user_id, username, membership_level) VALUES (1, 'alice', 'traveler');
INSERT INTO lhdiscord.user_roles VALUES (1, 'hauling.member');
SELECT (lhdiscord.link_account(1, '100000000000000001', 'alice_d')).id IS NOT NULL AS linked;
-- The member holds the entitlement role in Discord.
INSERT INTO lhdiscord.fake_members VALUES ('100000000000000001', '{900000000000000131}');

-- Discord-leading (default): hauling.member is evidence, not managed.
SELECT lhdiscord.desired_roles('100000000000000001');
SELECT lhdiscord.drain_outbox();
SELECT method, role FROM public.calls ORDER BY id;
DELETE FROM lhdiscord.user_roles WHERE role = 'hauling.member';
SELECT count(*) AS queued_in_discord_leading FROM lhdiscord.outbox WHERE state = 'pending';
-- The brig strips managed roles only: the entitlement role stays.
TRUNCATE lhdiscord.fake_calls;
UPDATE lhdiscord.users SET in_brig = true WHERE user_id = 1;
SELECT lhdiscord.drain_outbox();
SELECT method, role FROM public.calls ORDER BY id;
UPDATE lhdiscord.users SET in_brig = false WHERE user_id = 1;
SELECT lhdiscord.drain_outbox();

-- Portal-leading: mapped portal roles are managed and converge on change.
SET lhdiscord.governance_mode = 'portal_leading';
SELECT lhdiscord.desired_roles('100000000000000001');
TRUNCATE lhdiscord.fake_calls;
SELECT lhdiscord.sync_roles(1);
SELECT lhdiscord.drain_outbox();
SELECT method, role FROM public.calls ORDER BY id;
TRUNCATE lhdiscord.fake_calls;
INSERT INTO lhdiscord.user_roles VALUES (1, 'hauling.member');
-- An unmapped portal role queues nothing.
INSERT INTO lhdiscord.user_roles VALUES (1, 'forum.moderator');
SELECT count(*) AS pending FROM lhdiscord.outbox WHERE state = 'pending';
SELECT lhdiscord.drain_outbox();
SELECT method, role FROM public.calls ORDER BY id;
TRUNCATE lhdiscord.fake_calls;
DELETE FROM lhdiscord.user_roles WHERE role = 'hauling.member';
SELECT lhdiscord.drain_outbox();
SELECT method, role FROM public.calls ORDER BY id;
SELECT action, after_json FROM lhdiscord.audit_log
 WHERE after_json ? 'portal_role' ORDER BY id;

-- Rewriting a mapped role's row without changing who holds it is no change:
-- nothing queued, nothing audited.
INSERT INTO lhdiscord.user_roles VALUES (1, 'hauling.member');
SELECT lhdiscord.drain_outbox() AS drained;
SELECT count(*) AS audits_before FROM lhdiscord.audit_log \gset
UPDATE lhdiscord.user_roles SET granted_at = granted_at - interval '1 day'
 WHERE user_id = 1 AND role = 'hauling.member';
SELECT count(*) AS pending_after_touch FROM lhdiscord.outbox WHERE state = 'pending';
SELECT count(*) - :audits_before AS audits_after_touch FROM lhdiscord.audit_log;
DELETE FROM lhdiscord.user_roles WHERE role = 'hauling.member';
SELECT lhdiscord.drain_outbox() AS drained;

-- A key moved to another role converges the members it affects: the old role
-- is taken off them, the new one given.
TRUNCATE lhdiscord.fake_calls;
SELECT lhdiscord.map_role('traveler', '900000000000000109');
SELECT count(*) AS pending FROM lhdiscord.outbox WHERE state = 'pending';
SELECT lhdiscord.drain_outbox();
SELECT method, coalesce(role, '') AS role FROM public.calls ORDER BY id;
RESET lhdiscord.governance_mode;
