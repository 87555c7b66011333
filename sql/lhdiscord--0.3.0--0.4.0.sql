-- lhdiscord 0.3.0 -> 0.4.0: entitlement reconcile and identity governance:
-- snapshots (scan, load, shrink guard), the decision matrix, governance
-- modes, exemptions, the safety guard, restore, has_access, status_map.

\echo Use "ALTER EXTENSION lhdiscord UPDATE TO '0.4.0'" to load this file. \quit

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
