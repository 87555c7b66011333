-- lhdiscord 0.1.0 -> 0.2.0: the desired-state role engine, its triggers and
-- the fake Discord API.

\echo Use "ALTER EXTENSION lhdiscord UPDATE TO '0.2.0'" to load this file. \quit

-------------------------------------------------------------------------------
-- State kept by the engine and the fake API
-------------------------------------------------------------------------------

CREATE TABLE lhdiscord.role_state (
  discord_user_id lhdiscord.snowflake PRIMARY KEY,
  role_ids        text[] NOT NULL,
  synced_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE lhdiscord.role_state IS
  'Roles each Discord member held after its last successful convergence; lets a convergence send only the calls that change something. No row = unknown (the next convergence reads the member).';
COMMENT ON COLUMN lhdiscord.role_state.discord_user_id IS 'Discord user.';
COMMENT ON COLUMN lhdiscord.role_state.role_ids IS 'Discord role ids the member holds, as far as lhdiscord knows.';
COMMENT ON COLUMN lhdiscord.role_state.synced_at IS 'When the state was last confirmed.';
COMMENT ON INDEX lhdiscord.role_state_pkey IS 'One state per Discord user.';

CREATE TABLE lhdiscord.fake_calls (
  id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  called_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
  method          text NOT NULL,
  route           text NOT NULL,
  discord_user_id text,
  role_id         text,
  body            jsonb,
  status          integer NOT NULL
);
COMMENT ON TABLE lhdiscord.fake_calls IS
  'Discord calls answered by the fake API (lhdiscord.api_mode = fake), in order; secrets are never recorded.';
COMMENT ON COLUMN lhdiscord.fake_calls.id IS 'Call order.';
COMMENT ON COLUMN lhdiscord.fake_calls.called_at IS 'When the call was made.';
COMMENT ON COLUMN lhdiscord.fake_calls.method IS 'HTTP method.';
COMMENT ON COLUMN lhdiscord.fake_calls.route IS 'Path (and query) below the API base URL.';
COMMENT ON COLUMN lhdiscord.fake_calls.discord_user_id IS 'Discord user the call concerns.';
COMMENT ON COLUMN lhdiscord.fake_calls.role_id IS 'Discord role of a role call.';
COMMENT ON COLUMN lhdiscord.fake_calls.body IS 'JSON request body, if any.';
COMMENT ON COLUMN lhdiscord.fake_calls.status IS 'HTTP status the fake answered.';
COMMENT ON INDEX lhdiscord.fake_calls_pkey IS 'Primary key of fake_calls.';

CREATE TABLE lhdiscord.fake_members (
  discord_user_id lhdiscord.snowflake PRIMARY KEY,
  role_ids        text[] NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE lhdiscord.fake_members IS
  'The fake API''s simulated guild: members and their roles. Seed it to simulate roles lhdiscord does not manage.';
COMMENT ON COLUMN lhdiscord.fake_members.discord_user_id IS 'Member.';
COMMENT ON COLUMN lhdiscord.fake_members.role_ids IS 'Roles the simulated member holds.';
COMMENT ON INDEX lhdiscord.fake_members_pkey IS 'One simulated member per Discord user.';

-------------------------------------------------------------------------------
-- Triggers
-------------------------------------------------------------------------------

CREATE FUNCTION lhdiscord.touch_updated_at() RETURNS trigger
  LANGUAGE c AS 'MODULE_PATHNAME', 'touch_updated_at';
COMMENT ON FUNCTION lhdiscord.touch_updated_at() IS 'Trigger: sets updated_at on UPDATE.';

CREATE TRIGGER users_touch BEFORE UPDATE ON lhdiscord.users
  FOR EACH ROW EXECUTE FUNCTION lhdiscord.touch_updated_at();
COMMENT ON TRIGGER users_touch ON lhdiscord.users IS 'Maintains updated_at.';
CREATE TRIGGER discord_accounts_touch BEFORE UPDATE ON lhdiscord.discord_accounts
  FOR EACH ROW EXECUTE FUNCTION lhdiscord.touch_updated_at();
COMMENT ON TRIGGER discord_accounts_touch ON lhdiscord.discord_accounts IS 'Maintains updated_at.';

CREATE FUNCTION lhdiscord.users_after_update() RETURNS trigger
  LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'users_after_update';
COMMENT ON FUNCTION lhdiscord.users_after_update() IS
  'Trigger: membership level, staff and brig changes queue role convergence and are audited.';
CREATE TRIGGER users_discord_sync
  AFTER UPDATE OF membership_level, staff_department, staff_rank, in_brig ON lhdiscord.users
  FOR EACH ROW
  WHEN (OLD.membership_level IS DISTINCT FROM NEW.membership_level
        OR OLD.staff_department IS DISTINCT FROM NEW.staff_department
        OR OLD.staff_rank IS DISTINCT FROM NEW.staff_rank
        OR OLD.in_brig IS DISTINCT FROM NEW.in_brig)
  EXECUTE FUNCTION lhdiscord.users_after_update();
COMMENT ON TRIGGER users_discord_sync ON lhdiscord.users IS
  'Queues Discord role convergence for level, staff and brig changes.';

CREATE FUNCTION lhdiscord.accounts_after_change() RETURNS trigger
  LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'accounts_after_change';
COMMENT ON FUNCTION lhdiscord.accounts_after_change() IS
  'Trigger: any link, removal or status change of a Discord account queues its convergence.';
CREATE TRIGGER discord_accounts_converge
  AFTER INSERT OR DELETE OR UPDATE OF status ON lhdiscord.discord_accounts
  FOR EACH ROW EXECUTE FUNCTION lhdiscord.accounts_after_change();
COMMENT ON TRIGGER discord_accounts_converge ON lhdiscord.discord_accounts IS
  'Queues the Discord user''s role convergence (a removed account is stripped of managed roles).';

CREATE FUNCTION lhdiscord.user_roles_after_change() RETURNS trigger
  LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'user_roles_after_change';
COMMENT ON FUNCTION lhdiscord.user_roles_after_change() IS
  'Trigger: in portal-leading mode, mapped portal role changes queue role convergence.';
CREATE TRIGGER user_roles_discord_sync
  AFTER INSERT OR UPDATE OR DELETE ON lhdiscord.user_roles
  FOR EACH ROW EXECUTE FUNCTION lhdiscord.user_roles_after_change();
COMMENT ON TRIGGER user_roles_discord_sync ON lhdiscord.user_roles IS
  'Converges Discord roles when mapped portal roles change (portal-leading mode).';

CREATE FUNCTION lhdiscord.role_map_validate() RETURNS trigger
  LANGUAGE c AS 'MODULE_PATHNAME', 'role_map_validate';
COMMENT ON FUNCTION lhdiscord.role_map_validate() IS 'Trigger: rejects unknown role_map keys and malformed role ids.';
CREATE TRIGGER role_map_check BEFORE INSERT OR UPDATE ON lhdiscord.role_map
  FOR EACH ROW EXECUTE FUNCTION lhdiscord.role_map_validate();
COMMENT ON TRIGGER role_map_check ON lhdiscord.role_map IS 'Validates keys and role ids.';

CREATE FUNCTION lhdiscord.role_map_after_change() RETURNS trigger
  LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'role_map_after_change';
COMMENT ON FUNCTION lhdiscord.role_map_after_change() IS 'Trigger: a mapping change converges every active account.';
CREATE TRIGGER role_map_converge AFTER INSERT OR UPDATE OR DELETE ON lhdiscord.role_map
  FOR EACH STATEMENT EXECUTE FUNCTION lhdiscord.role_map_after_change();
COMMENT ON TRIGGER role_map_converge ON lhdiscord.role_map IS 'Converges every active account after a mapping change.';

-------------------------------------------------------------------------------
-- Functions
-------------------------------------------------------------------------------

CREATE FUNCTION lhdiscord.map_role(key text, discord_role_id text) RETURNS void
  LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'map_role';
COMMENT ON FUNCTION lhdiscord.map_role(text, text) IS
  'Sets the Discord role of a role_map key (NULL or '''' unsets it); unknown keys are rejected.';
REVOKE ALL ON FUNCTION lhdiscord.map_role(text, text) FROM PUBLIC;

CREATE FUNCTION lhdiscord.desired_roles(discord_user_id text) RETURNS text[]
  LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'desired_roles';
COMMENT ON FUNCTION lhdiscord.desired_roles(text) IS
  'Managed Discord role ids this Discord user should hold now (empty when brigged, unlinked or revoked).';

CREATE FUNCTION lhdiscord.sync_roles(user_id bigint) RETURNS integer
  LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'sync_roles';
COMMENT ON FUNCTION lhdiscord.sync_roles(bigint) IS
  'Re-queues membership role sync of the user''s active accounts; returns the number queued (brigged skipped).';

CREATE FUNCTION lhdiscord.sync_staff(user_id bigint) RETURNS integer
  LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'sync_staff';
COMMENT ON FUNCTION lhdiscord.sync_staff(bigint) IS
  'Re-queues staff department and rank sync of the user''s active accounts; returns the number queued.';

CREATE FUNCTION lhdiscord.sync_permissions(user_id bigint) RETURNS integer
  LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'sync_permissions';
COMMENT ON FUNCTION lhdiscord.sync_permissions(bigint) IS
  'Re-queues membership and staff sync of the user''s active accounts; returns the number queued.';

CREATE FUNCTION lhdiscord.drain_outbox(max integer DEFAULT 1000) RETURNS integer
  LANGUAGE c VOLATILE
  AS 'MODULE_PATHNAME', 'drain_outbox';
COMMENT ON FUNCTION lhdiscord.drain_outbox(integer) IS
  'Processes up to max due outbox jobs in this session, through the worker''s code path; returns the number finished (done, failed or dead).';
REVOKE ALL ON FUNCTION lhdiscord.drain_outbox(integer) FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('lhdiscord.role_state', '');
