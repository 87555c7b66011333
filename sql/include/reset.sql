-- Shared preamble of every regression test: a fresh extension, login roles
-- set up exactly as README.md tells a DBA (lhd_app in lhdiscord_app, lhd_gov
-- in lhdiscord_governance, lhd_watch in lhdiscord_monitor; lhd_stranger is
-- granted nothing), and a helper that reports an error as "SQLSTATE: message".
--
-- Self-contained: whatever the server's configuration, the tests run against
-- the fake Discord API, with a fixed guild, and with no bot token or client
-- secret in this session; the API base URL points at the discard port of
-- the loopback interface, so even a mistake cannot reach Discord.  Only the
-- encryption key comes from the server (secrets cannot be set per session).
SET client_min_messages = warning;
SET lhdiscord.api_mode = 'fake';
SET lhdiscord.api_base_url = 'http://127.0.0.1:9/api/v10';
SET lhdiscord.guild_id = '100000000000000001';
SET lhdiscord.bot_token = '';
SET lhdiscord.client_secret = '';
SET lhdiscord.client_id = '';
SET lhdiscord.redirect_uri = '';
SET lhdiscord.governance_mode = 'discord_leading';
SET lhdiscord.entitlement_key = 'hauling.member';
SET lhdiscord.privileged_roles = 'admin,subadmin';
SET lhdiscord.max_discord_accounts = 1;
SET lhdiscord.snapshot_max_age = 21600;
SET lhdiscord.snapshot_max_shrink_percent = 50;
SET lhdiscord.reconcile_max_suspend_percent = 20;
DROP EXTENSION IF EXISTS lhdiscord CASCADE;
CREATE EXTENSION lhdiscord;
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lhd_app') THEN
    CREATE ROLE lhd_app LOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lhd_gov') THEN
    CREATE ROLE lhd_gov LOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lhd_watch') THEN
    CREATE ROLE lhd_watch LOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lhd_stranger') THEN
    CREATE ROLE lhd_stranger LOGIN;
  END IF;
END $$;
GRANT lhdiscord_app TO lhd_app;
GRANT lhdiscord_governance TO lhd_gov;
GRANT lhdiscord_monitor TO lhd_watch;
CREATE OR REPLACE FUNCTION public.expect_error(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE stmt;
  RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
RESET client_min_messages;
