-- The brig: accounts brigged and stripped whatever Discord does; release
-- restores the full set; syncs skip brigged accounts; audit rows.
\i sql/include/reset.sql
\i sql/include/roles_setup.sql

INSERT INTO lhdiscord.users (user_id, username, membership_level, staff_department, staff_rank)
  VALUES (1, 'alice', 'citizen', 'command', 'officer'), (2, 'bob', 'traveler', NULL, 'none');
SELECT (lhdiscord.link_account(1, '100000000000000001', 'alice_d')).id IS NOT NULL AS linked;
-- The member also holds a role lhdiscord does not manage.
INSERT INTO lhdiscord.fake_members VALUES ('100000000000000001', '{555555555555555555}');
SELECT lhdiscord.drain_outbox();
SELECT role_ids FROM lhdiscord.fake_members;

-- Into the brig: the status flips at once, only DELETEs of held managed roles.
TRUNCATE lhdiscord.fake_calls;
SET ROLE lhd_app;
UPDATE lhdiscord.users SET in_brig = true WHERE user_id = 1;
SELECT status FROM lhdiscord.accounts_of(1, 1);
SELECT lhdiscord.has_discord_linked(1), lhdiscord.can_link(1);
-- Syncs skip brigged accounts.
SELECT lhdiscord.sync_roles(1) AS sync_roles, lhdiscord.sync_permissions(1) AS sync_permissions;
RESET ROLE;
SELECT lhdiscord.desired_roles('100000000000000001');
SELECT lhdiscord.drain_outbox();
SELECT method, role FROM public.calls ORDER BY id;
SELECT role_ids FROM lhdiscord.fake_members;

-- Changes while brigged send nothing.
TRUNCATE lhdiscord.fake_calls;
UPDATE lhdiscord.users SET membership_level = 'resident', staff_rank = 'crew_member' WHERE user_id = 1;
SELECT lhdiscord.sync_roles(1);
SELECT lhdiscord.drain_outbox();
SELECT count(*) AS calls_while_brigged FROM lhdiscord.fake_calls;

-- Release: accounts active again, the full current set comes back.
UPDATE lhdiscord.users SET in_brig = false WHERE user_id = 1;
SELECT status FROM lhdiscord.discord_accounts;
SELECT lhdiscord.drain_outbox();
SELECT method, role FROM public.calls ORDER BY id;
SELECT role_ids FROM lhdiscord.fake_members;

-- Brig and release before the worker runs: one convergence, nothing to do.
TRUNCATE lhdiscord.fake_calls;
UPDATE lhdiscord.users SET in_brig = true WHERE user_id = 1;
UPDATE lhdiscord.users SET in_brig = false WHERE user_id = 1;
SELECT count(*) AS live_jobs FROM lhdiscord.outbox WHERE state = 'pending';
SELECT lhdiscord.drain_outbox();
SELECT count(*) AS calls FROM lhdiscord.fake_calls;

-- A brigged user with no accounts: the brig completes, nothing queued or audited.
UPDATE lhdiscord.users SET in_brig = true WHERE user_id = 2;
SELECT count(*) AS jobs_for_bob FROM lhdiscord.outbox WHERE user_id = 2;

-- Audit: every trigger path with before/after JSON.
SELECT action, subject_user_id, before_json, after_json
  FROM lhdiscord.audit_log WHERE action <> 'discord_account_linked' ORDER BY id;
