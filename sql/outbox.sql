-- The outbox in fake mode: DM jobs (channel cached, parts in order, nonces),
-- content splitting, per-recipient ordering, the status views and pruning.
\i sql/include/reset.sql

-- A DM job queued by hand: content over 2000 characters is split on a line,
-- then on a word boundary, never inside a word unless it must.
INSERT INTO lhdiscord.outbox (kind, discord_user_id, payload) VALUES
  ('dm', '100000000000000001',
   jsonb_build_object('content', repeat('x', 1990) || E'\nsecond line ' || repeat('word ', 500))),
  ('dm', '100000000000000001', jsonb_build_object('content', repeat('y', 4500))),
  ('dm', '100000000000000002', jsonb_build_object('content', 'short and sweet'));
SELECT kind, state, jobs, oldest_age IS NOT NULL AS has_age FROM lhdiscord.outbox_stats ORDER BY 1, 2;
SELECT lhdiscord.drain_outbox();
-- Each part's nonce is "<the job's random nonce>-<part>": shown as job id and part.
SELECT method, route, length(body->>'content') AS chars,
       (SELECT o.id FROM lhdiscord.outbox o WHERE o.nonce = split_part(body->>'nonce', '-', 1)) AS nonce_job,
       split_part(body->>'nonce', '-', 2) AS part, body->'enforce_nonce' AS enforce
  FROM lhdiscord.fake_calls ORDER BY id;
SELECT count(DISTINCT nonce) = count(*) AS nonces_unique, bool_and(nonce ~ '^[0-9a-f]{20}$') AS nonces_random_hex
  FROM lhdiscord.outbox;
SELECT discord_user_id, channel_id FROM lhdiscord.dm_channels ORDER BY 1;
SELECT id, state, attempts, payload->'parts_sent' AS parts_sent FROM lhdiscord.outbox ORDER BY id;

-- Parts are exact slices of the content.
SELECT string_agg(body->>'content', '' ORDER BY id) = repeat('y', 4500) AS hard_split_lossless
  FROM lhdiscord.fake_calls WHERE body->>'content' LIKE 'y%';

-- The channel is reused: one more DM opens no new channel.  worker_status
-- counts fake calls like real ones.
TRUNCATE lhdiscord.fake_calls;
SELECT calls AS calls_before, responses_2xx AS ok_before FROM lhdiscord.worker_status \gset
INSERT INTO lhdiscord.outbox (kind, discord_user_id, payload)
  VALUES ('dm', '100000000000000002', '{"parts": ["again"]}');
SELECT lhdiscord.drain_outbox();
SELECT method, route FROM lhdiscord.fake_calls ORDER BY id;
SELECT calls - :calls_before AS calls, responses_2xx - :ok_before AS responses_2xx FROM lhdiscord.worker_status;

-- A job without content fails cleanly.
INSERT INTO lhdiscord.outbox (kind, discord_user_id, payload) VALUES ('dm', '100000000000000002', '{}');
SELECT lhdiscord.drain_outbox();
SELECT state, last_error FROM lhdiscord.outbox ORDER BY id DESC LIMIT 1;

-- Views.
SELECT kind, state, jobs, oldest_age, waiting_for_retry FROM lhdiscord.outbox_stats ORDER BY 1, 2;
SELECT running, preloaded, paused, api_mode, pending_jobs, in_flight_jobs FROM lhdiscord.worker_status;
SET ROLE lhd_app;
SELECT count(*) FROM lhdiscord.worker_status;
SELECT count(*) FROM lhdiscord.outbox_stats;
SELECT lhdiscord.prune_outbox();
RESET ROLE;
-- A monitoring role, granted as the README says, reads both views and
-- nothing else.  (worker_status calls worker_state() and gateway_state(),
-- whose EXECUTE is checked for the reading role.)
CREATE ROLE lhd_watcher;
GRANT USAGE ON SCHEMA lhdiscord TO lhd_watcher;
GRANT SELECT ON lhdiscord.worker_status, lhdiscord.outbox_stats TO lhd_watcher;
GRANT EXECUTE ON FUNCTION lhdiscord.worker_state(), lhdiscord.gateway_state() TO lhd_watcher;
SET ROLE lhd_watcher;
SELECT running, paused FROM lhdiscord.worker_status;
SELECT count(*) > 0 AS has_rows FROM lhdiscord.outbox_stats;
SELECT count(*) FROM lhdiscord.outbox;
RESET ROLE;
DROP OWNED BY lhd_watcher;
DROP ROLE lhd_watcher;

-- Pruning: finished jobs older than the retention go, the rest stay.
UPDATE lhdiscord.outbox SET finished_at = now() - interval '8 days' WHERE id <= 2;
SELECT lhdiscord.prune_outbox();
SELECT lhdiscord.prune_outbox('1 hour');
SELECT count(*) AS left_over FROM lhdiscord.outbox;
SELECT lhdiscord.prune_outbox('-1 day');
