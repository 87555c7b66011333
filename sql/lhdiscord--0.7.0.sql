-- lhdiscord 0.7.0: the full install script (CREATE EXTENSION lhdiscord).
--
-- Assembled by tools/full_install_script from the versioned scripts, in
-- order; do not edit it by hand: change the scripts below (or add an upgrade
-- script) and run the tool again.  The regression test install_script checks
-- that this script and the upgrade path from 0.1.0 give the same objects.
--   sql/lhdiscord--0.1.0.sql sql/lhdiscord--0.1.0--0.2.0.sql sql/lhdiscord--0.2.0--0.3.0.sql sql/lhdiscord--0.3.0--0.4.0.sql sql/lhdiscord--0.4.0--0.5.0.sql sql/lhdiscord--0.5.0--0.6.0.sql sql/lhdiscord--0.6.0--0.7.0.sql 

\echo Use "CREATE EXTENSION lhdiscord" to load this file. \quit

-------------------------------------------------------------------------------
-- from lhdiscord--0.1.0.sql
-------------------------------------------------------------------------------

-- lhdiscord 0.1.0: schema, account lifecycle and the append-only audit log.
-- Loaded by CREATE EXTENSION lhdiscord; objects live in schema lhdiscord.


COMMENT ON SCHEMA lhdiscord IS
  'lhdiscord: a community portal''s Discord integration (accounts, roles, brig, reconcile, outbox, audit).';

-------------------------------------------------------------------------------
-- Types
-------------------------------------------------------------------------------

CREATE TYPE lhdiscord.identity_status AS ENUM ('active', 'suspended', 'disabled');
COMMENT ON TYPE lhdiscord.identity_status IS
  'Portal identity status: active, suspended (by reconcile) or disabled (by the application).';

CREATE TYPE lhdiscord.membership_level AS ENUM
  ('drifter', 'stowaway', 'traveler', 'resident', 'citizen');
COMMENT ON TYPE lhdiscord.membership_level IS
  'Membership levels in ascending order; traveler and above may link Discord accounts.';

CREATE TYPE lhdiscord.staff_department AS ENUM
  ('command', 'chaplain', 'engineer', 'quartermaster', 'steward');
COMMENT ON TYPE lhdiscord.staff_department IS 'Staff departments; each maps to role_map key staff_<department>.';

CREATE TYPE lhdiscord.staff_rank AS ENUM ('none', 'jr_crew', 'crew_member', 'officer');
COMMENT ON TYPE lhdiscord.staff_rank IS 'Staff ranks; each but none maps to role_map key rank_<rank>.';

CREATE TYPE lhdiscord.account_status AS ENUM ('active', 'brigged');
COMMENT ON TYPE lhdiscord.account_status IS
  'Discord account status: active, or brigged (managed roles stripped, syncs skipped).';

CREATE TYPE lhdiscord.outbox_state AS ENUM ('pending', 'in_flight', 'done', 'failed', 'dead');
COMMENT ON TYPE lhdiscord.outbox_state IS
  'Outbox job state: pending, in_flight (claimed), done, failed (permanent Discord error) or dead (retries exhausted).';

CREATE TYPE lhdiscord.outbox_kind AS ENUM ('roles', 'dm', 'member_scan', 'guild_join', 'token_refresh');
COMMENT ON TYPE lhdiscord.outbox_kind IS
  'Outbox work kinds: role convergence of one Discord user, DM, guild member scan, guild join, token refresh.';

CREATE DOMAIN lhdiscord.snowflake AS text
  CHECK (VALUE ~ '^[0-9]{17,20}$');
COMMENT ON DOMAIN lhdiscord.snowflake IS 'A Discord id: 17 to 20 decimal digits.';

-------------------------------------------------------------------------------
-- Tables
-------------------------------------------------------------------------------

CREATE TABLE lhdiscord.users (
  user_id            bigint PRIMARY KEY,
  username           text NOT NULL CHECK (char_length(username) BETWEEN 1 AND 255),
  status             lhdiscord.identity_status NOT NULL DEFAULT 'active',
  in_scope           boolean NOT NULL DEFAULT true,
  membership_level   lhdiscord.membership_level NOT NULL DEFAULT 'drifter',
  staff_department   lhdiscord.staff_department,
  staff_rank         lhdiscord.staff_rank NOT NULL DEFAULT 'none',
  in_brig            boolean NOT NULL DEFAULT false,
  notify_discord     boolean NOT NULL DEFAULT false,
  session_revoked_at timestamptz,
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE lhdiscord.users IS
  'Portal identities, keyed by the application''s user id. The application writes this table; triggers queue the Discord work.';
COMMENT ON COLUMN lhdiscord.users.user_id IS 'The application''s user id.';
COMMENT ON COLUMN lhdiscord.users.username IS 'Portal username (1 to 255 characters).';
COMMENT ON COLUMN lhdiscord.users.status IS 'Identity status; reconcile suspends, restore_user re-activates.';
COMMENT ON COLUMN lhdiscord.users.in_scope IS 'The application''s access-policy outcome for access.login.';
COMMENT ON COLUMN lhdiscord.users.membership_level IS 'Membership level; drives the membership Discord role.';
COMMENT ON COLUMN lhdiscord.users.staff_department IS 'Staff department, or NULL for none.';
COMMENT ON COLUMN lhdiscord.users.staff_rank IS 'Staff rank (none when not staff).';
COMMENT ON COLUMN lhdiscord.users.in_brig IS 'True while the user is in the brig: accounts brigged, managed roles stripped.';
COMMENT ON COLUMN lhdiscord.users.notify_discord IS 'DM preference: notifications are sent as Discord DMs when true.';
COMMENT ON COLUMN lhdiscord.users.session_revoked_at IS 'Set by reconcile when it revokes the user''s sessions.';
COMMENT ON COLUMN lhdiscord.users.created_at IS 'Row creation time.';
COMMENT ON COLUMN lhdiscord.users.updated_at IS 'Last change time.';

CREATE TABLE lhdiscord.user_roles (
  user_id    bigint NOT NULL REFERENCES lhdiscord.users (user_id) ON DELETE CASCADE,
  role       text NOT NULL CHECK (role ~ '^[A-Za-z0-9._:-]{1,100}$'),
  granted_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (user_id, role)
);
COMMENT ON TABLE lhdiscord.user_roles IS
  'Portal roles held by users, e.g. admin, subadmin, hauling.member.';
COMMENT ON COLUMN lhdiscord.user_roles.user_id IS 'The portal user.';
COMMENT ON COLUMN lhdiscord.user_roles.role IS 'Portal role name (letters, digits and . _ : -, at most 100).';
COMMENT ON COLUMN lhdiscord.user_roles.granted_at IS 'When the role was granted.';
CREATE INDEX user_roles_role_idx ON lhdiscord.user_roles (role);
COMMENT ON INDEX lhdiscord.user_roles_role_idx IS 'Finds the holders of a portal role (admins, privileged, entitled).';

CREATE TABLE lhdiscord.discord_accounts (
  id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  user_id          bigint NOT NULL REFERENCES lhdiscord.users (user_id) ON DELETE CASCADE,
  discord_user_id  lhdiscord.snowflake NOT NULL,
  username         text NOT NULL CHECK (char_length(username) BETWEEN 1 AND 32),
  global_name      text CHECK (char_length(global_name) BETWEEN 1 AND 32),
  avatar_hash      text CHECK (avatar_hash ~ '^[A-Za-z0-9_]{1,64}$'),
  access_token     bytea,
  refresh_token    bytea,
  token_expires_at timestamptz,
  status           lhdiscord.account_status NOT NULL DEFAULT 'active',
  verified_at      timestamptz,
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT discord_accounts_discord_user_id_key UNIQUE (discord_user_id)
);
COMMENT ON TABLE lhdiscord.discord_accounts IS
  'Linked Discord accounts (Lighthouse schema section 16). Tokens are AES-256-GCM ciphertext, never plaintext.';
COMMENT ON COLUMN lhdiscord.discord_accounts.id IS 'Account id.';
COMMENT ON COLUMN lhdiscord.discord_accounts.user_id IS 'Owning portal user (not unique: the account limit is configurable).';
COMMENT ON COLUMN lhdiscord.discord_accounts.discord_user_id IS 'Discord user id (snowflake); linked to at most one portal user.';
COMMENT ON COLUMN lhdiscord.discord_accounts.username IS 'Discord username.';
COMMENT ON COLUMN lhdiscord.discord_accounts.global_name IS 'Discord display name, if set.';
COMMENT ON COLUMN lhdiscord.discord_accounts.avatar_hash IS 'Discord avatar hash, for the CDN URL.';
COMMENT ON COLUMN lhdiscord.discord_accounts.access_token IS 'OAuth access token, AES-256-GCM encrypted (see account_tokens()).';
COMMENT ON COLUMN lhdiscord.discord_accounts.refresh_token IS 'OAuth refresh token, AES-256-GCM encrypted.';
COMMENT ON COLUMN lhdiscord.discord_accounts.token_expires_at IS 'OAuth access token expiry.';
COMMENT ON COLUMN lhdiscord.discord_accounts.status IS 'active, or brigged while the owner is in the brig.';
COMMENT ON COLUMN lhdiscord.discord_accounts.verified_at IS 'When linking completed.';
COMMENT ON COLUMN lhdiscord.discord_accounts.created_at IS 'Row creation time.';
COMMENT ON COLUMN lhdiscord.discord_accounts.updated_at IS 'Last change time.';
COMMENT ON CONSTRAINT discord_accounts_discord_user_id_key ON lhdiscord.discord_accounts IS
  'A Discord account is linked to at most one portal user.';
CREATE INDEX discord_accounts_user_id_idx ON lhdiscord.discord_accounts (user_id);
COMMENT ON INDEX lhdiscord.discord_accounts_user_id_idx IS 'Accounts of a portal user.';

CREATE TABLE lhdiscord.role_map (
  key             text PRIMARY KEY,
  discord_role_id text CHECK (discord_role_id = '' OR discord_role_id ~ '^[0-9]{17,20}$')
);
COMMENT ON TABLE lhdiscord.role_map IS
  'Managed Discord roles by key: traveler, resident, citizen, verified, staff_<department>, rank_<rank>, and portal/entitlement roles such as hauling.member. Unset or empty ids are skipped.';
COMMENT ON COLUMN lhdiscord.role_map.key IS 'Role key.';
COMMENT ON COLUMN lhdiscord.role_map.discord_role_id IS 'Discord role id, or NULL/empty when not configured.';

CREATE TABLE lhdiscord.member_snapshots (
  id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  taken_at     timestamptz NOT NULL DEFAULT now(),
  complete     boolean NOT NULL DEFAULT false,
  member_count integer NOT NULL DEFAULT 0 CHECK (member_count >= 0)
);
COMMENT ON TABLE lhdiscord.member_snapshots IS
  'One row per guild member scan; only complete snapshots are evidence for reconcile.';
COMMENT ON COLUMN lhdiscord.member_snapshots.id IS 'Snapshot id.';
COMMENT ON COLUMN lhdiscord.member_snapshots.taken_at IS 'When the scan started (the age of the evidence).';
COMMENT ON COLUMN lhdiscord.member_snapshots.complete IS 'True once every page of the member listing arrived.';
COMMENT ON COLUMN lhdiscord.member_snapshots.member_count IS 'Members stored in the snapshot.';

CREATE TABLE lhdiscord.snapshot_members (
  snapshot_id     bigint NOT NULL REFERENCES lhdiscord.member_snapshots (id) ON DELETE CASCADE,
  discord_user_id lhdiscord.snowflake NOT NULL,
  role_ids        text[] NOT NULL DEFAULT '{}',
  PRIMARY KEY (snapshot_id, discord_user_id)
);
COMMENT ON TABLE lhdiscord.snapshot_members IS 'Guild members and their Discord role ids, per snapshot.';
COMMENT ON COLUMN lhdiscord.snapshot_members.snapshot_id IS 'The snapshot.';
COMMENT ON COLUMN lhdiscord.snapshot_members.discord_user_id IS 'Discord user id of the member.';
COMMENT ON COLUMN lhdiscord.snapshot_members.role_ids IS 'Discord role ids the member held.';

CREATE TABLE lhdiscord.outbox (
  id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  kind            lhdiscord.outbox_kind NOT NULL,
  discord_user_id lhdiscord.snowflake,
  user_id         bigint,
  payload         jsonb NOT NULL DEFAULT '{}',
  state           lhdiscord.outbox_state NOT NULL DEFAULT 'pending',
  attempts        integer NOT NULL DEFAULT 0,
  run_after       timestamptz NOT NULL DEFAULT now(),
  generation      integer NOT NULL DEFAULT 0,
  reason          text CHECK (char_length(reason) <= 512),
  last_status     integer,
  last_error      text,
  claimed_by      integer,
  claimed_at      timestamptz,
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now(),
  finished_at     timestamptz,
  CHECK (kind IN ('member_scan') OR discord_user_id IS NOT NULL)
);
COMMENT ON TABLE lhdiscord.outbox IS
  'Durable queue of Discord work, written in the application''s transaction and drained by the worker. Role convergence is desired state: one live job per Discord user.';
COMMENT ON COLUMN lhdiscord.outbox.id IS 'Job id.';
COMMENT ON COLUMN lhdiscord.outbox.kind IS 'Work kind.';
COMMENT ON COLUMN lhdiscord.outbox.discord_user_id IS 'Discord user the job is about (NULL for a member scan).';
COMMENT ON COLUMN lhdiscord.outbox.user_id IS 'Portal user the job was queued for, if any.';
COMMENT ON COLUMN lhdiscord.outbox.payload IS 'Kind-specific data (never secrets).';
COMMENT ON COLUMN lhdiscord.outbox.state IS 'pending, in_flight, done, failed or dead.';
COMMENT ON COLUMN lhdiscord.outbox.attempts IS 'Times the job was claimed.';
COMMENT ON COLUMN lhdiscord.outbox.run_after IS 'Earliest time the job may run (backoff).';
COMMENT ON COLUMN lhdiscord.outbox.generation IS 'Bumped when a later change folds into this live convergence job; a job finished at an older generation runs again.';
COMMENT ON COLUMN lhdiscord.outbox.reason IS 'Why the work was queued; sent as X-Audit-Log-Reason.';
COMMENT ON COLUMN lhdiscord.outbox.last_status IS 'HTTP status of the last Discord response.';
COMMENT ON COLUMN lhdiscord.outbox.last_error IS 'Last error, if any.';
COMMENT ON COLUMN lhdiscord.outbox.claimed_by IS 'PID of the backend that claimed the job.';
COMMENT ON COLUMN lhdiscord.outbox.claimed_at IS 'When the job was claimed.';
COMMENT ON COLUMN lhdiscord.outbox.created_at IS 'When the job was queued.';
COMMENT ON COLUMN lhdiscord.outbox.updated_at IS 'Last change time.';
COMMENT ON COLUMN lhdiscord.outbox.finished_at IS 'When the job reached done, failed or dead.';
CREATE UNIQUE INDEX outbox_one_live_convergence ON lhdiscord.outbox (discord_user_id)
  WHERE kind = 'roles' AND state IN ('pending', 'in_flight');
COMMENT ON INDEX lhdiscord.outbox_one_live_convergence IS
  'At most one live (pending or in-flight) role convergence per Discord user; later changes fold into it.';
CREATE INDEX outbox_ready_idx ON lhdiscord.outbox (run_after, id) WHERE state = 'pending';
COMMENT ON INDEX lhdiscord.outbox_ready_idx IS 'Finds pending jobs that are due, oldest first.';
CREATE INDEX outbox_in_flight_idx ON lhdiscord.outbox (claimed_by) WHERE state = 'in_flight';
COMMENT ON INDEX lhdiscord.outbox_in_flight_idx IS 'Finds claimed jobs (crash recovery).';
CREATE INDEX outbox_finished_idx ON lhdiscord.outbox (finished_at) WHERE finished_at IS NOT NULL;
COMMENT ON INDEX lhdiscord.outbox_finished_idx IS 'Pruning of finished jobs.';

CREATE TABLE lhdiscord.audit_log (
  id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  action          text NOT NULL,
  actor_user_id   bigint,
  subject_user_id bigint,
  entity          text,
  entity_pk       text,
  before_json     jsonb,
  after_json      jsonb,
  description     text,
  created_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE lhdiscord.audit_log IS
  'Append-only audit log of every decision. UPDATE, DELETE and TRUNCATE are refused for every role; retention only through purge_audit_log().';
COMMENT ON COLUMN lhdiscord.audit_log.id IS 'Audit row id.';
COMMENT ON COLUMN lhdiscord.audit_log.action IS 'Action key, e.g. discord_account_linked, entitlement.reconcile.';
COMMENT ON COLUMN lhdiscord.audit_log.actor_user_id IS 'Portal user who acted, if any.';
COMMENT ON COLUMN lhdiscord.audit_log.subject_user_id IS 'Portal user affected.';
COMMENT ON COLUMN lhdiscord.audit_log.entity IS 'Kind of entity changed.';
COMMENT ON COLUMN lhdiscord.audit_log.entity_pk IS 'Key of the entity changed.';
COMMENT ON COLUMN lhdiscord.audit_log.before_json IS 'State before the change.';
COMMENT ON COLUMN lhdiscord.audit_log.after_json IS 'State after the change, with the decision and its evidence.';
COMMENT ON COLUMN lhdiscord.audit_log.description IS 'Human-readable description.';
COMMENT ON COLUMN lhdiscord.audit_log.created_at IS 'When the row was written.';
CREATE INDEX audit_log_subject_idx ON lhdiscord.audit_log (subject_user_id, id);
COMMENT ON INDEX lhdiscord.audit_log_subject_idx IS 'Audit history of a user.';
CREATE INDEX audit_log_action_idx ON lhdiscord.audit_log (action, id);
COMMENT ON INDEX lhdiscord.audit_log_action_idx IS 'Audit rows by action.';
CREATE INDEX audit_log_created_at_idx ON lhdiscord.audit_log (created_at);
COMMENT ON INDEX lhdiscord.audit_log_created_at_idx IS 'Retention by age.';

CREATE TABLE lhdiscord.break_glass (
  id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  user_id    bigint NOT NULL REFERENCES lhdiscord.users (user_id) ON DELETE CASCADE,
  reason     text NOT NULL CHECK (char_length(reason) BETWEEN 1 AND 500),
  granted_by bigint,
  granted_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL
);
COMMENT ON TABLE lhdiscord.break_glass IS
  'Privileged allowlist: a user with an unexpired row is never suspended by reconcile.';
COMMENT ON COLUMN lhdiscord.break_glass.id IS 'Grant id.';
COMMENT ON COLUMN lhdiscord.break_glass.user_id IS 'The exempted user.';
COMMENT ON COLUMN lhdiscord.break_glass.reason IS 'Why the exemption was granted.';
COMMENT ON COLUMN lhdiscord.break_glass.granted_by IS 'Portal user who granted it.';
COMMENT ON COLUMN lhdiscord.break_glass.granted_at IS 'When it was granted.';
COMMENT ON COLUMN lhdiscord.break_glass.expires_at IS 'When it stops applying.';
CREATE INDEX break_glass_user_idx ON lhdiscord.break_glass (user_id, expires_at);
COMMENT ON INDEX lhdiscord.break_glass_user_idx IS 'Active exemptions of a user.';

-------------------------------------------------------------------------------
-- Comments on constraint indexes
-------------------------------------------------------------------------------

COMMENT ON INDEX lhdiscord.users_pkey IS 'Primary key of users.';
COMMENT ON INDEX lhdiscord.user_roles_pkey IS 'A user holds a portal role at most once.';
COMMENT ON INDEX lhdiscord.discord_accounts_pkey IS 'Primary key of discord_accounts.';
COMMENT ON INDEX lhdiscord.discord_accounts_discord_user_id_key IS 'A Discord account is linked to at most one portal user.';
COMMENT ON INDEX lhdiscord.role_map_pkey IS 'One Discord role per key.';
COMMENT ON INDEX lhdiscord.member_snapshots_pkey IS 'Primary key of member_snapshots.';
COMMENT ON INDEX lhdiscord.snapshot_members_pkey IS 'A member appears once per snapshot.';
COMMENT ON INDEX lhdiscord.outbox_pkey IS 'Primary key of outbox.';
COMMENT ON INDEX lhdiscord.audit_log_pkey IS 'Primary key of audit_log.';
COMMENT ON INDEX lhdiscord.break_glass_pkey IS 'Primary key of break_glass.';

-------------------------------------------------------------------------------
-- Audit log immutability
-------------------------------------------------------------------------------

CREATE FUNCTION lhdiscord.audit_log_guard() RETURNS trigger
  LANGUAGE c AS 'MODULE_PATHNAME', 'audit_log_guard';
COMMENT ON FUNCTION lhdiscord.audit_log_guard() IS
  'Trigger: refuses UPDATE, DELETE and TRUNCATE on audit_log (except inside purge_audit_log).';

CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON lhdiscord.audit_log
  FOR EACH ROW EXECUTE FUNCTION lhdiscord.audit_log_guard();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON lhdiscord.audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION lhdiscord.audit_log_guard();
-- ALWAYS: session_replication_role = replica does not switch them off.
ALTER TABLE lhdiscord.audit_log ENABLE ALWAYS TRIGGER audit_log_no_change;
ALTER TABLE lhdiscord.audit_log ENABLE ALWAYS TRIGGER audit_log_no_truncate;
COMMENT ON TRIGGER audit_log_no_change ON lhdiscord.audit_log IS 'The audit log is append-only.';
COMMENT ON TRIGGER audit_log_no_truncate ON lhdiscord.audit_log IS 'The audit log cannot be truncated.';

CREATE FUNCTION lhdiscord.purge_audit_log(older_than interval) RETURNS bigint
  LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'purge_audit_log';
COMMENT ON FUNCTION lhdiscord.purge_audit_log(interval) IS
  'Retention: deletes audit rows older than older_than (at least 30 days) and audits the purge. Superuser only unless granted.';
REVOKE ALL ON FUNCTION lhdiscord.purge_audit_log(interval) FROM PUBLIC;

-------------------------------------------------------------------------------
-- Account lifecycle
-------------------------------------------------------------------------------

CREATE FUNCTION lhdiscord.can_link(user_id bigint) RETURNS boolean
  LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'can_link';
COMMENT ON FUNCTION lhdiscord.can_link(bigint) IS
  'True when the user may link a Discord account: level >= traveler, not in the brig, below lhdiscord.max_discord_accounts.';

CREATE FUNCTION lhdiscord.link_account(
    user_id bigint,
    discord_user_id text,
    username text,
    global_name text DEFAULT NULL,
    avatar_hash text DEFAULT NULL,
    access_token text DEFAULT NULL,
    refresh_token text DEFAULT NULL,
    token_expires_at timestamptz DEFAULT NULL)
  RETURNS lhdiscord.discord_accounts
  LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'link_account';
COMMENT ON FUNCTION lhdiscord.link_account(bigint, text, text, text, text, text, text, timestamptz) IS
  'Links a Discord account (gate, limit, duplicate checks), encrypts the tokens, queues the role sync and audits discord_account_linked. Token columns of the result are NULL.';

CREATE FUNCTION lhdiscord.unlink_account(actor_id bigint, account_id bigint) RETURNS void
  LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'unlink_account';
COMMENT ON FUNCTION lhdiscord.unlink_account(bigint, bigint) IS
  'Owner only: strips all managed roles, deletes the account, audits discord_account_unlinked.';

CREATE FUNCTION lhdiscord.revoke_account(admin_id bigint, account_id bigint) RETURNS void
  LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'revoke_account';
COMMENT ON FUNCTION lhdiscord.revoke_account(bigint, bigint) IS
  'Admin only: strips all managed roles, deletes the account, audits discord_account_revoked on the affected user.';

CREATE FUNCTION lhdiscord.accounts_of(actor_id bigint, user_id bigint)
  RETURNS SETOF lhdiscord.discord_accounts
  LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'accounts_of';
COMMENT ON FUNCTION lhdiscord.accounts_of(bigint, bigint) IS
  'A user''s Discord accounts, for the owner or an admin; token columns are always NULL.';

CREATE FUNCTION lhdiscord.has_discord_linked(user_id bigint) RETURNS boolean
  LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'has_discord_linked';
COMMENT ON FUNCTION lhdiscord.has_discord_linked(bigint) IS
  'True when the user has at least one active Discord account.';

CREATE FUNCTION lhdiscord.avatar_url(lhdiscord.discord_accounts) RETURNS text
  LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
  AS 'MODULE_PATHNAME', 'avatar_url';
COMMENT ON FUNCTION lhdiscord.avatar_url(lhdiscord.discord_accounts) IS
  'Discord CDN URL of the account''s avatar, or the default avatar.';

CREATE FUNCTION lhdiscord.display_name(lhdiscord.discord_accounts) RETURNS text
  LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
  AS 'MODULE_PATHNAME', 'display_name';
COMMENT ON FUNCTION lhdiscord.display_name(lhdiscord.discord_accounts) IS
  'global_name if set, otherwise username.';

CREATE FUNCTION lhdiscord.account_tokens(account_id bigint,
    OUT access_token text, OUT refresh_token text, OUT token_expires_at timestamptz)
  LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'account_tokens';
COMMENT ON FUNCTION lhdiscord.account_tokens(bigint) IS
  'Decrypted OAuth tokens of an account. Not granted to PUBLIC: superusers and explicitly granted roles only.';
REVOKE ALL ON FUNCTION lhdiscord.account_tokens(bigint) FROM PUBLIC;

-------------------------------------------------------------------------------
-- Views
-------------------------------------------------------------------------------

CREATE VIEW lhdiscord.active_accounts AS
  SELECT a.id, a.user_id, u.username AS portal_username,
         a.discord_user_id, a.username, a.global_name,
         lhdiscord.display_name(a) AS display_name,
         lhdiscord.avatar_url(a) AS avatar_url,
         a.verified_at, a.created_at, a.updated_at
    FROM lhdiscord.discord_accounts a
    JOIN lhdiscord.users u ON u.user_id = a.user_id
   WHERE a.status = 'active';
COMMENT ON VIEW lhdiscord.active_accounts IS 'Linked Discord accounts with status active (no token columns).';

CREATE VIEW lhdiscord.account_overview AS
  SELECT a.id, a.user_id, u.username AS portal_username,
         u.membership_level, u.staff_department, u.staff_rank, u.in_brig,
         a.discord_user_id, a.username, a.global_name,
         lhdiscord.display_name(a) AS display_name,
         lhdiscord.avatar_url(a) AS avatar_url,
         a.status,
         (a.access_token IS NOT NULL) AS has_access_token,
         a.token_expires_at, a.verified_at, a.created_at, a.updated_at,
         (SELECT count(*) FROM lhdiscord.outbox o
           WHERE o.discord_user_id = a.discord_user_id
             AND o.state IN ('pending', 'in_flight')) AS pending_jobs
    FROM lhdiscord.discord_accounts a
    JOIN lhdiscord.users u ON u.user_id = a.user_id;
COMMENT ON VIEW lhdiscord.account_overview IS
  'Admin page: every linked Discord account with its portal user and queue state (no token values).';

-------------------------------------------------------------------------------
-- Privileges and dump configuration
-------------------------------------------------------------------------------

-- PUBLIC gets no table privileges (the default; stated here for the record).
REVOKE ALL ON ALL TABLES IN SCHEMA lhdiscord FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('lhdiscord.users', '');
SELECT pg_catalog.pg_extension_config_dump('lhdiscord.user_roles', '');
SELECT pg_catalog.pg_extension_config_dump('lhdiscord.discord_accounts', '');
SELECT pg_catalog.pg_extension_config_dump('lhdiscord.role_map', '');
SELECT pg_catalog.pg_extension_config_dump('lhdiscord.member_snapshots', '');
SELECT pg_catalog.pg_extension_config_dump('lhdiscord.snapshot_members', '');
-- The outbox is not dumped: it is the running instance's work in progress
-- (a restored copy must not deliver it a second time), and every restored
-- account queues its own role convergence.
SELECT pg_catalog.pg_extension_config_dump('lhdiscord.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('lhdiscord.break_glass', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('lhdiscord.discord_accounts', 'id'), '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('lhdiscord.member_snapshots', 'id'), '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('lhdiscord.audit_log', 'id'), '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('lhdiscord.break_glass', 'id'), '');

-------------------------------------------------------------------------------
-- from lhdiscord--0.1.0--0.2.0.sql
-------------------------------------------------------------------------------

-- lhdiscord 0.1.0 -> 0.2.0: the desired-state role engine, its triggers and
-- the fake Discord API.


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

-------------------------------------------------------------------------------
-- from lhdiscord--0.2.0--0.3.0.sql
-------------------------------------------------------------------------------

-- lhdiscord 0.2.0 -> 0.3.0: the outbox worker (Discord REST v10 over
-- libcurl), wake-on-commit, DMs with exactly-once delivery, status views.


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

-------------------------------------------------------------------------------
-- from lhdiscord--0.3.0--0.4.0.sql
-------------------------------------------------------------------------------

-- lhdiscord 0.3.0 -> 0.4.0: entitlement reconcile and identity governance:
-- snapshots (scan, load, shrink guard), the decision matrix, governance
-- modes, exemptions, the safety guard, restore, has_access, status_map.


-------------------------------------------------------------------------------
-- Snapshots
-------------------------------------------------------------------------------

ALTER TABLE lhdiscord.member_snapshots
  ADD COLUMN trusted boolean NOT NULL DEFAULT false,
  ADD COLUMN source text NOT NULL DEFAULT 'load' CHECK (source IN ('scan', 'load')),
  ADD COLUMN scan_after text CHECK (scan_after ~ '^[0-9]{1,20}$'),
  ADD COLUMN finished_at timestamptz,
  ADD COLUMN accepted_at timestamptz,
  ADD COLUMN accepted_by text;
-- Before 0.4.0 there was no shrink guard: complete snapshots were evidence.
UPDATE lhdiscord.member_snapshots SET trusted = true WHERE complete;
COMMENT ON COLUMN lhdiscord.member_snapshots.trusted IS
  'Complete and believable: not held by the shrink guard, or accepted with accept_snapshot().';
COMMENT ON COLUMN lhdiscord.member_snapshots.source IS 'scan (the worker''s guild scan) or load (load_snapshot()).';
COMMENT ON COLUMN lhdiscord.member_snapshots.scan_after IS 'Scan cursor: highest member id stored so far.';
COMMENT ON COLUMN lhdiscord.member_snapshots.finished_at IS 'When the last page arrived.';
COMMENT ON COLUMN lhdiscord.member_snapshots.accepted_at IS 'When a held snapshot was accepted.';
COMMENT ON COLUMN lhdiscord.member_snapshots.accepted_by IS 'Database role that accepted it.';
CREATE INDEX member_snapshots_trusted_idx ON lhdiscord.member_snapshots (taken_at DESC, id DESC)
  WHERE complete AND trusted;
COMMENT ON INDEX lhdiscord.member_snapshots_trusted_idx IS 'Finds the latest trusted snapshot.';

CREATE TABLE lhdiscord.access_state (
  user_id      bigint PRIMARY KEY REFERENCES lhdiscord.users (user_id) ON DELETE CASCADE,
  exempt_since timestamptz,
  exemption    text CHECK (exemption IN ('break_glass', 'privileged_role'))
);
COMMENT ON TABLE lhdiscord.access_state IS
  'Reconcile bookkeeping: an exemption is audited when it first prevents a suspension, not again while nothing changes.';
COMMENT ON COLUMN lhdiscord.access_state.user_id IS 'The user.';
COMMENT ON COLUMN lhdiscord.access_state.exempt_since IS 'Since when privilege has been preventing a suspension (NULL = not exempt).';
COMMENT ON COLUMN lhdiscord.access_state.exemption IS 'break_glass or privileged_role.';
COMMENT ON INDEX lhdiscord.access_state_pkey IS 'One state per user.';
SELECT pg_catalog.pg_extension_config_dump('lhdiscord.access_state', '');

-------------------------------------------------------------------------------
-- Decision matrix, context, reconcile
-------------------------------------------------------------------------------

CREATE FUNCTION lhdiscord.decide(in_scope boolean, entitled boolean, privileged boolean) RETURNS text
  LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'decide';
COMMENT ON FUNCTION lhdiscord.decide(boolean, boolean, boolean) IS
  'The runbook''s decision matrix: in_scope_entitled (active), in_scope_not_entitled, not_in_scope_entitled, not_in_scope_not_entitled (suspended), or exempt (privilege prevents the suspension).';

CREATE FUNCTION lhdiscord.access_context(
    OUT mode text, OUT snapshot_id bigint, OUT snapshot_taken_at timestamptz,
    OUT snapshot_age_seconds float8, OUT snapshot_fresh boolean,
    OUT entitlement_key text, OUT entitlement_role_id text, OUT privileged_roles text[])
  LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'access_context';
COMMENT ON FUNCTION lhdiscord.access_context() IS
  'The inputs every entitlement decision shares: governance mode, latest trusted snapshot and its freshness, entitlement role, privileged roles.';

CREATE FUNCTION lhdiscord.reconcile(dry_run boolean DEFAULT false, force boolean DEFAULT false,
    OUT user_id bigint, OUT in_scope boolean, OUT entitled boolean, OUT privileged boolean,
    OUT old_status lhdiscord.identity_status, OUT new_status lhdiscord.identity_status,
    OUT action text, OUT jml text)
  RETURNS SETOF record
  LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'reconcile';
COMMENT ON FUNCTION lhdiscord.reconcile(boolean, boolean) IS
  'Applies the entitlement decision matrix to every user and returns a row per user whose state changes; dry_run writes nothing; the safety guard aborts mass suspensions unless force.';

CREATE FUNCTION lhdiscord.reconcile_user(user_id bigint,
    OUT user_id bigint, OUT in_scope boolean, OUT entitled boolean, OUT privileged boolean,
    OUT old_status lhdiscord.identity_status, OUT new_status lhdiscord.identity_status,
    OUT action text, OUT jml text)
  RETURNS SETOF record
  LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'reconcile_user';
COMMENT ON FUNCTION lhdiscord.reconcile_user(bigint) IS
  'Reconciles one user (also run on every change of in_scope); returns the change, if any.';

CREATE FUNCTION lhdiscord.restore_user(user_id bigint, actor_id bigint) RETURNS boolean
  LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'restore_user';
COMMENT ON FUNCTION lhdiscord.restore_user(bigint, bigint) IS
  'Sets a suspended user active again and restores the portal roles removed since the last suspension; audited. false when already active.';

CREATE FUNCTION lhdiscord.users_in_scope_changed() RETURNS trigger
  LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'users_in_scope_changed';
COMMENT ON FUNCTION lhdiscord.users_in_scope_changed() IS 'Trigger: reconciles a user whose in_scope changed.';
CREATE TRIGGER users_reconcile_in_scope AFTER UPDATE OF in_scope ON lhdiscord.users
  FOR EACH ROW WHEN (OLD.in_scope IS DISTINCT FROM NEW.in_scope)
  EXECUTE FUNCTION lhdiscord.users_in_scope_changed();
COMMENT ON TRIGGER users_reconcile_in_scope ON lhdiscord.users IS 'Runs reconcile_user on every change of in_scope.';

-------------------------------------------------------------------------------
-- Snapshot functions
-------------------------------------------------------------------------------

CREATE FUNCTION lhdiscord.load_snapshot(members jsonb, taken_at timestamptz DEFAULT now()) RETURNS bigint
  LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'load_snapshot';
COMMENT ON FUNCTION lhdiscord.load_snapshot(jsonb, timestamptz) IS
  'Stores a complete snapshot from a JSON array of guild member objects ([{"user": {"id": ...}, "roles": [...]}, ...]); returns its id. Subject to the shrink guard.';

CREATE FUNCTION lhdiscord.accept_snapshot(id bigint) RETURNS boolean
  LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'accept_snapshot';
COMMENT ON FUNCTION lhdiscord.accept_snapshot(bigint) IS
  'Trusts a complete snapshot the shrink guard held back; audited. false when it was trusted already.';

CREATE FUNCTION lhdiscord.request_member_scan() RETURNS bigint
  LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'request_member_scan';
COMMENT ON FUNCTION lhdiscord.request_member_scan() IS
  'Queues a paginated guild member scan; returns the id of the snapshot it fills (complete only when every page arrived).';

-------------------------------------------------------------------------------
-- Status map and effective access
-------------------------------------------------------------------------------

CREATE FUNCTION lhdiscord.role_drift(account_status text, in_brig boolean, membership_level text,
    staff_department text, staff_rank text, portal_roles text[], held text[]) RETURNS text
  LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'role_drift';
COMMENT ON FUNCTION lhdiscord.role_drift(text, boolean, text, text, text, text[], text[]) IS
  'missing_role, excess_role or none: managed roles held in the snapshot against the desired set.';

CREATE VIEW lhdiscord.status_map AS
  SELECT u.user_id, u.username, u.status AS identity_status,
         u.in_scope AS eligible,
         e.entitled, p.privileged,
         (u.status = 'active' AND ((u.in_scope AND e.entitled) OR p.privileged)) AS effective_access,
         CASE
           WHEN u.status = 'disabled' THEN 'compliant'
           WHEN lhdiscord.decide(u.in_scope, e.entitled, p.privileged) = 'exempt'
             THEN CASE WHEN u.status = 'active' THEN 'exempt' ELSE 'non_compliant' END
           WHEN (lhdiscord.decide(u.in_scope, e.entitled, p.privileged) = 'in_scope_entitled')
                = (u.status = 'active') THEN 'compliant'
           ELSE 'non_compliant'
         END AS policy_outcome,
         CASE
           WHEN d.accounts = 0 THEN 'unlinked'
           WHEN c.snapshot_id IS NULL OR NOT c.snapshot_fresh THEN 'stale_snapshot'
           WHEN d.missing THEN 'missing_role'
           WHEN d.excess THEN 'excess_role'
           ELSE 'none'
         END AS drift,
         CASE WHEN c.snapshot_id IS NOT NULL
              THEN make_interval(secs => c.snapshot_age_seconds) END AS snapshot_age
    FROM lhdiscord.users u
   CROSS JOIN lhdiscord.access_context() c
   CROSS JOIN LATERAL (
     SELECT CASE WHEN c.mode = 'portal_leading'
                 THEN EXISTS (SELECT 1 FROM lhdiscord.user_roles r
                               WHERE r.user_id = u.user_id AND r.role = c.entitlement_key)
                 ELSE coalesce(c.snapshot_fresh, false) AND EXISTS (
                        SELECT 1 FROM lhdiscord.discord_accounts a
                          JOIN lhdiscord.snapshot_members m
                            ON m.snapshot_id = c.snapshot_id AND m.discord_user_id = a.discord_user_id
                         WHERE a.user_id = u.user_id AND a.status = 'active'
                           AND c.entitlement_role_id = ANY (m.role_ids))
            END AS entitled) e
   CROSS JOIN LATERAL (
     SELECT EXISTS (SELECT 1 FROM lhdiscord.user_roles r
                     WHERE r.user_id = u.user_id AND r.role = ANY (c.privileged_roles))
         OR EXISTS (SELECT 1 FROM lhdiscord.break_glass b
                     WHERE b.user_id = u.user_id AND b.expires_at > now()) AS privileged) p
   CROSS JOIN LATERAL (
     SELECT count(*) AS accounts,
            coalesce(bool_or(x.drift = 'missing_role'), false) AS missing,
            coalesce(bool_or(x.drift = 'excess_role'), false) AS excess
       FROM lhdiscord.discord_accounts a
       LEFT JOIN lhdiscord.snapshot_members m
         ON m.snapshot_id = c.snapshot_id AND m.discord_user_id = a.discord_user_id
      CROSS JOIN LATERAL (
        SELECT lhdiscord.role_drift(a.status::text, u.in_brig, u.membership_level::text,
                                    u.staff_department::text, u.staff_rank::text,
                                    (SELECT array_agg(r.role) FROM lhdiscord.user_roles r
                                      WHERE r.user_id = u.user_id),
                                    m.role_ids) AS drift) x
      WHERE a.user_id = u.user_id) d;
COMMENT ON VIEW lhdiscord.status_map IS
  'One row per user: eligible (in scope), entitled, privileged, effective_access, policy_outcome (compliant, exempt, non_compliant), drift (none, missing_role, excess_role, stale_snapshot, unlinked), snapshot_age.';

CREATE FUNCTION lhdiscord.has_access(user_id bigint) RETURNS boolean
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF user_id IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed', MESSAGE = 'user_id must not be null';
  END IF;
  -- Same definition as status_map.effective_access; an unknown user has none.
  RETURN coalesce((SELECT s.effective_access FROM lhdiscord.status_map s
                    WHERE s.user_id = has_access.user_id), false);
END $$;
COMMENT ON FUNCTION lhdiscord.has_access(bigint) IS
  'Effective access now: active, and either in scope and entitled (Discord-leading: by a fresh snapshot) or privileged.';

-------------------------------------------------------------------------------
-- from lhdiscord--0.4.0--0.5.0.sql
-------------------------------------------------------------------------------

-- lhdiscord 0.4.0 -> 0.5.0: Discord DM notifications and OAuth2 linking in
-- SQL: notify(), begin_oauth(), complete_oauth(), guild join and token
-- refresh jobs.


ALTER TABLE lhdiscord.discord_accounts
  ADD COLUMN tokens_stale boolean NOT NULL DEFAULT false,
  ADD COLUMN tokens_refreshed_at timestamptz;
COMMENT ON COLUMN lhdiscord.discord_accounts.tokens_stale IS
  'True when refreshing the OAuth tokens failed for good; the account stays linked.';
COMMENT ON COLUMN lhdiscord.discord_accounts.tokens_refreshed_at IS 'When the worker last refreshed the tokens.';

CREATE TABLE lhdiscord.oauth_states (
  state_hash text PRIMARY KEY CHECK (state_hash ~ '^[0-9a-f]{64}$'),
  user_id    bigint NOT NULL REFERENCES lhdiscord.users (user_id) ON DELETE CASCADE,
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL,
  used_at    timestamptz
);
COMMENT ON TABLE lhdiscord.oauth_states IS
  'Single-use OAuth2 states issued by begin_oauth(), bound to a user, with an expiry. Only a SHA-256 of each state is stored.';
COMMENT ON COLUMN lhdiscord.oauth_states.state_hash IS 'SHA-256 (hex) of the state sent to Discord.';
COMMENT ON COLUMN lhdiscord.oauth_states.user_id IS 'The user the state was issued to.';
COMMENT ON COLUMN lhdiscord.oauth_states.created_at IS 'When it was issued.';
COMMENT ON COLUMN lhdiscord.oauth_states.expires_at IS 'After this it is refused (lhdiscord.oauth_state_ttl).';
COMMENT ON COLUMN lhdiscord.oauth_states.used_at IS 'When complete_oauth() consumed it; a used state is refused.';
COMMENT ON INDEX lhdiscord.oauth_states_pkey IS 'Lookup by state hash.';

CREATE INDEX outbox_join_live_idx ON lhdiscord.outbox (discord_user_id)
  WHERE kind = 'guild_join' AND state IN ('pending', 'in_flight');
COMMENT ON INDEX lhdiscord.outbox_join_live_idx IS
  'A member''s role convergence waits while its guild join is pending.';

CREATE FUNCTION lhdiscord.notify(user_id bigint, notification text, content text) RETURNS integer
  LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'notify';
COMMENT ON FUNCTION lhdiscord.notify(bigint, text, text) IS
  'Queues one Discord DM per active account when the user wants Discord DMs and content is not null; returns the number queued. Content over 2000 characters is split into ordered messages.';

CREATE FUNCTION lhdiscord.begin_oauth(user_id bigint) RETURNS text
  LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'begin_oauth';
COMMENT ON FUNCTION lhdiscord.begin_oauth(bigint) IS
  'Checks the link gate, issues a single-use expiring state and returns the Discord authorize URL (scopes identify guilds.join).';

CREATE FUNCTION lhdiscord.complete_oauth(user_id bigint, code text, state text)
  RETURNS lhdiscord.discord_accounts
  LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
  AS 'MODULE_PATHNAME', 'complete_oauth';
COMMENT ON FUNCTION lhdiscord.complete_oauth(bigint, text, text) IS
  'Verifies and consumes the state, exchanges the code, reads /users/@me, links the account (link_account''s checks) and queues the guild join. Any OAuth failure raises "Discord authorization failed." and writes nothing.';

CREATE OR REPLACE VIEW lhdiscord.account_overview AS
  SELECT a.id, a.user_id, u.username AS portal_username,
         u.membership_level, u.staff_department, u.staff_rank, u.in_brig,
         a.discord_user_id, a.username, a.global_name,
         lhdiscord.display_name(a) AS display_name,
         lhdiscord.avatar_url(a) AS avatar_url,
         a.status,
         (a.access_token IS NOT NULL) AS has_access_token,
         a.token_expires_at, a.verified_at, a.created_at, a.updated_at,
         (SELECT count(*) FROM lhdiscord.outbox o
           WHERE o.discord_user_id = a.discord_user_id
             AND o.state IN ('pending', 'in_flight')) AS pending_jobs,
         a.tokens_stale
    FROM lhdiscord.discord_accounts a
    JOIN lhdiscord.users u ON u.user_id = a.user_id;

-- Room on each page for HOT updates: a change folding into a pending
-- convergence, and the role state recorded after each convergence, update
-- only columns no index covers, so with free space they touch no index.
ALTER TABLE lhdiscord.outbox SET (fillfactor = 50);
ALTER TABLE lhdiscord.role_state SET (fillfactor = 70);

-- role_drift reads role_map: with the extension's rights, like status_map's
-- own tables, so a role granted the view can read it.
ALTER FUNCTION lhdiscord.role_drift(text, boolean, text, text, text, text[], text[])
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-------------------------------------------------------------------------------
-- from lhdiscord--0.5.0--0.6.0.sql
-------------------------------------------------------------------------------

-- lhdiscord 0.5.0 -> 0.6.0: a worker that survives every fault (issue 11),
-- least privilege (issue 12).


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

-------------------------------------------------------------------------------
-- from lhdiscord--0.6.0--0.7.0.sql
-------------------------------------------------------------------------------

-- lhdiscord 0.6.0 -> 0.7.0: the PostgreSQL and PHP ecosystems (issue 15):
-- metrics for Prometheus.


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
