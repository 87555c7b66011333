-- lhdiscord 0.6.0 -> 0.7.0: the PostgreSQL and PHP ecosystems (issue 15):
-- metrics for Prometheus.

\echo Use "ALTER EXTENSION lhdiscord UPDATE TO '0.7.0'" to load this file. \quit

-------------------------------------------------------------------------------
-- Metrics for Prometheus (examples/prometheus/lhdiscord-queries.yaml, read by
-- prometheus-postgres-exporter; docs/prometheus.md).
--
-- Four views shaped for the exporter: each value column is named after the
-- metric it becomes (the exporter names a metric <namespace>_<column>), every
-- value is a number (flags are 0 or 1), and the label columns are text.  They
-- read what lhdiscord records anyway: the worker's counters in shared memory
-- (worker_state()), the outbox, the member snapshots and the audit rows that
-- reconcile writes.  Plain views: the tables are read with the view owner's
-- rights, so lhdiscord_monitor is granted the views and nothing under them;
-- the functions they call (worker_state, access_context) are the monitor's
-- already.  No secret, no user and no Discord id appears in any of them, only
-- counts, ages and flags.
-------------------------------------------------------------------------------

-- The reconcile outcomes are counted from the audit log on every scrape: a
-- partial index keeps that to the rows reconcile wrote, however large the
-- log grows.
CREATE INDEX audit_log_reconcile_idx ON lhdiscord.audit_log (action)
  WHERE action IN ('entitlement.reconcile', 'entitlement.reconcile_aborted', 'entitlement.exemption');
COMMENT ON INDEX lhdiscord.audit_log_reconcile_idx IS
  'Finds the audit rows reconcile writes (changes, aborted runs, exemptions), for the metrics views.';

CREATE VIEW lhdiscord.metrics AS
  SELECT w.running::integer AS worker_running,
         w.paused::integer AS worker_paused,
         w.throttled::integer AS worker_throttled,
         w.worker_errors AS worker_errors_total,
         w.calls AS discord_requests_total,
         w.rate_limited AS discord_rate_limited_total,
         w.transport_errors AS discord_transport_errors_total,
         w.invalid_requests_10min AS discord_invalid_requests,
         g.invalid_request_budget AS discord_invalid_request_budget,
         coalesce(extract(epoch FROM now() - p.oldest)::float8, 0) AS outbox_oldest_pending_age_seconds,
         (c.mode = 'discord_leading')::integer AS governance_discord_leading,
         c.snapshot_age_seconds,
         g.snapshot_max_age AS snapshot_max_age_seconds,
         c.snapshot_fresh::integer AS snapshot_fresh,
         t.member_count AS snapshot_members,
         coalesce(h.held, 0) AS snapshot_held,
         r.aborted AS reconcile_aborted_total,
         r.exemptions AS reconcile_exemptions_total
    FROM lhdiscord.worker_state() w
   CROSS JOIN lhdiscord.access_context() c
   CROSS JOIN (SELECT min(o.created_at) AS oldest
                 FROM lhdiscord.outbox o
                WHERE o.state = 'pending') p
   -- pg_settings gives the values in their base units (seconds), which
   -- current_setting() would not ('6h').
   CROSS JOIN (SELECT max(s.setting::integer) FILTER (WHERE s.name = 'lhdiscord.invalid_request_budget') AS invalid_request_budget,
                      max(s.setting::integer) FILTER (WHERE s.name = 'lhdiscord.snapshot_max_age') AS snapshot_max_age
                 FROM pg_catalog.pg_settings s
                WHERE s.name IN ('lhdiscord.invalid_request_budget', 'lhdiscord.snapshot_max_age')) g
    LEFT JOIN lhdiscord.member_snapshots t ON t.id = c.snapshot_id
    -- The latest complete snapshot, in the order access_context() picks the
    -- trusted one: held when the shrink guard did not trust it.
    LEFT JOIN LATERAL (SELECT (NOT l.trusted)::integer AS held
                         FROM lhdiscord.member_snapshots l
                        WHERE l.complete
                        ORDER BY l.taken_at DESC, l.id DESC
                        LIMIT 1) h ON true
   CROSS JOIN (SELECT count(*) FILTER (WHERE a.action = 'entitlement.reconcile_aborted') AS aborted,
                      count(*) FILTER (WHERE a.action = 'entitlement.exemption') AS exemptions
                 FROM lhdiscord.audit_log a
                WHERE a.action IN ('entitlement.reconcile_aborted', 'entitlement.exemption')) r;
COMMENT ON VIEW lhdiscord.metrics IS
  'One row of numbers for Prometheus (metric lhdiscord_<column>): the worker, its Discord client, the oldest pending job, the member snapshot in use, reconcile''s safety guard and exemptions. Counters (_total) restart with the server; the reconcile ones count audit rows.';
COMMENT ON COLUMN lhdiscord.metrics.worker_running IS '1 while a worker process is registered, else 0.';
COMMENT ON COLUMN lhdiscord.metrics.worker_paused IS '1 while Discord sending is paused (a 401, or no bot token) until a reload, else 0; worker_status.pause_reason says why.';
COMMENT ON COLUMN lhdiscord.metrics.worker_throttled IS '1 while the worker sends at most one request a second because the invalid requests reached half of lhdiscord.invalid_request_budget, else 0.';
COMMENT ON COLUMN lhdiscord.metrics.worker_errors_total IS 'ERRORs the worker recovered from since the server started (counter).';
COMMENT ON COLUMN lhdiscord.metrics.discord_requests_total IS 'Discord requests sent since the server started (counter).';
COMMENT ON COLUMN lhdiscord.metrics.discord_rate_limited_total IS '429 responses since the server started (counter).';
COMMENT ON COLUMN lhdiscord.metrics.discord_transport_errors_total IS 'Requests that got no response (timeout, connection error, response too large) since the server started (counter).';
COMMENT ON COLUMN lhdiscord.metrics.discord_invalid_requests IS '401, 403 and 429 responses in the last 10 minutes (Discord bans at 10,000).';
COMMENT ON COLUMN lhdiscord.metrics.discord_invalid_request_budget IS 'lhdiscord.invalid_request_budget: invalid requests per 10 minutes at which sending stops (throttled from half of it).';
COMMENT ON COLUMN lhdiscord.metrics.outbox_oldest_pending_age_seconds IS 'Seconds since the oldest pending outbox job was queued; 0 when none is pending.';
COMMENT ON COLUMN lhdiscord.metrics.governance_discord_leading IS '1 in Discord-leading mode (entitlement needs a fresh trusted snapshot), 0 in Portal-leading mode (snapshots are not consulted).';
COMMENT ON COLUMN lhdiscord.metrics.snapshot_age_seconds IS 'Age in seconds of the latest trusted complete member snapshot, the evidence reconcile uses; NULL (NaN in Prometheus) when there is none.';
COMMENT ON COLUMN lhdiscord.metrics.snapshot_max_age_seconds IS 'lhdiscord.snapshot_max_age: an older snapshot entitles nobody (fail closed).';
COMMENT ON COLUMN lhdiscord.metrics.snapshot_fresh IS '1 while that snapshot is at most lhdiscord.snapshot_max_age old, 0 when it is older or there is none.';
COMMENT ON COLUMN lhdiscord.metrics.snapshot_members IS 'Members in that snapshot; NULL (NaN in Prometheus) when there is none.';
COMMENT ON COLUMN lhdiscord.metrics.snapshot_held IS '1 when the latest complete snapshot is held back by the shrink guard (awaiting accept_snapshot), else 0.';
COMMENT ON COLUMN lhdiscord.metrics.reconcile_aborted_total IS 'Reconcile runs the safety guard aborted (audit rows entitlement.reconcile_aborted; counter).';
COMMENT ON COLUMN lhdiscord.metrics.reconcile_exemptions_total IS 'Suspensions a privilege prevented, each counted when it first did (audit rows entitlement.exemption; counter).';

CREATE VIEW lhdiscord.metrics_outbox AS
  SELECT k.kind::text AS kind, s.state::text AS state, coalesce(n.jobs, 0) AS jobs
    FROM unnest(enum_range(NULL::lhdiscord.outbox_kind)) AS k(kind)
   CROSS JOIN unnest(enum_range(NULL::lhdiscord.outbox_state)) AS s(state)
    LEFT JOIN (SELECT o.kind, o.state, count(*) AS jobs
                 FROM lhdiscord.outbox o
                GROUP BY o.kind, o.state) n ON n.kind = k.kind AND n.state = s.state;
COMMENT ON VIEW lhdiscord.metrics_outbox IS
  'Outbox jobs per kind and state for Prometheus (metric lhdiscord_outbox_jobs), a row for every kind and state, 0 included; finished jobs count until lhdiscord.outbox_retention prunes them.';
COMMENT ON COLUMN lhdiscord.metrics_outbox.kind IS 'Job kind (label kind): roles, dm, member_scan, guild_join or token_refresh.';
COMMENT ON COLUMN lhdiscord.metrics_outbox.state IS 'Job state (label state): pending, in_flight, done, failed or dead.';
COMMENT ON COLUMN lhdiscord.metrics_outbox.jobs IS 'Jobs of that kind in that state.';

CREATE VIEW lhdiscord.metrics_responses AS
  SELECT r.class, r.responses_total
    FROM lhdiscord.worker_state() w
   CROSS JOIN LATERAL (VALUES ('2xx', w.responses_2xx),
                              ('4xx', w.responses_4xx),
                              ('5xx', w.responses_5xx)) AS r(class, responses_total);
COMMENT ON VIEW lhdiscord.metrics_responses IS
  'Discord responses per status class for Prometheus (metric lhdiscord_discord_responses_total), since the server started.';
COMMENT ON COLUMN lhdiscord.metrics_responses.class IS 'Status class (label class): 2xx, 4xx or 5xx.';
COMMENT ON COLUMN lhdiscord.metrics_responses.responses_total IS 'Responses of that class since the server started (counter).';

CREATE VIEW lhdiscord.metrics_reconcile AS
  SELECT a.action, coalesce(n.changes, 0) AS changes_total
    FROM unnest(ARRAY['activate', 'suspend', 'suspend_revoke_sessions', 'remove_roles']) AS a(action)
    FULL JOIN (SELECT l.after_json->>'action' AS action, count(*) AS changes
                 FROM lhdiscord.audit_log l
                WHERE l.action = 'entitlement.reconcile'
                GROUP BY 1) n USING (action);
COMMENT ON VIEW lhdiscord.metrics_reconcile IS
  'Users reconcile changed, per action, for Prometheus (metric lhdiscord_reconcile_changes_total): the entitlement.reconcile audit rows, so the count falls only when purge_audit_log() removes old rows.';
COMMENT ON COLUMN lhdiscord.metrics_reconcile.action IS 'What reconcile did (label action): activate, suspend, suspend_revoke_sessions or remove_roles.';
COMMENT ON COLUMN lhdiscord.metrics_reconcile.changes_total IS 'Users changed that way (counter).';

-- lhdiscord_monitor's role comment names what it may read (only when it is
-- still the one CREATE EXTENSION gave it: a DBA's own comment stays).
DO $lhd$
BEGIN
  IF (SELECT pg_catalog.shobj_description(r.oid, 'pg_authid') FROM pg_catalog.pg_roles r
       WHERE r.rolname = 'lhdiscord_monitor')
     = 'lhdiscord: read-only monitoring (worker_status, outbox_stats, status_map).' THEN
    COMMENT ON ROLE lhdiscord_monitor IS
      'lhdiscord: read-only monitoring (worker_status, outbox_stats, status_map, the metrics views).';
  END IF;
END $lhd$;

-------------------------------------------------------------------------------
-- Privileges: nothing for PUBLIC (the loop of 0.6.0, for whatever this
-- version adds), the metrics views for lhdiscord_monitor only.
-------------------------------------------------------------------------------

DO $lhd$
DECLARE
  f regprocedure;
BEGIN
  FOR f IN
    SELECT p.oid FROM pg_catalog.pg_proc p
      JOIN pg_catalog.pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
     WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
       AND d.refobjid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'lhdiscord')
  LOOP
    EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
  END LOOP;
END $lhd$;
REVOKE ALL ON lhdiscord.metrics, lhdiscord.metrics_outbox, lhdiscord.metrics_responses,
  lhdiscord.metrics_reconcile FROM PUBLIC;

GRANT SELECT ON lhdiscord.metrics, lhdiscord.metrics_outbox, lhdiscord.metrics_responses,
  lhdiscord.metrics_reconcile TO lhdiscord_monitor;

-- ---------- the Gateway worker (issue 16) ----------

-- The Gateway worker's live member state is a snapshot of source 'gateway'
-- whose taken_at moves while the session is healthy (see gateway_state.c).
ALTER TABLE lhdiscord.member_snapshots DROP CONSTRAINT member_snapshots_source_check;
ALTER TABLE lhdiscord.member_snapshots
  ADD CONSTRAINT member_snapshots_source_check CHECK (source IN ('scan', 'load', 'gateway'));
COMMENT ON COLUMN lhdiscord.member_snapshots.source IS
  'scan (the worker''s guild scan), load (load_snapshot()) or gateway (the Gateway worker''s live member state).';
COMMENT ON COLUMN lhdiscord.member_snapshots.taken_at IS
  'When the scan started (the age of the evidence); for a gateway snapshot, when its state was last confirmed by a member event or heartbeat of a healthy session.';

CREATE FUNCTION lhdiscord.gateway_state(
    OUT enabled boolean, OUT pid integer, OUT state text, OUT seeded boolean,
    OUT snapshot_id bigint, OUT connected_at timestamptz, OUT last_event_at timestamptz,
    OUT events bigint, OUT resumes bigint, OUT reconnects bigint, OUT identifies bigint,
    OUT alarm text)
  LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'gateway_state';
COMMENT ON FUNCTION lhdiscord.gateway_state() IS
  'The Gateway worker''s state from shared memory; read it through lhdiscord.worker_status.';
REVOKE ALL ON FUNCTION lhdiscord.gateway_state() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lhdiscord.gateway_state() TO lhdiscord_monitor;
-- worker_status now calls gateway_state() too, and a view checks the
-- functions it calls against its reader: every role that may execute
-- worker_state() (a grant made by hand under an older README, say) may
-- execute gateway_state(), so it keeps reading worker_status.
DO $lhd$
DECLARE
  r regrole;
BEGIN
  FOR r IN
    SELECT DISTINCT a.grantee::regrole
      FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
     WHERE p.oid = 'lhdiscord.worker_state()'::regprocedure
       AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner
  LOOP
    EXECUTE format('GRANT EXECUTE ON FUNCTION lhdiscord.gateway_state() TO %s', r);
  END LOOP;
END $lhd$;

-- worker_status gains the Gateway's columns (after the others, so that
-- CREATE OR REPLACE keeps the view, its grants and what depends on it).
CREATE OR REPLACE VIEW lhdiscord.worker_status AS
  SELECT w.running, w.pid, w.started_at, w.last_activity_at, w.preloaded,
         current_setting('lhdiscord.database') AS database,
         current_setting('lhdiscord.api_mode') AS api_mode,
         w.paused, w.pause_reason,
         w.calls, w.responses_2xx, w.responses_4xx, w.responses_5xx,
         w.rate_limited, w.transport_errors, w.invalid_requests_10min, w.throttled,
         w.last_error, w.last_error_at,
         (SELECT count(*) FROM lhdiscord.outbox WHERE state = 'pending') AS pending_jobs,
         (SELECT count(*) FROM lhdiscord.outbox WHERE state = 'in_flight') AS in_flight_jobs,
         (SELECT now() - min(created_at) FROM lhdiscord.outbox WHERE state = 'pending') AS oldest_pending_age,
         w.discord_failing_since,
         now() - w.discord_failing_since AS discord_failing_for,
         w.rate_limited_until,
         w.worker_errors,
         w.serving_lane,
         w.token_verified,
         g.enabled AS gateway_enabled,
         g.pid AS gateway_pid,
         g.state AS gateway_state,
         g.seeded AS gateway_seeded,
         g.snapshot_id AS gateway_snapshot_id,
         g.connected_at AS gateway_connected_at,
         g.last_event_at AS gateway_last_event_at,
         now() - g.last_event_at AS gateway_last_event_age,
         g.events AS gateway_events,
         g.resumes AS gateway_resumes,
         g.reconnects AS gateway_reconnects,
         g.identifies AS gateway_identifies,
         g.alarm AS gateway_alarm
    FROM lhdiscord.worker_state() w CROSS JOIN lhdiscord.gateway_state() g;
COMMENT ON VIEW lhdiscord.worker_status IS
  'The background workers: running or not, paused (401), calls, responses, 429s and their wait, invalid-request count, Discord outage, recovered errors, last error, queue depth, and the Gateway session.';
COMMENT ON COLUMN lhdiscord.worker_status.gateway_enabled IS 'lhdiscord.gateway: the Gateway worker runs.';
COMMENT ON COLUMN lhdiscord.worker_status.gateway_pid IS 'The Gateway worker''s process id.';
COMMENT ON COLUMN lhdiscord.worker_status.gateway_state IS 'off, starting, disconnected, connecting, identifying, resuming, connected, backoff or stopped (see gateway_alarm).';
COMMENT ON COLUMN lhdiscord.worker_status.gateway_seeded IS 'The member listing of the current session is complete: the live state is the entitlement evidence.';
COMMENT ON COLUMN lhdiscord.worker_status.gateway_snapshot_id IS 'The member snapshot holding the live state.';
COMMENT ON COLUMN lhdiscord.worker_status.gateway_connected_at IS 'When the current session became ready or was resumed.';
COMMENT ON COLUMN lhdiscord.worker_status.gateway_last_event_at IS 'The last member event applied or heartbeat ACK of a healthy session.';
COMMENT ON COLUMN lhdiscord.worker_status.gateway_last_event_age IS 'How long ago that was.';
COMMENT ON COLUMN lhdiscord.worker_status.gateway_events IS 'Member events applied since the Gateway worker started.';
COMMENT ON COLUMN lhdiscord.worker_status.gateway_resumes IS 'Sessions resumed after a dropped connection.';
COMMENT ON COLUMN lhdiscord.worker_status.gateway_reconnects IS 'Connections after the first.';
COMMENT ON COLUMN lhdiscord.worker_status.gateway_identifies IS 'IDENTIFY commands sent (new sessions).';
COMMENT ON COLUMN lhdiscord.worker_status.gateway_alarm IS 'Why the Gateway worker stopped reconnecting, and the fix (the bot token; the GUILD_MEMBERS intent in the Developer Portal); a reload tries again.';
