-- lhdiscord 0.1.0: schema, account lifecycle and the append-only audit log.
-- Loaded by CREATE EXTENSION lhdiscord; objects live in schema lhdiscord.

\echo Use "CREATE EXTENSION lhdiscord" to load this file. \quit

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
