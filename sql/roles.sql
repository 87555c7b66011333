-- The desired-state role engine in fake API mode: minimal calls, folding,
-- unmanaged and unconfigured roles, multiple accounts, bad input.
\i sql/include/reset.sql
\i sql/include/roles_setup.sql

-- Mapping: unknown keys and malformed ids are rejected, nothing stored.
SELECT count(*) AS mapped FROM lhdiscord.role_map;
SELECT lhdiscord.map_role('staff_pilot', '900000000000000199');
SELECT expect_error($$SELECT lhdiscord.map_role('drifter', '900000000000000199')$$);
SELECT expect_error($$SELECT lhdiscord.map_role('.member', '900000000000000199')$$);
SELECT expect_error($$SELECT lhdiscord.map_role('verified', '12345')$$);
SELECT expect_error($$SELECT lhdiscord.map_role(NULL, '900000000000000199')$$);
SELECT expect_error($$INSERT INTO lhdiscord.role_map VALUES ('rank_captain', '900000000000000199')$$);
SELECT count(*) AS mapped FROM lhdiscord.role_map;

INSERT INTO lhdiscord.users (user_id, username, membership_level, staff_department, staff_rank)
  VALUES (1, 'alice', 'traveler', 'engineer', 'officer'),
         (2, 'bob', 'resident', NULL, 'none');
SELECT id AS alice_acct FROM lhdiscord.link_account(1, '100000000000000001', 'alice_d') \gset

-- First convergence: the state is unknown, so one GET member, then the set.
SELECT lhdiscord.desired_roles('100000000000000001') = ARRAY[
  '900000000000000101', '900000000000000104', '900000000000000113', '900000000000000123'] AS desired_ok;
SELECT lhdiscord.drain_outbox();
SELECT method, role FROM public.calls ORDER BY id;
SELECT state, attempts, finished_at IS NOT NULL AS finished FROM lhdiscord.outbox;
SELECT role_ids FROM lhdiscord.role_state;

-- Promotion traveler -> resident: exactly DELETE traveler, PUT resident.
TRUNCATE lhdiscord.fake_calls;
SET ROLE lhd_app;
UPDATE lhdiscord.users SET membership_level = 'resident' WHERE user_id = 1;
RESET ROLE;
SELECT public.seed_calls(1) AS seed_algorithm_calls;
SELECT lhdiscord.drain_outbox();
SELECT count(*) AS desired_state_calls FROM lhdiscord.fake_calls;
SELECT method, role FROM public.calls ORDER BY id;

-- Ten rapid level changes before a drain: one convergence, net calls only.
TRUNCATE lhdiscord.fake_calls;
SET ROLE lhd_app;
UPDATE lhdiscord.users SET membership_level = 'citizen' WHERE user_id = 1;
UPDATE lhdiscord.users SET membership_level = 'traveler' WHERE user_id = 1;
UPDATE lhdiscord.users SET membership_level = 'resident' WHERE user_id = 1;
UPDATE lhdiscord.users SET membership_level = 'citizen' WHERE user_id = 1;
UPDATE lhdiscord.users SET membership_level = 'resident' WHERE user_id = 1;
UPDATE lhdiscord.users SET membership_level = 'traveler' WHERE user_id = 1;
UPDATE lhdiscord.users SET membership_level = 'citizen' WHERE user_id = 1;
UPDATE lhdiscord.users SET membership_level = 'resident' WHERE user_id = 1;
UPDATE lhdiscord.users SET membership_level = 'traveler' WHERE user_id = 1;
UPDATE lhdiscord.users SET membership_level = 'citizen' WHERE user_id = 1;
RESET ROLE;
SELECT count(*) AS live_jobs, max(generation) AS folded_changes
  FROM lhdiscord.outbox WHERE state = 'pending';
SELECT count(*) AS audit_rows FROM lhdiscord.audit_log WHERE action = 'discord_roles_synced';
SELECT lhdiscord.drain_outbox();
SELECT method, role FROM public.calls ORDER BY id;

-- Back and forth before a drain: the net change is nothing, so no call.
TRUNCATE lhdiscord.fake_calls;
UPDATE lhdiscord.users SET membership_level = 'resident' WHERE user_id = 1;
UPDATE lhdiscord.users SET membership_level = 'citizen' WHERE user_id = 1;
SELECT lhdiscord.drain_outbox();
SELECT count(*) AS calls FROM lhdiscord.fake_calls;

-- Rank change without department change re-syncs department and rank (edge case 8).
TRUNCATE lhdiscord.fake_calls;
UPDATE lhdiscord.users SET staff_rank = 'crew_member' WHERE user_id = 1;
SELECT lhdiscord.drain_outbox();
SELECT method, role FROM public.calls ORDER BY id;
-- Staff removed: both roles go.
TRUNCATE lhdiscord.fake_calls;
UPDATE lhdiscord.users SET staff_department = NULL, staff_rank = 'none' WHERE user_id = 1;
SELECT lhdiscord.drain_outbox();
SELECT method, role FROM public.calls ORDER BY id;

-- Audit of the staff and level paths, with before/after JSON.
SELECT action, before_json, after_json FROM lhdiscord.audit_log
 WHERE action IN ('discord_staff_synced', 'discord_staff_removed')
    OR (action = 'discord_roles_synced' AND before_json->>'membership_level' = 'traveler')
 ORDER BY id;

-- A rolled-back change queues nothing.
SELECT count(*) AS jobs_before FROM lhdiscord.outbox WHERE state = 'pending';
BEGIN;
UPDATE lhdiscord.users SET membership_level = 'traveler' WHERE user_id = 1;
SELECT count(*) AS jobs_inside FROM lhdiscord.outbox WHERE state = 'pending';
ROLLBACK;
SELECT count(*) AS jobs_after FROM lhdiscord.outbox WHERE state = 'pending';

-- Unmanaged roles: a role outside role_map is never touched; unlink strips
-- exactly the managed roles the member holds.
INSERT INTO lhdiscord.fake_members VALUES ('200000000000000002', '{555555555555555555,900000000000000104}');
SELECT (lhdiscord.link_account(2, '200000000000000002', 'bob_d')).id IS NOT NULL AS linked;
TRUNCATE lhdiscord.fake_calls;
SELECT lhdiscord.drain_outbox();
SELECT method, role FROM public.calls ORDER BY id;
SELECT role_ids FROM lhdiscord.fake_members WHERE discord_user_id = '200000000000000002';
TRUNCATE lhdiscord.fake_calls;
SELECT lhdiscord.unlink_account(2, (SELECT id FROM lhdiscord.discord_accounts WHERE user_id = 2));
SELECT lhdiscord.drain_outbox();
SELECT method, role FROM public.calls ORDER BY id;
SELECT role_ids FROM lhdiscord.fake_members WHERE discord_user_id = '200000000000000002';

-- An unconfigured key (verified unset): no call for it, no error.
SELECT lhdiscord.map_role('verified', NULL);
SELECT lhdiscord.map_role('citizen', '');
TRUNCATE lhdiscord.fake_calls;
SELECT lhdiscord.drain_outbox();
SELECT method, role FROM public.calls ORDER BY id;
SELECT lhdiscord.map_role('verified', '900000000000000104');
SELECT lhdiscord.map_role('citizen', '900000000000000103');
SELECT lhdiscord.drain_outbox();

-- Multiple active accounts: every account converges; syncs count active only.
SET lhdiscord.max_discord_accounts = 3;
SELECT (lhdiscord.link_account(1, '100000000000000011', 'alice_two')).id IS NOT NULL AS linked;
SELECT (lhdiscord.link_account(1, '100000000000000111', 'alice_three')).id IS NOT NULL AS linked;
UPDATE lhdiscord.discord_accounts SET status = 'brigged' WHERE discord_user_id = '100000000000000111';
SELECT lhdiscord.drain_outbox();
TRUNCATE lhdiscord.fake_calls;
UPDATE lhdiscord.users SET membership_level = 'traveler' WHERE user_id = 1;
SELECT lhdiscord.drain_outbox();
SELECT member, method, role FROM public.calls ORDER BY member, id;
SELECT after_json FROM lhdiscord.audit_log WHERE action = 'discord_roles_synced' ORDER BY id DESC LIMIT 1;
SET ROLE lhd_app;
SELECT lhdiscord.sync_roles(1) AS sync_roles, lhdiscord.sync_staff(1) AS sync_staff,
       lhdiscord.sync_permissions(1) AS sync_permissions;
RESET ROLE;
TRUNCATE lhdiscord.fake_calls;
SELECT lhdiscord.drain_outbox();
SELECT count(*) AS calls_when_converged FROM lhdiscord.fake_calls;
RESET lhdiscord.max_discord_accounts;

-- Bad input: clear errors, nothing queued.
SELECT count(*) AS jobs, (SELECT count(*) FROM lhdiscord.audit_log) AS audits FROM lhdiscord.outbox;
SET ROLE lhd_app;
UPDATE lhdiscord.users SET membership_level = 'admiral' WHERE user_id = 1;
UPDATE lhdiscord.users SET staff_department = 'navy' WHERE user_id = 1;
UPDATE lhdiscord.users SET staff_rank = 'captain' WHERE user_id = 1;
SELECT lhdiscord.sync_roles(NULL);
SELECT lhdiscord.sync_staff(424242);
SELECT expect_error('SELECT lhdiscord.sync_permissions(NULL)');
SELECT lhdiscord.map_role('verified', '900000000000000104');
RESET ROLE;
SELECT count(*) AS jobs, (SELECT count(*) FROM lhdiscord.audit_log) AS audits FROM lhdiscord.outbox;

-- Deleting a portal user strips the roles of its accounts (cascade).
TRUNCATE lhdiscord.fake_calls;
DELETE FROM lhdiscord.users WHERE user_id = 1;
SELECT lhdiscord.drain_outbox();
SELECT member, method, role FROM public.calls ORDER BY member, id;

-- drain_outbox is for DBAs; its argument is validated.
SELECT lhdiscord.drain_outbox(0);
SET ROLE lhd_app;
SELECT lhdiscord.drain_outbox();
RESET ROLE;

-- The write-path triggers run as the extension owner with a pinned search
-- path: an operator the caller plants earlier in its own search_path is
-- never picked up by them.
INSERT INTO lhdiscord.users (user_id, username, membership_level) VALUES (7, 'grace', 'traveler');
SELECT (lhdiscord.link_account(7, '700000000000000007', 'grace_d')).id IS NOT NULL AS linked;
SELECT lhdiscord.drain_outbox();
CREATE SCHEMA trap;
CREATE FUNCTION trap.int8_eq(bigint, bigint) RETURNS boolean LANGUAGE plpgsql
  AS $$BEGIN RAISE EXCEPTION 'hijacked'; END$$;
CREATE OPERATOR trap.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = trap.int8_eq);
GRANT USAGE ON SCHEMA trap TO lhd_app;
SET ROLE lhd_app;
SET search_path = trap, pg_catalog, public;
SELECT 1::bigint = 1::bigint AS trapped;
UPDATE lhdiscord.users SET membership_level = 'citizen' WHERE user_id::text = '7';
UPDATE lhdiscord.users SET in_brig = true WHERE user_id::text = '7';
RESET search_path;
RESET ROLE;
SELECT action FROM lhdiscord.audit_log WHERE subject_user_id = 7 ORDER BY id;
SELECT status FROM lhdiscord.discord_accounts WHERE user_id = 7;
DROP SCHEMA trap CASCADE;
