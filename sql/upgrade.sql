-- ALTER EXTENSION lhdiscord UPDATE from the first release, with data in it:
-- the data survives, the new objects work, and the result has exactly the
-- objects of a fresh install.
SET client_min_messages = warning;
-- Self-contained: the fake Discord API, whatever the server's settings.
SET lhdiscord.api_mode = 'fake';
SET lhdiscord.api_base_url = 'http://127.0.0.1:9/api/v10';
SET lhdiscord.guild_id = '100000000000000001';
SET lhdiscord.bot_token = '';
CREATE OR REPLACE FUNCTION public.expect_error(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE stmt;
  RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

-- 0.6.0 enforces canonical snowflakes: an update over a non-canonical row
-- stops with an error naming the column and the value, and changes nothing.
DROP EXTENSION IF EXISTS lhdiscord CASCADE;
CREATE EXTENSION lhdiscord VERSION '0.5.0';
RESET client_min_messages;
INSERT INTO lhdiscord.member_snapshots (complete) VALUES (true);
INSERT INTO lhdiscord.snapshot_members (snapshot_id, discord_user_id)
  SELECT id, '0200000000000000001' FROM lhdiscord.member_snapshots;
INSERT INTO lhdiscord.fake_members VALUES ('200000000000000001', '{99999999999999999999}');
SELECT expect_error('ALTER EXTENSION lhdiscord UPDATE');
SELECT extversion FROM pg_extension WHERE extname = 'lhdiscord';
DELETE FROM lhdiscord.snapshot_members;
SELECT expect_error('ALTER EXTENSION lhdiscord UPDATE');
DELETE FROM lhdiscord.fake_members;
ALTER EXTENSION lhdiscord UPDATE TO '0.6.0';
SELECT extversion FROM pg_extension WHERE extname = 'lhdiscord';

SET client_min_messages = warning;
DROP EXTENSION IF EXISTS lhdiscord CASCADE;
CREATE EXTENSION lhdiscord VERSION '0.1.0';
RESET client_min_messages;
SELECT extversion FROM pg_extension WHERE extname = 'lhdiscord';

INSERT INTO lhdiscord.users (user_id, username, membership_level) VALUES (1, 'alice', 'resident');
SELECT discord_user_id, status FROM lhdiscord.link_account(1, '100000000000000001', 'alice_d');
SELECT kind, state FROM lhdiscord.outbox;

ALTER EXTENSION lhdiscord UPDATE;
SELECT extversion = (SELECT default_version FROM pg_available_extensions WHERE name = 'lhdiscord') AS at_default_version
  FROM pg_extension WHERE extname = 'lhdiscord';

-- Data kept; the engine converges the job queued before the update.
SELECT user_id, discord_user_id, status FROM lhdiscord.discord_accounts;
SELECT lhdiscord.map_role('resident', '900000000000000102');
SELECT lhdiscord.drain_outbox();
SELECT method, role_id FROM lhdiscord.fake_calls ORDER BY id;
SELECT action, db_session_user, db_current_user FROM lhdiscord.audit_log ORDER BY id;

-- Same objects as a fresh install.
CREATE TEMP TABLE upgraded AS
  SELECT pg_describe_object(classid, objid, objsubid) AS obj
    FROM pg_depend WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
     AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'lhdiscord');
SET client_min_messages = warning;
DROP EXTENSION lhdiscord CASCADE;
CREATE EXTENSION lhdiscord;
RESET client_min_messages;
CREATE TEMP TABLE fresh AS
  SELECT pg_describe_object(classid, objid, objsubid) AS obj
    FROM pg_depend WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
     AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'lhdiscord');
SELECT count(*) > 20 AS has_objects FROM fresh;
(SELECT obj FROM upgraded EXCEPT SELECT obj FROM fresh)
UNION ALL
(SELECT obj FROM fresh EXCEPT SELECT obj FROM upgraded);

-- 0.7.0's worker_status also calls gateway_state(): a monitoring role that
-- an older README had granted worker_state() by hand keeps reading it.
SET client_min_messages = warning;
DROP EXTENSION lhdiscord CASCADE;
CREATE EXTENSION lhdiscord VERSION '0.6.0';
DROP ROLE IF EXISTS lhd_old_monitor;
CREATE ROLE lhd_old_monitor;
RESET client_min_messages;
GRANT USAGE ON SCHEMA lhdiscord TO lhd_old_monitor;
GRANT SELECT ON lhdiscord.worker_status TO lhd_old_monitor;
GRANT EXECUTE ON FUNCTION lhdiscord.worker_state() TO lhd_old_monitor;
ALTER EXTENSION lhdiscord UPDATE TO '0.7.0';
SET ROLE lhd_old_monitor;
SELECT running IS NOT NULL AS reads_worker_status, gateway_state FROM lhdiscord.worker_status;
RESET ROLE;
SELECT has_function_privilege('lhd_old_monitor', 'lhdiscord.gateway_state()', 'EXECUTE') AS carried_over,
       has_function_privilege('lhd_app', 'lhdiscord.gateway_state()', 'EXECUTE') AS not_for_the_app;
SET client_min_messages = warning;
DROP OWNED BY lhd_old_monitor;
DROP ROLE lhd_old_monitor;
RESET client_min_messages;
