-- lhdiscord 0.5.0 -> 0.6.0: a worker that survives every fault (issue 11),
-- least privilege (issue 12).

\echo Use "ALTER EXTENSION lhdiscord UPDATE TO '0.6.0'" to load this file. \quit

-- ---------- worker faults (issue 11) ----------

-- DM nonces: a random value fixed when the job is queued, so that nonces
-- stay unique across failovers (job ids reissued), restores and databases.
ALTER TABLE lhdiscord.outbox
  ADD COLUMN nonce text NOT NULL DEFAULT substr(md5(gen_random_uuid()::text), 1, 20)
  CHECK (nonce ~ '^[0-9a-f]{20}$');
COMMENT ON COLUMN lhdiscord.outbox.nonce IS
  'Random value fixed when the job is queued; a DM part is posted with nonce <nonce>-<part>, so retries never deliver twice and no two jobs share a nonce.';

-- worker_status: how long Discord has been failing, a pending 429 wait, and
-- the ERRORs the worker recovered from.
DROP VIEW lhdiscord.worker_status;
DROP FUNCTION lhdiscord.worker_state();
CREATE FUNCTION lhdiscord.worker_state(
    OUT running boolean, OUT pid integer, OUT started_at timestamptz,
    OUT last_activity_at timestamptz, OUT paused boolean, OUT pause_reason text,
    OUT calls bigint, OUT responses_2xx bigint, OUT responses_4xx bigint,
    OUT responses_5xx bigint, OUT rate_limited bigint, OUT transport_errors bigint,
    OUT invalid_requests_10min integer, OUT throttled boolean,
    OUT last_error text, OUT last_error_at timestamptz, OUT preloaded boolean,
    OUT discord_failing_since timestamptz, OUT rate_limited_until timestamptz,
    OUT worker_errors bigint, OUT serving_lane text, OUT token_verified boolean)
  LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'worker_state';
COMMENT ON FUNCTION lhdiscord.worker_state() IS
  'Worker and Discord client state from shared memory; read it through lhdiscord.worker_status.';
REVOKE ALL ON FUNCTION lhdiscord.worker_state() FROM PUBLIC;

CREATE VIEW lhdiscord.worker_status AS
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
         w.token_verified
    FROM lhdiscord.worker_state() w;
COMMENT ON VIEW lhdiscord.worker_status IS
  'The background worker: running or not, paused (401), calls, responses, 429s and their wait, invalid-request count, Discord outage, recovered errors, last error, queue depth.';
COMMENT ON COLUMN lhdiscord.worker_status.running IS 'A worker process is registered.';
COMMENT ON COLUMN lhdiscord.worker_status.pid IS 'Its process id.';
COMMENT ON COLUMN lhdiscord.worker_status.started_at IS 'When it started.';
COMMENT ON COLUMN lhdiscord.worker_status.last_activity_at IS 'Its last drain or schedule step.';
COMMENT ON COLUMN lhdiscord.worker_status.preloaded IS 'The library is in shared_preload_libraries (state is shared).';
COMMENT ON COLUMN lhdiscord.worker_status.database IS 'lhdiscord.database, the database the worker serves.';
COMMENT ON COLUMN lhdiscord.worker_status.api_mode IS 'lhdiscord.api_mode: live or fake.';
COMMENT ON COLUMN lhdiscord.worker_status.paused IS 'Sending is paused (Discord answered 401, or no bot token) until a reload.';
COMMENT ON COLUMN lhdiscord.worker_status.pause_reason IS 'Why sending is paused.';
COMMENT ON COLUMN lhdiscord.worker_status.calls IS 'Discord requests sent since the server started.';
COMMENT ON COLUMN lhdiscord.worker_status.responses_2xx IS 'Responses with a 2xx status.';
COMMENT ON COLUMN lhdiscord.worker_status.responses_4xx IS 'Responses with a 4xx status.';
COMMENT ON COLUMN lhdiscord.worker_status.responses_5xx IS 'Responses with a 5xx status.';
COMMENT ON COLUMN lhdiscord.worker_status.rate_limited IS '429 responses.';
COMMENT ON COLUMN lhdiscord.worker_status.transport_errors IS 'Requests that got no response (timeout, connection error, response too large).';
COMMENT ON COLUMN lhdiscord.worker_status.invalid_requests_10min IS '401, 403 and 429 responses in the last 10 minutes (Discord bans at 10,000).';
COMMENT ON COLUMN lhdiscord.worker_status.throttled IS 'Slowed to one request a second, far from the invalid-request ban.';
COMMENT ON COLUMN lhdiscord.worker_status.last_error IS 'The last Discord or worker error (never a secret).';
COMMENT ON COLUMN lhdiscord.worker_status.last_error_at IS 'When it happened.';
COMMENT ON COLUMN lhdiscord.worker_status.pending_jobs IS 'Outbox jobs pending.';
COMMENT ON COLUMN lhdiscord.worker_status.in_flight_jobs IS 'Outbox jobs claimed and running.';
COMMENT ON COLUMN lhdiscord.worker_status.oldest_pending_age IS 'Age of the oldest pending job.';
COMMENT ON COLUMN lhdiscord.worker_status.discord_failing_since IS 'Start of the current run of Discord failures (5xx, timeouts, connection errors); NULL while Discord answers.';
COMMENT ON COLUMN lhdiscord.worker_status.discord_failing_for IS 'How long Discord has been failing.';
COMMENT ON COLUMN lhdiscord.worker_status.rate_limited_until IS 'End of a pending global 429 wait (capped by lhdiscord.rate_limit_max_wait; a reload ends it); NULL if none.';
COMMENT ON COLUMN lhdiscord.worker_status.worker_errors IS 'ERRORs the worker recovered from since the server started (it never crashes on one).';
COMMENT ON COLUMN lhdiscord.worker_status.serving_lane IS 'The highest lane of the jobs the worker claimed last: urgent, interactive or bulk.';
COMMENT ON COLUMN lhdiscord.worker_status.token_verified IS 'A probe (GET /users/@me) accepted the current bot token since the last start or token change.';

-- ---------- priority lanes (issue 13) ----------

CREATE TYPE lhdiscord.outbox_lane AS ENUM ('urgent', 'interactive', 'bulk');
COMMENT ON TYPE lhdiscord.outbox_lane IS
  'Priority class of an outbox job, highest first: urgent (removals that take access away), interactive (one user''s action), bulk (work for many members at once).';
ALTER TABLE lhdiscord.outbox ADD COLUMN lane lhdiscord.outbox_lane NOT NULL DEFAULT 'interactive';
UPDATE lhdiscord.outbox SET lane = 'bulk' WHERE kind IN ('member_scan', 'token_refresh');
COMMENT ON COLUMN lhdiscord.outbox.lane IS
  'Priority class, chosen by the kind of work when it is queued; a change folded into a live convergence keeps the highest lane of its changes.';

-- The claim takes the highest lane first, oldest first within it.
DROP INDEX lhdiscord.outbox_ready_idx;
CREATE INDEX outbox_ready_idx ON lhdiscord.outbox (lane, run_after, id) WHERE state = 'pending';
COMMENT ON INDEX lhdiscord.outbox_ready_idx IS 'Finds pending jobs that are due, highest lane first, oldest first.';

DROP VIEW lhdiscord.outbox_stats;
CREATE VIEW lhdiscord.outbox_stats AS
  WITH per AS (
    SELECT lane, kind, state, count(*) AS jobs,
           min(created_at) AS oldest_created_at,
           CASE WHEN state IN ('pending', 'in_flight') THEN now() - min(created_at) END AS oldest_age,
           max(attempts) AS max_attempts,
           sum(CASE WHEN run_after > now() THEN 1 ELSE 0 END) AS waiting_for_retry,
           count(*) FILTER (WHERE finished_at > now() - interval '1 minute') AS finished_last_minute
      FROM lhdiscord.outbox
     GROUP BY lane, kind, state),
  lanes AS (
    SELECT lane,
           sum(jobs) FILTER (WHERE state IN ('pending', 'in_flight')) AS backlog,
           sum(finished_last_minute) / 60.0 AS rate
      FROM per GROUP BY lane)
  SELECT p.kind, p.state, p.jobs, p.oldest_created_at, p.oldest_age, p.max_attempts,
         p.waiting_for_retry, p.lane,
         coalesce(l.backlog, 0)::bigint AS lane_backlog,
         round(l.rate, 2) AS lane_send_rate,
         CASE WHEN coalesce(l.backlog, 0) = 0 THEN interval '0'
              WHEN l.rate > 0 THEN make_interval(secs => (l.backlog / l.rate)::float8) END AS lane_drain_estimate
    FROM per p JOIN lanes l USING (lane);
COMMENT ON VIEW lhdiscord.outbox_stats IS
  'Queue depth per job kind, state and lane, with the age of the oldest job, jobs waiting for a retry, and per lane the backlog, the send rate and the time to drain it.';
COMMENT ON COLUMN lhdiscord.outbox_stats.kind IS 'Job kind.';
COMMENT ON COLUMN lhdiscord.outbox_stats.state IS 'Job state.';
COMMENT ON COLUMN lhdiscord.outbox_stats.jobs IS 'Jobs of this kind, state and lane.';
COMMENT ON COLUMN lhdiscord.outbox_stats.oldest_created_at IS 'When the oldest of them was queued.';
COMMENT ON COLUMN lhdiscord.outbox_stats.oldest_age IS 'Age of the oldest pending or in-flight one.';
COMMENT ON COLUMN lhdiscord.outbox_stats.max_attempts IS 'Most attempts among them.';
COMMENT ON COLUMN lhdiscord.outbox_stats.waiting_for_retry IS 'How many wait for a retry (run_after in the future).';
COMMENT ON COLUMN lhdiscord.outbox_stats.lane IS 'Priority lane: urgent, interactive or bulk.';
COMMENT ON COLUMN lhdiscord.outbox_stats.lane_backlog IS 'Pending and in-flight jobs of the lane, all kinds.';
COMMENT ON COLUMN lhdiscord.outbox_stats.lane_send_rate IS 'Jobs of the lane finished per second over the last minute.';
COMMENT ON COLUMN lhdiscord.outbox_stats.lane_drain_estimate IS 'Time to drain the lane''s backlog at that rate (NULL while nothing finishes).';

-- A role_map change converges only the members it can affect, and only when
-- a role id changed: a row trigger now (an idempotent upsert fires none).
DROP TRIGGER role_map_converge ON lhdiscord.role_map;
CREATE TRIGGER role_map_converge AFTER INSERT OR UPDATE OR DELETE ON lhdiscord.role_map
  FOR EACH ROW EXECUTE FUNCTION lhdiscord.role_map_after_change();
COMMENT ON TRIGGER role_map_converge ON lhdiscord.role_map IS
  'Converges the members a changed mapping can affect (bulk lane); a statement that changes no role id queues nothing.';
COMMENT ON FUNCTION lhdiscord.role_map_after_change() IS
  'Trigger: a changed mapping converges the members it can affect.';

-- The application may pass a lane where it knows better: bulk for a mass
-- announcement or an import (urgent is lhdiscord's own choice, refused).
DROP FUNCTION lhdiscord.notify(bigint, text, text);
CREATE FUNCTION lhdiscord.notify(user_id bigint, notification text, content text,
                                 lane lhdiscord.outbox_lane DEFAULT NULL) RETURNS integer
  LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'notify';
COMMENT ON FUNCTION lhdiscord.notify(bigint, text, text, lhdiscord.outbox_lane) IS
  'Queues one Discord DM per active account when the user wants Discord DMs and content is not null; returns the number queued. Content over 2000 characters is split into ordered messages. lane: interactive (default) or bulk.';

DROP FUNCTION lhdiscord.link_account(bigint, text, text, text, text, text, text, timestamptz);
CREATE FUNCTION lhdiscord.link_account(
    user_id bigint,
    discord_user_id text,
    username text,
    global_name text DEFAULT NULL,
    avatar_hash text DEFAULT NULL,
    access_token text DEFAULT NULL,
    refresh_token text DEFAULT NULL,
    token_expires_at timestamptz DEFAULT NULL,
    lane lhdiscord.outbox_lane DEFAULT NULL)
  RETURNS lhdiscord.discord_accounts
  LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'link_account';
COMMENT ON FUNCTION lhdiscord.link_account(bigint, text, text, text, text, text, text, timestamptz, lhdiscord.outbox_lane) IS
  'Links a Discord account (gate, limit, duplicate checks), encrypts the tokens, queues the role sync (lane: interactive by default, or bulk for an import) and audits discord_account_linked. Token columns of the result are NULL.';

-- ---------- least privilege (issue 12) ----------

-- Who may call what: three predefined NOLOGIN roles (in the spirit of
-- pg_monitor), nothing for PUBLIC, trigger functions only for their own
-- tables, canonical snowflakes everywhere, the database role of every audit
-- row, and an audit log whose append-only guard its owner cannot switch off
-- with DDL.

-------------------------------------------------------------------------------
-- Canonical snowflakes: 17 to 20 digits, no leading zero, at most 2^64 - 1.
-- Existing rows are checked first: the update stops, naming the column and
-- an offending value, rather than storing a constraint that does not hold.
-- (The same rule is LHD_SNOWFLAKE_REGEX in src/lhdiscord.h.)
-------------------------------------------------------------------------------

DO $lhd$
DECLARE
  re constant text := '^([1-9][0-9]{16,18}|1[0-7][0-9]{18}|18[0-3][0-9]{17}|184[0-3][0-9]{16}|1844[0-5][0-9]{15}|18446[0-6][0-9]{14}|184467[0-3][0-9]{13}|1844674[0-3][0-9]{12}|184467440[0-6][0-9]{10}|1844674407[0-2][0-9]{9}|18446744073[0-6][0-9]{8}|1844674407370[0-8][0-9]{6}|18446744073709[0-4][0-9]{5}|184467440737095[0-4][0-9]{4}|18446744073709550[0-9]{3}|18446744073709551[0-5][0-9]{2}|1844674407370955160[0-9]|1844674407370955161[0-4]|18446744073709551615)$';
  body constant text := substr(re, 2, length(re) - 2);
  -- An array of snowflakes: every element canonical, none NULL.
  arr_re constant text := '^(' || body || '(,' || body || ')*)?$';
  col record;
  bad text;
  n bigint;
BEGIN
  -- 1. Existing rows.  Scalar columns, then arrays of ids.
  FOR col IN
    SELECT * FROM (VALUES
      ('discord_accounts', 'discord_user_id', false, false),
      ('snapshot_members', 'discord_user_id', false, false),
      ('outbox', 'discord_user_id', false, false),
      ('role_state', 'discord_user_id', false, false),
      ('fake_members', 'discord_user_id', false, false),
      ('dm_channels', 'discord_user_id', false, false),
      ('dm_channels', 'channel_id', false, false),
      ('role_map', 'discord_role_id', false, true),
      ('fake_calls', 'discord_user_id', false, false),
      ('fake_calls', 'role_id', false, false),
      ('member_snapshots', 'scan_after', false, false),
      ('snapshot_members', 'role_ids', true, false),
      ('role_state', 'role_ids', true, false),
      ('fake_members', 'role_ids', true, false)) AS v(tab, colname, is_array, empty_ok)
  LOOP
    IF col.is_array THEN
      EXECUTE format('SELECT count(*), min(array_to_string(%1$I, '','', ''NULL'')) FROM lhdiscord.%2$I '
                     'WHERE array_position(%1$I, NULL) IS NOT NULL OR array_to_string(%1$I, '','') !~ %3$L',
                     col.colname, col.tab, arr_re)
        INTO n, bad;
    ELSE
      EXECUTE format('SELECT count(*), min(%1$I::text) FROM lhdiscord.%2$I '
                     'WHERE %1$I IS NOT NULL AND %1$I::text !~ %3$L %4$s',
                     col.colname, col.tab, re,
                     CASE WHEN col.empty_ok THEN format('AND %I <> %L', col.colname, '') ELSE '' END)
        INTO n, bad;
    END IF;
    IF n > 0 THEN
      RAISE EXCEPTION 'cannot update lhdiscord to 0.6.0: % row(s) of lhdiscord.%.% hold a non-canonical Discord id, for example "%"',
          n, col.tab, col.colname, bad
        USING ERRCODE = 'check_violation',
              DETAIL = 'A Discord id (snowflake) is 17 to 20 decimal digits without a leading zero, at most 18446744073709551615; 0.6.0 enforces this on every column that holds one.',
              HINT = 'Correct or delete those rows (a leading zero is never part of a Discord id), then run ALTER EXTENSION lhdiscord UPDATE again.';
    END IF;
  END LOOP;

  -- 2. The rule, on every column.
  ALTER DOMAIN lhdiscord.snowflake DROP CONSTRAINT IF EXISTS snowflake_check;
  EXECUTE format('ALTER DOMAIN lhdiscord.snowflake ADD CONSTRAINT snowflake_canonical CHECK (VALUE ~ %L)', re);

  ALTER TABLE lhdiscord.role_map DROP CONSTRAINT IF EXISTS role_map_discord_role_id_check;
  EXECUTE format('ALTER TABLE lhdiscord.role_map ADD CONSTRAINT role_map_discord_role_id_canonical '
                 'CHECK (discord_role_id = '''' OR discord_role_id ~ %L)', re);
  EXECUTE format('ALTER TABLE lhdiscord.fake_calls ADD CONSTRAINT fake_calls_discord_user_id_canonical '
                 'CHECK (discord_user_id ~ %L)', re);
  EXECUTE format('ALTER TABLE lhdiscord.fake_calls ADD CONSTRAINT fake_calls_role_id_canonical '
                 'CHECK (role_id ~ %L)', re);
  ALTER TABLE lhdiscord.member_snapshots DROP CONSTRAINT IF EXISTS member_snapshots_scan_after_check;
  EXECUTE format('ALTER TABLE lhdiscord.member_snapshots ADD CONSTRAINT member_snapshots_scan_after_canonical '
                 'CHECK (scan_after ~ %L)', re);
  EXECUTE format('ALTER TABLE lhdiscord.snapshot_members ADD CONSTRAINT snapshot_members_role_ids_canonical '
                 'CHECK (array_position(role_ids, NULL) IS NULL AND array_to_string(role_ids, '','') ~ %L)', arr_re);
  EXECUTE format('ALTER TABLE lhdiscord.role_state ADD CONSTRAINT role_state_role_ids_canonical '
                 'CHECK (array_position(role_ids, NULL) IS NULL AND array_to_string(role_ids, '','') ~ %L)', arr_re);
  EXECUTE format('ALTER TABLE lhdiscord.fake_members ADD CONSTRAINT fake_members_role_ids_canonical '
                 'CHECK (array_position(role_ids, NULL) IS NULL AND array_to_string(role_ids, '','') ~ %L)', arr_re);
END $lhd$;

COMMENT ON DOMAIN lhdiscord.snowflake IS
  'A Discord id in canonical form: 17 to 20 decimal digits, no leading zero, at most 18446744073709551615 (2^64 - 1).';
COMMENT ON CONSTRAINT snowflake_canonical ON DOMAIN lhdiscord.snowflake IS
  'Canonical snowflake: text equality is numeric equality.';
COMMENT ON CONSTRAINT role_map_discord_role_id_canonical ON lhdiscord.role_map IS
  'Empty (unset) or a canonical snowflake.';
COMMENT ON CONSTRAINT fake_calls_discord_user_id_canonical ON lhdiscord.fake_calls IS 'A canonical snowflake.';
COMMENT ON CONSTRAINT fake_calls_role_id_canonical ON lhdiscord.fake_calls IS 'A canonical snowflake.';
COMMENT ON CONSTRAINT member_snapshots_scan_after_canonical ON lhdiscord.member_snapshots IS
  'The scan cursor is a member id: a canonical snowflake.';
COMMENT ON CONSTRAINT snapshot_members_role_ids_canonical ON lhdiscord.snapshot_members IS
  'Every role id is a canonical snowflake.';
COMMENT ON CONSTRAINT role_state_role_ids_canonical ON lhdiscord.role_state IS
  'Every role id is a canonical snowflake.';
COMMENT ON CONSTRAINT fake_members_role_ids_canonical ON lhdiscord.fake_members IS
  'Every role id is a canonical snowflake.';

-------------------------------------------------------------------------------
-- The database roles behind every audit row.
-------------------------------------------------------------------------------

-- Rows written before 0.6.0 get '' (unknown) without being rewritten or
-- updated (a column default fills them); new rows are stamped by the
-- trigger below, and NOT NULL makes sure no row goes without.
ALTER TABLE lhdiscord.audit_log
  ADD COLUMN db_session_user name NOT NULL DEFAULT '',
  ADD COLUMN db_current_user name NOT NULL DEFAULT '';
ALTER TABLE lhdiscord.audit_log
  ALTER COLUMN db_session_user DROP DEFAULT,
  ALTER COLUMN db_current_user DROP DEFAULT;
COMMENT ON COLUMN lhdiscord.audit_log.db_session_user IS
  'Database login role of the session that wrote the row (session_user); empty for rows written before 0.6.0.';
COMMENT ON COLUMN lhdiscord.audit_log.db_current_user IS
  'Database role in effect for the caller''s statement (current_user outside the extension''s SECURITY DEFINER functions, e.g. after SET ROLE); empty for rows written before 0.6.0.';

CREATE FUNCTION lhdiscord.audit_log_stamp() RETURNS trigger
  LANGUAGE c AS 'MODULE_PATHNAME', 'audit_log_stamp';
COMMENT ON FUNCTION lhdiscord.audit_log_stamp() IS
  'Trigger: records db_session_user and db_current_user on every audit row that does not bring its own (a restore does).';
CREATE TRIGGER audit_log_stamp_roles BEFORE INSERT ON lhdiscord.audit_log
  FOR EACH ROW EXECUTE FUNCTION lhdiscord.audit_log_stamp();
ALTER TABLE lhdiscord.audit_log ENABLE ALWAYS TRIGGER audit_log_stamp_roles;
COMMENT ON TRIGGER audit_log_stamp_roles ON lhdiscord.audit_log IS
  'Records the database roles of every audit row.';

-------------------------------------------------------------------------------
-- The audit log's guard against its owner: no DDL may switch it off.
-- ALTER TABLE (DISABLE TRIGGER, a column rewrite with USING, a new owner),
-- CREATE RULE (DO INSTEAD NOTHING), CREATE TRIGGER (a BEFORE trigger
-- dropping rows), policies, and ALTER/DROP of its triggers and rules are
-- refused on lhdiscord.audit_log outside the extension's own scripts.
-- A later version script that must drop one of its triggers or rules runs
-- ALTER EVENT TRIGGER lhdiscord_audit_log_drop_guard DISABLE first.
-------------------------------------------------------------------------------

CREATE FUNCTION lhdiscord.audit_log_ddl_guard() RETURNS event_trigger
  LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  -- Found in the catalog, not by name: a name lookup would need USAGE on
  -- schema lhdiscord, and this runs for every role's DDL.
  audit oid := (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'lhdiscord' AND c.relname = 'audit_log');
  cmd record;
BEGIN
  IF audit IS NULL THEN
    RETURN;
  END IF;
  IF TG_EVENT = 'ddl_command_end' THEN
    FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
      CONTINUE WHEN cmd.in_extension;
      IF (cmd.classid = 'pg_class'::regclass AND cmd.objid = audit)
         OR (cmd.classid = 'pg_trigger'::regclass
             AND EXISTS (SELECT 1 FROM pg_trigger t WHERE t.oid = cmd.objid AND t.tgrelid = audit))
         OR (cmd.classid = 'pg_rewrite'::regclass
             AND EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.oid = cmd.objid AND r.ev_class = audit))
         OR (cmd.classid = 'pg_policy'::regclass
             AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.oid = cmd.objid AND p.polrelid = audit)) THEN
        RAISE EXCEPTION 'lhdiscord.audit_log is append-only'
          USING ERRCODE = 'insufficient_privilege',
                DETAIL = format('%s is not allowed on the audit log or its triggers, rules and policies.', cmd.command_tag),
                HINT = 'Old rows can be removed only with lhdiscord.purge_audit_log().';
      END IF;
    END LOOP;
  ELSE
    -- sql_drop: a trigger, rule or policy of the audit log, or the table
    -- itself once taken out of the extension.  DROP EXTENSION is not watched.
    FOR cmd IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
      IF (cmd.object_type IN ('trigger', 'rule', 'policy')
          AND cmd.object_identity LIKE '% on lhdiscord.audit_log')
         OR (cmd.object_type = 'table' AND cmd.object_identity = 'lhdiscord.audit_log') THEN
        RAISE EXCEPTION 'lhdiscord.audit_log is append-only'
          USING ERRCODE = 'insufficient_privilege',
                DETAIL = format('%s is not allowed on the audit log or its triggers, rules and policies.', TG_TAG),
                HINT = 'Old rows can be removed only with lhdiscord.purge_audit_log().';
      END IF;
    END LOOP;
  END IF;
END $$;
COMMENT ON FUNCTION lhdiscord.audit_log_ddl_guard() IS
  'Event trigger: refuses DDL that would switch off the audit log''s append-only guard (ALTER TABLE, rules, triggers, policies on lhdiscord.audit_log) outside extension scripts.';

CREATE EVENT TRIGGER lhdiscord_audit_log_ddl_guard ON ddl_command_end
  WHEN TAG IN ('ALTER TABLE', 'CREATE RULE', 'CREATE TRIGGER', 'ALTER TRIGGER',
               'CREATE POLICY', 'ALTER POLICY')
  EXECUTE FUNCTION lhdiscord.audit_log_ddl_guard();
CREATE EVENT TRIGGER lhdiscord_audit_log_drop_guard ON sql_drop
  WHEN TAG IN ('DROP TRIGGER', 'DROP RULE', 'DROP POLICY', 'DROP TABLE')
  EXECUTE FUNCTION lhdiscord.audit_log_ddl_guard();
-- ALWAYS: session_replication_role = replica does not switch them off.
ALTER EVENT TRIGGER lhdiscord_audit_log_ddl_guard ENABLE ALWAYS;
ALTER EVENT TRIGGER lhdiscord_audit_log_drop_guard ENABLE ALWAYS;
COMMENT ON EVENT TRIGGER lhdiscord_audit_log_ddl_guard IS
  'The audit log stays append-only: refuses ALTER TABLE, CREATE RULE/TRIGGER/POLICY and ALTER TRIGGER/POLICY on lhdiscord.audit_log.';
COMMENT ON EVENT TRIGGER lhdiscord_audit_log_drop_guard IS
  'The audit log stays append-only: refuses dropping its triggers, rules and policies.';

-------------------------------------------------------------------------------
-- Break-glass grants and revocations: admins only, audited.
-------------------------------------------------------------------------------

ALTER TABLE lhdiscord.break_glass
  ADD COLUMN revoked_at timestamptz,
  ADD COLUMN revoked_by bigint;
COMMENT ON COLUMN lhdiscord.break_glass.revoked_at IS 'When revoke_break_glass() ended the grant early (expires_at is set to the same time).';
COMMENT ON COLUMN lhdiscord.break_glass.revoked_by IS 'Portal user (an admin) who revoked it.';

CREATE FUNCTION lhdiscord.grant_break_glass(user_id bigint, actor_id bigint, reason text,
    expires_at timestamptz) RETURNS bigint
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  grant_id bigint;
BEGIN
  IF grant_break_glass.user_id IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed', MESSAGE = 'user_id must not be null';
  ELSIF grant_break_glass.actor_id IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed', MESSAGE = 'actor_id must not be null';
  ELSIF grant_break_glass.reason IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed', MESSAGE = 'reason must not be null';
  ELSIF grant_break_glass.expires_at IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed', MESSAGE = 'expires_at must not be null';
  END IF;
  -- Authorise before revealing whether the user exists.
  IF NOT EXISTS (SELECT 1 FROM lhdiscord.user_roles r
                  WHERE r.user_id = grant_break_glass.actor_id AND r.role = 'admin') THEN
    RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege', MESSAGE = 'This action is unauthorized.',
      DETAIL = 'Only an admin can grant break-glass access.';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM lhdiscord.users u WHERE u.user_id = grant_break_glass.user_id) THEN
    RAISE EXCEPTION USING ERRCODE = 'no_data_found',
      MESSAGE = format('user %s does not exist', grant_break_glass.user_id);
  END IF;
  IF char_length(grant_break_glass.reason) > 500 THEN
    RAISE EXCEPTION USING ERRCODE = 'string_data_right_truncation', MESSAGE = 'reason is too long',
      DETAIL = format('It has %s characters; at most 500 are allowed.', char_length(grant_break_glass.reason));
  ELSIF btrim(grant_break_glass.reason) = '' THEN
    RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value', MESSAGE = 'reason must not be empty';
  ELSIF grant_break_glass.expires_at <= now() THEN
    RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value', MESSAGE = 'expires_at must be in the future';
  END IF;

  INSERT INTO lhdiscord.break_glass (user_id, reason, granted_by, expires_at)
  VALUES (grant_break_glass.user_id, grant_break_glass.reason, grant_break_glass.actor_id,
          grant_break_glass.expires_at)
  RETURNING id INTO grant_id;
  INSERT INTO lhdiscord.audit_log (action, actor_user_id, subject_user_id, entity, entity_pk,
                                   after_json, description)
  VALUES ('entitlement.break_glass_granted', grant_break_glass.actor_id, grant_break_glass.user_id,
          'break_glass', grant_id::text,
          jsonb_build_object('grant_id', grant_id, 'reason', grant_break_glass.reason,
                             'expires_at', grant_break_glass.expires_at),
          format('Break-glass access granted by user %s until %s', grant_break_glass.actor_id,
                 grant_break_glass.expires_at));
  RETURN grant_id;
END $$;
COMMENT ON FUNCTION lhdiscord.grant_break_glass(bigint, bigint, text, timestamptz) IS
  'Admin only (actor_id holds portal role admin): exempts a user from suspension until expires_at; audited entitlement.break_glass_granted. Returns the grant id.';

CREATE FUNCTION lhdiscord.revoke_break_glass(grant_id bigint, actor_id bigint) RETURNS boolean
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  g lhdiscord.break_glass;
BEGIN
  IF revoke_break_glass.grant_id IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed', MESSAGE = 'grant_id must not be null';
  ELSIF revoke_break_glass.actor_id IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed', MESSAGE = 'actor_id must not be null';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM lhdiscord.user_roles r
                  WHERE r.user_id = revoke_break_glass.actor_id AND r.role = 'admin') THEN
    RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege', MESSAGE = 'This action is unauthorized.',
      DETAIL = 'Only an admin can revoke break-glass access.';
  END IF;
  SELECT * INTO g FROM lhdiscord.break_glass b WHERE b.id = revoke_break_glass.grant_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'no_data_found',
      MESSAGE = format('break-glass grant %s does not exist', revoke_break_glass.grant_id);
  END IF;
  IF g.expires_at <= now() THEN
    RETURN false;   -- expired or revoked already: nothing written
  END IF;
  UPDATE lhdiscord.break_glass b
     SET expires_at = now(), revoked_at = now(), revoked_by = revoke_break_glass.actor_id
   WHERE b.id = g.id;
  INSERT INTO lhdiscord.audit_log (action, actor_user_id, subject_user_id, entity, entity_pk,
                                   before_json, after_json, description)
  VALUES ('entitlement.break_glass_revoked', revoke_break_glass.actor_id, g.user_id,
          'break_glass', g.id::text,
          jsonb_build_object('expires_at', g.expires_at),
          jsonb_build_object('grant_id', g.id, 'expires_at', now()),
          format('Break-glass grant %s revoked by user %s', g.id, revoke_break_glass.actor_id));
  RETURN true;
END $$;
COMMENT ON FUNCTION lhdiscord.revoke_break_glass(bigint, bigint) IS
  'Admin only: ends a break-glass grant now (the next reconcile decides again); audited entitlement.break_glass_revoked. false when it had ended already.';

-------------------------------------------------------------------------------
-- Snapshot retention.
-------------------------------------------------------------------------------

CREATE FUNCTION lhdiscord.prune_snapshots(older_than interval DEFAULT NULL) RETURNS bigint
  LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'prune_snapshots';
COMMENT ON FUNCTION lhdiscord.prune_snapshots(interval) IS
  'Deletes member snapshots stored before now() - older_than (default lhdiscord.snapshot_retention), keeping the latest trusted, the latest complete and any a scan is filling; audited. Runs on every new snapshot too.';

-------------------------------------------------------------------------------
-- Predefined roles.  Roles are cluster-wide: created only when missing (a
-- second database, or a reinstall, finds them), and DROP EXTENSION leaves
-- them in place (DROP ROLE them by hand once no database uses them).
-------------------------------------------------------------------------------

DO $lhd$
DECLARE
  r record;
BEGIN
  FOR r IN SELECT * FROM (VALUES
      ('lhdiscord_app', 'lhdiscord: the portal application (users and user_roles, accounts, OAuth, notifications, sync, has_access, admin views).'),
      ('lhdiscord_governance', 'lhdiscord: identity governance (reconcile incl. force, restore_user, snapshots, break-glass).'),
      ('lhdiscord_monitor', 'lhdiscord: read-only monitoring (worker_status, outbox_stats, status_map).')) AS v(name, note)
  LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r.name) THEN
      EXECUTE format('CREATE ROLE %I NOLOGIN', r.name);
      EXECUTE format('COMMENT ON ROLE %I IS %L', r.name, r.note);
    END IF;
  END LOOP;
END $lhd$;

-------------------------------------------------------------------------------
-- Privileges: nothing for PUBLIC, then exactly what each role needs.  The
-- loop covers every function of the extension, whichever script created it;
-- every later version script ends with the same loop and grants what it
-- adds or recreates (a recreated view or function loses its grants; the
-- regress test privileges lists who may use every object).  Functions called by
-- the views (decide, access_context, role_drift, worker_state, avatar_url,
-- display_name) are checked against the reader, so readers get them too.
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
REVOKE ALL ON ALL TABLES IN SCHEMA lhdiscord FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA lhdiscord FROM PUBLIC;
REVOKE ALL ON SCHEMA lhdiscord FROM PUBLIC;

GRANT USAGE ON SCHEMA lhdiscord TO lhdiscord_app, lhdiscord_governance, lhdiscord_monitor;

-- lhdiscord_app: the portal.
GRANT SELECT, INSERT, UPDATE, DELETE ON lhdiscord.users, lhdiscord.user_roles TO lhdiscord_app;
GRANT SELECT ON lhdiscord.active_accounts, lhdiscord.account_overview, lhdiscord.status_map TO lhdiscord_app;
GRANT EXECUTE ON FUNCTION
  lhdiscord.can_link(bigint),
  lhdiscord.link_account(bigint, text, text, text, text, text, text, timestamptz, lhdiscord.outbox_lane),
  lhdiscord.unlink_account(bigint, bigint),
  lhdiscord.revoke_account(bigint, bigint),
  lhdiscord.accounts_of(bigint, bigint),
  lhdiscord.has_discord_linked(bigint),
  lhdiscord.avatar_url(lhdiscord.discord_accounts),
  lhdiscord.display_name(lhdiscord.discord_accounts),
  lhdiscord.begin_oauth(bigint),
  lhdiscord.complete_oauth(bigint, text, text),
  lhdiscord.notify(bigint, text, text, lhdiscord.outbox_lane),
  lhdiscord.sync_roles(bigint),
  lhdiscord.sync_staff(bigint),
  lhdiscord.sync_permissions(bigint),
  lhdiscord.desired_roles(text),
  lhdiscord.has_access(bigint),
  lhdiscord.decide(boolean, boolean, boolean),
  lhdiscord.access_context(),
  lhdiscord.role_drift(text, boolean, text, text, text, text[], text[])
  TO lhdiscord_app;

-- lhdiscord_governance: reconcile and its evidence, restores, exemptions.
GRANT EXECUTE ON FUNCTION
  lhdiscord.reconcile(boolean, boolean),
  lhdiscord.reconcile_user(bigint),
  lhdiscord.restore_user(bigint, bigint),
  lhdiscord.load_snapshot(jsonb, timestamptz),
  lhdiscord.accept_snapshot(bigint),
  lhdiscord.request_member_scan(),
  lhdiscord.grant_break_glass(bigint, bigint, text, timestamptz),
  lhdiscord.revoke_break_glass(bigint, bigint)
  TO lhdiscord_governance;

-- lhdiscord_monitor: three views, nothing that writes.
GRANT SELECT ON lhdiscord.worker_status, lhdiscord.outbox_stats, lhdiscord.status_map TO lhdiscord_monitor;
GRANT EXECUTE ON FUNCTION
  lhdiscord.worker_state(),
  lhdiscord.decide(boolean, boolean, boolean),
  lhdiscord.access_context(),
  lhdiscord.role_drift(text, boolean, text, text, text, text[], text[])
  TO lhdiscord_monitor;

-- ---------- ecosystem (issue 15, part) ----------

-- avatar_url() and display_name() on the rows an admin page reads: the
-- account views.  Their rows carry the values the discord_accounts variants
-- computed from the account (the views have no avatar_hash to recompute
-- from), so each overload returns its view's own column.
CREATE FUNCTION lhdiscord.avatar_url(lhdiscord.active_accounts) RETURNS text
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
  AS $$ SELECT $1.avatar_url $$;
COMMENT ON FUNCTION lhdiscord.avatar_url(lhdiscord.active_accounts) IS
  'Discord CDN URL of the account''s avatar, or the default avatar (the row''s avatar_url column).';
CREATE FUNCTION lhdiscord.avatar_url(lhdiscord.account_overview) RETURNS text
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
  AS $$ SELECT $1.avatar_url $$;
COMMENT ON FUNCTION lhdiscord.avatar_url(lhdiscord.account_overview) IS
  'Discord CDN URL of the account''s avatar, or the default avatar (the row''s avatar_url column).';
CREATE FUNCTION lhdiscord.display_name(lhdiscord.active_accounts) RETURNS text
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
  AS $$ SELECT $1.display_name $$;
COMMENT ON FUNCTION lhdiscord.display_name(lhdiscord.active_accounts) IS
  'global_name if set, otherwise username (the row''s display_name column).';
CREATE FUNCTION lhdiscord.display_name(lhdiscord.account_overview) RETURNS text
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
  AS $$ SELECT $1.display_name $$;
COMMENT ON FUNCTION lhdiscord.display_name(lhdiscord.account_overview) IS
  'global_name if set, otherwise username (the row''s display_name column).';
REVOKE ALL ON FUNCTION
  lhdiscord.avatar_url(lhdiscord.active_accounts),
  lhdiscord.avatar_url(lhdiscord.account_overview),
  lhdiscord.display_name(lhdiscord.active_accounts),
  lhdiscord.display_name(lhdiscord.account_overview)
  FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
  lhdiscord.avatar_url(lhdiscord.active_accounts),
  lhdiscord.avatar_url(lhdiscord.account_overview),
  lhdiscord.display_name(lhdiscord.active_accounts),
  lhdiscord.display_name(lhdiscord.account_overview)
  TO lhdiscord_app;

-- Every view column and every identity sequence is documented.
COMMENT ON COLUMN lhdiscord.active_accounts.id IS 'Account id (discord_accounts.id).';
COMMENT ON COLUMN lhdiscord.active_accounts.user_id IS 'Owning portal user.';
COMMENT ON COLUMN lhdiscord.active_accounts.portal_username IS 'The owner''s portal username (users.username).';
COMMENT ON COLUMN lhdiscord.active_accounts.discord_user_id IS 'Discord user id (snowflake).';
COMMENT ON COLUMN lhdiscord.active_accounts.username IS 'Discord username.';
COMMENT ON COLUMN lhdiscord.active_accounts.global_name IS 'Discord display name, if set.';
COMMENT ON COLUMN lhdiscord.active_accounts.display_name IS 'global_name if set, otherwise username (display_name()).';
COMMENT ON COLUMN lhdiscord.active_accounts.avatar_url IS 'Discord CDN URL of the avatar, or the default avatar (avatar_url()).';
COMMENT ON COLUMN lhdiscord.active_accounts.verified_at IS 'When linking completed.';
COMMENT ON COLUMN lhdiscord.active_accounts.created_at IS 'Account row creation time.';
COMMENT ON COLUMN lhdiscord.active_accounts.updated_at IS 'Account row last change time.';

COMMENT ON COLUMN lhdiscord.account_overview.id IS 'Account id (discord_accounts.id).';
COMMENT ON COLUMN lhdiscord.account_overview.user_id IS 'Owning portal user.';
COMMENT ON COLUMN lhdiscord.account_overview.portal_username IS 'The owner''s portal username (users.username).';
COMMENT ON COLUMN lhdiscord.account_overview.membership_level IS 'The owner''s membership level.';
COMMENT ON COLUMN lhdiscord.account_overview.staff_department IS 'The owner''s staff department, or NULL for none.';
COMMENT ON COLUMN lhdiscord.account_overview.staff_rank IS 'The owner''s staff rank (none when not staff).';
COMMENT ON COLUMN lhdiscord.account_overview.in_brig IS 'True while the owner is in the brig.';
COMMENT ON COLUMN lhdiscord.account_overview.discord_user_id IS 'Discord user id (snowflake).';
COMMENT ON COLUMN lhdiscord.account_overview.username IS 'Discord username.';
COMMENT ON COLUMN lhdiscord.account_overview.global_name IS 'Discord display name, if set.';
COMMENT ON COLUMN lhdiscord.account_overview.display_name IS 'global_name if set, otherwise username (display_name()).';
COMMENT ON COLUMN lhdiscord.account_overview.avatar_url IS 'Discord CDN URL of the avatar, or the default avatar (avatar_url()).';
COMMENT ON COLUMN lhdiscord.account_overview.status IS 'active, or brigged while the owner is in the brig.';
COMMENT ON COLUMN lhdiscord.account_overview.has_access_token IS 'An OAuth access token is stored (its value is never shown).';
COMMENT ON COLUMN lhdiscord.account_overview.token_expires_at IS 'OAuth access token expiry.';
COMMENT ON COLUMN lhdiscord.account_overview.verified_at IS 'When linking completed.';
COMMENT ON COLUMN lhdiscord.account_overview.created_at IS 'Account row creation time.';
COMMENT ON COLUMN lhdiscord.account_overview.updated_at IS 'Account row last change time.';
COMMENT ON COLUMN lhdiscord.account_overview.pending_jobs IS 'Outbox jobs pending or in flight for this Discord user.';
COMMENT ON COLUMN lhdiscord.account_overview.tokens_stale IS 'True when refreshing the OAuth tokens failed for good; the account stays linked.';

COMMENT ON COLUMN lhdiscord.status_map.user_id IS 'The application''s user id.';
COMMENT ON COLUMN lhdiscord.status_map.username IS 'Portal username.';
COMMENT ON COLUMN lhdiscord.status_map.identity_status IS 'users.status: active, suspended or disabled.';
COMMENT ON COLUMN lhdiscord.status_map.eligible IS 'In scope: users.in_scope, the application''s access-policy outcome for access.login.';
COMMENT ON COLUMN lhdiscord.status_map.entitled IS 'Entitled by the governance mode: the entitlement role in a fresh trusted snapshot (Discord-leading) or the entitlement portal role (Portal-leading).';
COMMENT ON COLUMN lhdiscord.status_map.privileged IS 'Holds a privileged portal role or an active break-glass exemption.';
COMMENT ON COLUMN lhdiscord.status_map.effective_access IS 'Access at runtime, as has_access(): active, and in scope and entitled, or privileged.';
COMMENT ON COLUMN lhdiscord.status_map.policy_outcome IS 'compliant, exempt (active only through a privilege) or non_compliant (status disagrees with the decision).';
COMMENT ON COLUMN lhdiscord.status_map.drift IS 'Discord roles against the desired set: none, missing_role, excess_role, stale_snapshot or unlinked.';
COMMENT ON COLUMN lhdiscord.status_map.snapshot_age IS 'Age of the member snapshot used as evidence; NULL when there is none.';

COMMENT ON SEQUENCE lhdiscord.discord_accounts_id_seq IS 'Identity of discord_accounts.id.';
COMMENT ON SEQUENCE lhdiscord.member_snapshots_id_seq IS 'Identity of member_snapshots.id.';
COMMENT ON SEQUENCE lhdiscord.outbox_id_seq IS 'Identity of outbox.id.';
COMMENT ON SEQUENCE lhdiscord.audit_log_id_seq IS 'Identity of audit_log.id.';
COMMENT ON SEQUENCE lhdiscord.break_glass_id_seq IS 'Identity of break_glass.id.';
COMMENT ON SEQUENCE lhdiscord.fake_calls_id_seq IS 'Identity of fake_calls.id.';
