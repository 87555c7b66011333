-- Priority lanes: chosen by the kind of work when it is queued, the highest
-- kept when changes fold, an explicit lane from the application validated.
\i sql/include/reset.sql

SELECT lhdiscord.map_role('traveler', '900000000000000101');
SELECT lhdiscord.map_role('verified', '900000000000000104');
INSERT INTO lhdiscord.users (user_id, username, membership_level, notify_discord) VALUES
  (1, 'alice', 'traveler', true), (2, 'bob', 'traveler', true), (3, 'carol', 'traveler', true);
CREATE VIEW public.jobs AS
  SELECT kind, discord_user_id, lane, generation FROM lhdiscord.outbox
   WHERE state IN ('pending', 'in_flight') ORDER BY kind, discord_user_id;

-- A link is interactive, unless the application says bulk (an import).
SELECT (lhdiscord.link_account(1, '100000000000000001', 'alice_d')).status;
SELECT (lhdiscord.link_account(2, '100000000000000002', 'bob_d', lane => 'bulk')).status;
SELECT * FROM public.jobs;
SELECT lhdiscord.drain_outbox();

-- A promotion is interactive; a brig folded into it keeps the highest lane.
UPDATE lhdiscord.users SET membership_level = 'citizen' WHERE user_id = 1;
SELECT * FROM public.jobs;
UPDATE lhdiscord.users SET in_brig = true WHERE user_id = 1;
SELECT * FROM public.jobs;
-- ... and a release folded in after that stays urgent (the highest of its changes).
UPDATE lhdiscord.users SET in_brig = false WHERE user_id = 1;
SELECT * FROM public.jobs;
SELECT lhdiscord.drain_outbox();

-- A brig on its own is urgent, and reads the member first (a removal must
-- be complete whatever role_state says).
UPDATE lhdiscord.users SET in_brig = true WHERE user_id = 2;
SELECT * FROM public.jobs;
TRUNCATE lhdiscord.fake_calls;
SELECT lhdiscord.drain_outbox();
SELECT method, route FROM lhdiscord.fake_calls ORDER BY id;
UPDATE lhdiscord.users SET in_brig = false WHERE user_id = 2;
SELECT lhdiscord.drain_outbox();

-- A role_map change is bulk, and only for the members it affects: moving
-- traveler to a new role converges the travelers (bob; alice is a citizen
-- now, and citizen is unmapped), taking the old role off.
SELECT lhdiscord.map_role('traveler', '900000000000000109');
SELECT * FROM public.jobs;
TRUNCATE lhdiscord.fake_calls;
SELECT lhdiscord.drain_outbox();
SELECT method, role_id FROM lhdiscord.fake_calls ORDER BY id;
-- The same mapping again, or an UPDATE to the same value, queues nothing.
SELECT lhdiscord.map_role('traveler', '900000000000000109');
INSERT INTO lhdiscord.role_map VALUES ('traveler', '900000000000000109') ON CONFLICT DO NOTHING;
UPDATE lhdiscord.role_map SET discord_role_id = discord_role_id;
SELECT count(*) AS queued_by_noop_mapping FROM public.jobs;
-- Unmapping leaves the role alone (roles not in role_map are never touched).
SELECT lhdiscord.map_role('verified', NULL);
SELECT count(*) AS queued_by_unmapping FROM public.jobs;

-- DMs are interactive, or bulk when the application says so.
SELECT lhdiscord.notify(1, 'NewTicketNotification', 'hello') AS queued,
       lhdiscord.notify(2, 'NewTicketNotification', 'announcement', 'bulk') AS queued_bulk;
SELECT * FROM public.jobs;

-- urgent is lhdiscord's to choose; unknown lanes are refused; nothing queued.
SELECT count(*) AS jobs_before FROM lhdiscord.outbox \gset
SELECT public.expect_error($$SELECT lhdiscord.notify(1, 'NewTicketNotification', 'x', 'urgent')$$);
SELECT public.expect_error($$SELECT lhdiscord.notify(1, 'NewTicketNotification', 'x', 'fast')$$);
SELECT public.expect_error($$SELECT lhdiscord.link_account(3, '100000000000000003', 'carol_d', lane => 'urgent')$$);
SELECT count(*) - :jobs_before AS jobs_added, (SELECT count(*) FROM lhdiscord.discord_accounts WHERE user_id = 3) AS carol_accounts
  FROM lhdiscord.outbox;

-- outbox_stats: per lane, the backlog, the send rate and the time to drain.
SELECT lane, kind, state, jobs, lane_backlog, lane_send_rate IS NOT NULL AS has_rate
  FROM lhdiscord.outbox_stats WHERE state = 'pending' ORDER BY lane, kind;
SELECT lhdiscord.drain_outbox();
SELECT DISTINCT lane, lane_backlog, lane_drain_estimate FROM lhdiscord.outbox_stats ORDER BY lane;
DROP VIEW public.jobs;
