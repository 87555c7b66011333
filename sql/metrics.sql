-- Metrics for Prometheus (issue 15): the four metrics views against known
-- data (queue per kind and state, oldest pending age, responses by status
-- class, reconcile outcomes, the member snapshot in use), their shape (the
-- columns the exporter's queries file names, every value a number), and who
-- may read them: lhdiscord_monitor, nobody else.
\i sql/include/reset.sql
SELECT lhdiscord.map_role('hauling.member', '900000000000000131');

-- The columns, in order: every one documented, values numeric, labels text.
SELECT c.relname AS view, a.attname AS "column", format_type(a.atttypid, a.atttypmod) AS type,
       col_description(c.oid, a.attnum) IS NOT NULL AS commented
  FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.relnamespace = 'lhdiscord'::regnamespace AND c.relname LIKE 'metrics%'
 ORDER BY c.relname, a.attnum;

-- Nothing recorded yet: no snapshot (NULL, which the exporter shows as NaN),
-- not fresh, nothing held, no reconcile outcome, nothing pending.
SELECT governance_discord_leading, snapshot_age_seconds, snapshot_max_age_seconds, snapshot_fresh,
       snapshot_members, snapshot_held, reconcile_aborted_total, reconcile_exemptions_total,
       outbox_oldest_pending_age_seconds, discord_invalid_request_budget
  FROM lhdiscord.metrics;
SELECT * FROM lhdiscord.metrics_reconcile ORDER BY action;
SELECT count(*) AS rows, sum(jobs) AS jobs FROM lhdiscord.metrics_outbox;

-- The worker's values are worker_status's, as numbers (flags 0 or 1).
SELECT m.worker_running = w.running::integer AS running,
       m.worker_paused = w.paused::integer AS paused,
       m.worker_throttled = w.throttled::integer AS throttled,
       m.worker_errors_total = w.worker_errors AS errors,
       m.discord_requests_total = w.calls AS requests,
       m.discord_rate_limited_total = w.rate_limited AS rate_limited,
       m.discord_transport_errors_total = w.transport_errors AS transport_errors,
       m.discord_invalid_requests = w.invalid_requests_10min AS invalid_requests
  FROM lhdiscord.metrics m, lhdiscord.worker_status w;
SELECT r.class,
       r.responses_total = CASE r.class WHEN '2xx' THEN w.responses_2xx WHEN '4xx' THEN w.responses_4xx
                                        WHEN '5xx' THEN w.responses_5xx END AS same_as_worker_status
  FROM lhdiscord.metrics_responses r, lhdiscord.worker_status w ORDER BY r.class;

-- Users for every reconcile outcome (the snapshot below entitles 1 and 3):
-- 1 stays active; 2, in scope without an account, is suspended with its
-- sessions revoked; 3, suspended but entitled, is activated; 4, out of scope,
-- is suspended; 5, an admin, is exempt; 6, suspended and out of scope, has a
-- portal role removed again.
INSERT INTO lhdiscord.users (user_id, username, membership_level, status, in_scope) VALUES
  (1, 'alice', 'traveler', 'active', true), (2, 'bob', 'traveler', 'active', true),
  (3, 'carol', 'traveler', 'active', true), (4, 'dave', 'traveler', 'active', false),
  (5, 'erin', 'traveler', 'active', true), (6, 'frank', 'traveler', 'suspended', false);
INSERT INTO lhdiscord.user_roles VALUES (4, 'forum.poster'), (5, 'admin'), (6, 'forum.poster');
SELECT count((lhdiscord.link_account(g, (100000000000000000 + g)::text, 'd' || g)).id)
  FROM generate_series(1, 3, 2) g;
UPDATE lhdiscord.users SET status = 'suspended' WHERE user_id = 3;

-- Queue: the two link jobs are pending; the oldest pending age is that of the
-- oldest pending job (here within one transaction, so exactly).
BEGIN;
INSERT INTO lhdiscord.outbox (kind, discord_user_id, payload, created_at)
  VALUES ('dm', '100000000000000001', '{"content": "hi"}', now() - interval '90 seconds');
SELECT outbox_oldest_pending_age_seconds FROM lhdiscord.metrics;
COMMIT;
SELECT lhdiscord.drain_outbox() AS drained;
INSERT INTO lhdiscord.outbox (kind, discord_user_id, state, finished_at)
  VALUES ('guild_join', '100000000000000003', 'dead', now()), ('dm', '100000000000000003', 'failed', now()),
         ('roles', '100000000000000003', 'in_flight', NULL);
INSERT INTO lhdiscord.outbox (kind, payload) VALUES ('member_scan', '{}');
SELECT kind, state, jobs FROM lhdiscord.metrics_outbox WHERE jobs > 0 ORDER BY kind, state;
-- Every kind and state is there, 0 included, and the counts are the outbox's.
SELECT count(*) AS rows, count(DISTINCT kind) AS kinds, count(DISTINCT state) AS states FROM lhdiscord.metrics_outbox;
(SELECT kind::text, state::text, count(*) FROM lhdiscord.outbox GROUP BY 1, 2
 EXCEPT SELECT kind, state, jobs FROM lhdiscord.metrics_outbox)
UNION ALL
(SELECT kind, state, jobs FROM lhdiscord.metrics_outbox WHERE jobs > 0
 EXCEPT SELECT kind::text, state::text, count(*) FROM lhdiscord.outbox GROUP BY 1, 2);
SELECT outbox_oldest_pending_age_seconds BETWEEN 0 AND 60 AS oldest_pending_is_the_scan
  FROM lhdiscord.metrics;
DELETE FROM lhdiscord.outbox WHERE state IN ('pending', 'in_flight');
SELECT outbox_oldest_pending_age_seconds AS nothing_pending FROM lhdiscord.metrics;

-- A trusted snapshot taken 10 minutes ago: 2 members, fresh (6 hours).
SELECT lhdiscord.load_snapshot(jsonb_build_array(
  jsonb_build_object('user', jsonb_build_object('id', '100000000000000001'), 'roles', jsonb_build_array('900000000000000131')),
  jsonb_build_object('user', jsonb_build_object('id', '100000000000000003'), 'roles', jsonb_build_array('900000000000000131'))),
  now() - interval '10 minutes') AS snap1 \gset
SELECT snapshot_age_seconds BETWEEN 600 AND 660 AS ten_minutes_old, snapshot_max_age_seconds,
       snapshot_fresh, snapshot_members, snapshot_held
  FROM lhdiscord.metrics;
SELECT m.snapshot_age_seconds = c.snapshot_age_seconds AS age_of_access_context
  FROM lhdiscord.metrics m, lhdiscord.access_context() c;
-- In seconds, whatever unit the setting was given in.
SET lhdiscord.snapshot_max_age = '5min';
SELECT snapshot_max_age_seconds, snapshot_fresh AS fresh_after_5_minutes FROM lhdiscord.metrics;
RESET lhdiscord.snapshot_max_age;
SET lhdiscord.invalid_request_budget = 100;
SELECT discord_invalid_request_budget FROM lhdiscord.metrics;
RESET lhdiscord.invalid_request_budget;
SET lhdiscord.governance_mode = 'portal_leading';
SELECT governance_discord_leading FROM lhdiscord.metrics;
RESET lhdiscord.governance_mode;

-- Reconcile: one user per action, one exemption.
SELECT user_id, old_status, new_status, action, jml FROM lhdiscord.reconcile() ORDER BY user_id;
SELECT * FROM lhdiscord.metrics_reconcile ORDER BY action;
SELECT reconcile_aborted_total, reconcile_exemptions_total FROM lhdiscord.metrics;
-- The counts are the audit log's.
SELECT (SELECT sum(changes_total) FROM lhdiscord.metrics_reconcile)
       = (SELECT count(*) FROM lhdiscord.audit_log WHERE action = 'entitlement.reconcile') AS changes_are_audit_rows;
-- Idempotent: a second run changes nothing, the counters stay.
SELECT count(*) AS changed FROM lhdiscord.reconcile();
SELECT sum(changes_total) AS changes FROM lhdiscord.metrics_reconcile;

-- The safety guard: 12 more users would all be suspended (12 of 15 active).
INSERT INTO lhdiscord.users (user_id, username, membership_level)
  SELECT g, 'u' || g, 'traveler' FROM generate_series(101, 112) g;
SELECT count(*) AS changed FROM lhdiscord.reconcile();
SELECT reconcile_aborted_total, reconcile_exemptions_total FROM lhdiscord.metrics;
SELECT sum(changes_total) AS changes FROM lhdiscord.metrics_reconcile;
DELETE FROM lhdiscord.users WHERE user_id > 100;

-- The shrink guard holds an empty snapshot back: held; the trusted one
-- (2 members) stays in use until the held one is accepted.
SELECT lhdiscord.load_snapshot('[]') AS snap2 \gset
SELECT snapshot_members, snapshot_held, snapshot_fresh FROM lhdiscord.metrics;
SELECT lhdiscord.accept_snapshot(:snap2);
SELECT snapshot_members, snapshot_held, snapshot_fresh, snapshot_age_seconds < 60 AS new_snapshot
  FROM lhdiscord.metrics;

-- Only the monitoring role reads the views; PUBLIC holds nothing.
SELECT c.relname AS view, a.grantee::regrole AS grantee, a.privilege_type
  FROM pg_class c, aclexplode(c.relacl) a
 WHERE c.relnamespace = 'lhdiscord'::regnamespace AND c.relname LIKE 'metrics%' AND a.grantee <> c.relowner
 ORDER BY 1, 2, 3;
SET ROLE lhd_app;
SELECT expect_error('SELECT * FROM lhdiscord.metrics');
SELECT expect_error('SELECT * FROM lhdiscord.metrics_outbox');
SELECT expect_error('SELECT * FROM lhdiscord.metrics_responses');
SELECT expect_error('SELECT * FROM lhdiscord.metrics_reconcile');
RESET ROLE;
SET ROLE lhd_gov;
SELECT expect_error('SELECT * FROM lhdiscord.metrics');
RESET ROLE;
SET ROLE lhd_stranger;
SELECT expect_error('SELECT * FROM lhdiscord.metrics');
RESET ROLE;
SET ROLE lhd_watch;
SELECT snapshot_members, snapshot_held, reconcile_aborted_total, reconcile_exemptions_total FROM lhdiscord.metrics;
SELECT kind, state, jobs FROM lhdiscord.metrics_outbox WHERE jobs > 0 ORDER BY kind, state;
SELECT class FROM lhdiscord.metrics_responses ORDER BY class;
SELECT * FROM lhdiscord.metrics_reconcile ORDER BY action;
-- ... and nothing under them.
SELECT expect_error('SELECT count(*) FROM lhdiscord.audit_log');
SELECT expect_error('SELECT count(*) FROM lhdiscord.outbox');
RESET ROLE;
