-- Shared preamble of every regression test: a fresh extension, the
-- application's login role granted exactly what README.md tells a DBA to
-- grant, and a helper that reports an error as "SQLSTATE: message".
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS lhdiscord CASCADE;
CREATE EXTENSION lhdiscord;
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lhd_app') THEN
    CREATE ROLE lhd_app LOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lhd_stranger') THEN
    CREATE ROLE lhd_stranger LOGIN;
  END IF;
END $$;
GRANT USAGE ON SCHEMA lhdiscord TO lhd_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON lhdiscord.users, lhdiscord.user_roles TO lhd_app;
GRANT SELECT ON lhdiscord.active_accounts, lhdiscord.account_overview TO lhd_app;
CREATE OR REPLACE FUNCTION public.expect_error(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE stmt;
  RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
RESET client_min_messages;
