-- lhdiscord 0.2.0 -> 0.3.0: the outbox worker (Discord REST v10 over
-- libcurl), wake-on-commit, DMs with exactly-once delivery, status views.

\echo Use "ALTER EXTENSION lhdiscord UPDATE TO '0.3.0'" to load this file. \quit

CREATE TABLE lhdiscord.dm_channels (
  discord_user_id lhdiscord.snowflake PRIMARY KEY,
  channel_id      lhdiscord.snowflake NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE lhdiscord.dm_channels IS 'Cached DM channel of each Discord user (created once, reused).';
COMMENT ON COLUMN lhdiscord.dm_channels.discord_user_id IS 'Recipient.';
COMMENT ON COLUMN lhdiscord.dm_channels.channel_id IS 'DM channel id returned by POST /users/@me/channels.';
COMMENT ON COLUMN lhdiscord.dm_channels.created_at IS 'When the channel was (re)created.';
COMMENT ON INDEX lhdiscord.dm_channels_pkey IS 'One DM channel per recipient.';
SELECT pg_catalog.pg_extension_config_dump('lhdiscord.dm_channels', '');

CREATE INDEX outbox_dm_live_idx ON lhdiscord.outbox (discord_user_id, id)
  WHERE kind = 'dm' AND state IN ('pending', 'in_flight');
COMMENT ON INDEX lhdiscord.outbox_dm_live_idx IS
  'DMs of one recipient are delivered one at a time, oldest first.';

-- Wake the worker when a transaction that queued work commits.
CREATE FUNCTION lhdiscord.outbox_wake() RETURNS trigger
  LANGUAGE c AS 'MODULE_PATHNAME', 'outbox_wake';
COMMENT ON FUNCTION lhdiscord.outbox_wake() IS
  'Trigger: the worker''s latch is set when this transaction commits (not on rollback).';
CREATE TRIGGER outbox_wake_worker AFTER INSERT OR UPDATE ON lhdiscord.outbox
  FOR EACH STATEMENT EXECUTE FUNCTION lhdiscord.outbox_wake();
COMMENT ON TRIGGER outbox_wake_worker ON lhdiscord.outbox IS 'Wakes the worker on commit.';

CREATE FUNCTION lhdiscord.worker_state(
    OUT running boolean, OUT pid integer, OUT started_at timestamptz,
    OUT last_activity_at timestamptz, OUT paused boolean, OUT pause_reason text,
    OUT calls bigint, OUT responses_2xx bigint, OUT responses_4xx bigint,
    OUT responses_5xx bigint, OUT rate_limited bigint, OUT transport_errors bigint,
    OUT invalid_requests_10min integer, OUT throttled boolean,
    OUT last_error text, OUT last_error_at timestamptz, OUT preloaded boolean)
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
         (SELECT now() - min(created_at) FROM lhdiscord.outbox WHERE state = 'pending') AS oldest_pending_age
    FROM lhdiscord.worker_state() w;
COMMENT ON VIEW lhdiscord.worker_status IS
  'The background worker: running or not, paused (401), calls, responses, 429s, invalid-request count, last error, queue depth.';

CREATE VIEW lhdiscord.outbox_stats AS
  SELECT kind, state, count(*) AS jobs,
         min(created_at) AS oldest_created_at,
         CASE WHEN state IN ('pending', 'in_flight') THEN now() - min(created_at) END AS oldest_age,
         max(attempts) AS max_attempts,
         sum(CASE WHEN run_after > now() THEN 1 ELSE 0 END) AS waiting_for_retry
    FROM lhdiscord.outbox
   GROUP BY kind, state;
COMMENT ON VIEW lhdiscord.outbox_stats IS
  'Queue depth per job kind and state, with the age of the oldest job and jobs waiting for a retry.';

CREATE FUNCTION lhdiscord.prune_outbox(older_than interval DEFAULT NULL) RETURNS bigint
  LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'prune_outbox';
COMMENT ON FUNCTION lhdiscord.prune_outbox(interval) IS
  'Deletes finished (done, failed, dead) jobs older than older_than (default lhdiscord.outbox_retention); the worker prunes on its own.';
REVOKE ALL ON FUNCTION lhdiscord.prune_outbox(interval) FROM PUBLIC;
