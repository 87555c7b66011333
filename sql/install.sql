-- Packaging: versions, catalog hygiene, privileges and configuration checks.
\i sql/include/reset.sql

SELECT extname, extversion, extrelocatable, extnamespace::regnamespace AS schema
  FROM pg_extension WHERE extname = 'lhdiscord';

-- Every member object of the extension carries a COMMENT.
SELECT pg_describe_object(d.classid, d.objid, 0) AS uncommented
  FROM pg_depend d
 WHERE d.refclassid = 'pg_extension'::regclass
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'lhdiscord')
   AND d.deptype = 'e'
   AND d.classid <> 'pg_class'::regclass  -- relations are checked below
   -- from PostgreSQL 17 on, relations' row types and array types are members
   -- too: implicit objects, commented through their relation or element type
   AND NOT EXISTS (SELECT 1 FROM pg_type t
                    WHERE d.classid = 'pg_type'::regclass AND t.oid = d.objid
                      AND ((t.typrelid <> 0 AND (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) <> 'c')
                           OR EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid)))
   AND obj_description(d.objid, d.classid::regclass::text) IS NULL
 ORDER BY 1;
SELECT c.oid::regclass AS uncommented_relation
  FROM pg_class c
 WHERE c.relnamespace = 'lhdiscord'::regnamespace
   AND c.relkind IN ('r', 'v', 'i', 'm', 'S')  -- identity sequences too
   AND obj_description(c.oid, 'pg_class') IS NULL
 ORDER BY 1;
-- Columns of tables and of views.
SELECT a.attrelid::regclass AS rel, a.attname AS uncommented_column
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
 WHERE c.relnamespace = 'lhdiscord'::regnamespace AND c.relkind IN ('r', 'v', 'm')
   AND a.attnum > 0 AND NOT a.attisdropped
   AND col_description(a.attrelid, a.attnum) IS NULL
 ORDER BY 1, 2;
SELECT t.tgrelid::regclass AS rel, t.tgname AS uncommented_trigger
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE c.relnamespace = 'lhdiscord'::regnamespace AND NOT t.tgisinternal
   AND obj_description(t.oid, 'pg_trigger') IS NULL
 ORDER BY 1, 2;

-- PUBLIC (here: a role granted nothing) has no table privileges at all.
SELECT c.oid::regclass AS public_can_touch
  FROM pg_class c
 WHERE c.relnamespace = 'lhdiscord'::regnamespace AND c.relkind IN ('r', 'v')
   AND has_table_privilege('lhd_stranger', c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
 ORDER BY 1;

-- Every SECURITY DEFINER function pins search_path.
SELECT p.oid::regprocedure AS definer_without_search_path
  FROM pg_proc p
 WHERE p.pronamespace = 'lhdiscord'::regnamespace AND p.prosecdef
   AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)
 ORDER BY 1;

-- Functions PUBLIC must not call.
SELECT p.oid::regprocedure AS fn, has_function_privilege('lhd_stranger', p.oid, 'EXECUTE') AS public_execute
  FROM pg_proc p
 WHERE p.pronamespace = 'lhdiscord'::regnamespace
   AND p.proname IN ('account_tokens', 'purge_audit_log')
 ORDER BY 1;

-- Tables with user data are dumped by pg_dump.
SELECT unnest(extconfig)::regclass AS dumped FROM pg_extension WHERE extname = 'lhdiscord' ORDER BY 1;

-- Configuration: defaults of SPEC section 4 (boot values: the server's
-- configuration and the preamble's SETs do not show here).
SELECT name, boot_val AS setting, unit, context
  FROM pg_settings WHERE name LIKE 'lhdiscord.%'
   AND name NOT IN ('lhdiscord.bot_token', 'lhdiscord.client_secret', 'lhdiscord.encryption_key',
                    'lhdiscord.api_mode', 'lhdiscord.guild_id')
 ORDER BY name;

-- Bad values are rejected with a clear error.
SET lhdiscord.api_base_url = 'http://discord.com/api/v10';
SET lhdiscord.api_base_url = 'ftp://127.0.0.1/api';
SET lhdiscord.api_base_url = '';
-- user information would make curl log in at evil.example, over plain http
SET lhdiscord.api_base_url = 'http://127.0.0.1:1@evil.example/api/v10';
SET lhdiscord.api_base_url = 'https://user:pw@discord.com/api/v10';
-- not a loopback address (five octets: a DNS name)
SET lhdiscord.api_base_url = 'http://127.0.0.1.1/api/v10';
SET lhdiscord.api_base_url = 'http://127.0.0.256/api/v10';
SHOW lhdiscord.api_base_url;
SET lhdiscord.api_base_url = 'http://127.0.0.1:9/api/v10/';
SHOW lhdiscord.api_base_url;
SET lhdiscord.api_base_url = 'http://[::1]:9/api/v10';
RESET lhdiscord.api_base_url;
SET lhdiscord.api_mode = 'sometimes';
SET lhdiscord.governance_mode = 'anarchy';
SET lhdiscord.max_discord_accounts = 0;
-- Range errors of settings with units: only the SQLSTATE (from PostgreSQL 17
-- on the message shows the unit).
\set VERBOSITY sqlstate
SET lhdiscord.snapshot_max_age = -1;
SET lhdiscord.reconcile_interval = -5;
\set VERBOSITY default
SET lhdiscord.reconcile_max_suspend_percent = 101;
SET lhdiscord.snapshot_max_shrink_percent = -1;
SET lhdiscord.guild_id = '12345';
SET lhdiscord.client_id = 'not-a-snowflake';
SET lhdiscord.redirect_uri = 'javascript:alert(1)';
SET lhdiscord.entitlement_key = 'has space';
SET lhdiscord.privileged_roles = 'admin, not a role';
SET lhdiscord.privileged_roles = 'admin, subadmin, hauling.lead';
SHOW lhdiscord.privileged_roles;
RESET lhdiscord.privileged_roles;
-- Secrets: a rejected value is never echoed back.
SET lhdiscord.encryption_key = 'deadbeef-not-a-key';
SET lhdiscord.bot_token = E'abc\ndef';
SET lhdiscord.nonexistent_setting = 1;
-- Secrets come only from the server's configuration: a session, even a
-- superuser's, cannot give one a value (the mask of a set secret, SHOW
-- "********", is tested in TAP, where postgresql.conf sets them); it may
-- only clear one for itself.
SET lhdiscord.bot_token = 'a-bot-token-value';
SET lhdiscord.client_secret = 'a-client-secret';
SET lhdiscord.bot_token = '';
SHOW lhdiscord.bot_token;
SELECT current_setting('lhdiscord.bot_token') AS bot_token;

-- Secrets are superuser-only and hidden from SHOW ALL.
SELECT count(*) AS secrets_in_show_all
  FROM pg_settings WHERE name IN ('lhdiscord.bot_token', 'lhdiscord.client_secret', 'lhdiscord.encryption_key');
SET ROLE lhd_app;
-- (only the SQLSTATE: PostgreSQL 17 rewrote this message)
\set VERBOSITY sqlstate
SHOW lhdiscord.bot_token;
SHOW lhdiscord.encryption_key;
SHOW lhdiscord.client_secret;
\set VERBOSITY default
SHOW lhdiscord.max_discord_accounts;
SET lhdiscord.max_discord_accounts = 5;
SET lhdiscord.governance_mode = 'portal_leading';
RESET ROLE;
