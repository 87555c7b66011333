-- The entitlement decision matrix, table-driven: both governance modes, each
-- cell with a fresh, a stale and a missing snapshot, with and without
-- privilege (portal role or break-glass).  Every dry run is compared with the
-- runbook's rule written independently in SQL: the mismatch lists are empty.
\i sql/include/reset.sql
SELECT lhdiscord.map_role('hauling.member', '900000000000000131');
SET lhdiscord.snapshot_max_age = '6h';

-- 12 users: in_scope x entitlement evidence x privilege.
CREATE TEMP TABLE cases AS
SELECT row_number() OVER (ORDER BY s, e, p) AS user_id, s AS in_scope, e AS evidence, p AS privilege
  FROM unnest(ARRAY[true, false]) s, unnest(ARRAY[true, false]) e,
       unnest(ARRAY['none', 'privileged_role', 'break_glass']) p;
INSERT INTO lhdiscord.users (user_id, username, membership_level, in_scope)
  SELECT user_id, 'u' || user_id, 'traveler', in_scope FROM cases;
-- Evidence in both forms: the portal role (portal-leading) and a linked
-- account holding the Discord role (discord-leading).
INSERT INTO lhdiscord.user_roles (user_id, role) SELECT user_id, 'hauling.member' FROM cases WHERE evidence;
INSERT INTO lhdiscord.user_roles (user_id, role) SELECT user_id, 'admin' FROM cases WHERE privilege = 'privileged_role';
INSERT INTO lhdiscord.break_glass (user_id, reason, expires_at)
  SELECT user_id, 'on call', now() + interval '1 day' FROM cases WHERE privilege = 'break_glass';
-- An expired break-glass row grants nothing.
INSERT INTO lhdiscord.break_glass (user_id, reason, expires_at)
  SELECT user_id, 'expired', now() - interval '1 minute' FROM cases WHERE privilege = 'none';
SELECT count((lhdiscord.link_account(user_id, (100000000000000000 + user_id)::text, 'd' || user_id)).id)
  FROM cases;
CREATE TEMP TABLE members AS
  SELECT jsonb_agg(jsonb_build_object('user', jsonb_build_object('id', (100000000000000000 + user_id)::text),
                                      'roles', CASE WHEN evidence THEN '["900000000000000131"]'::jsonb
                                                    ELSE '[]'::jsonb END)) AS m
    FROM cases;

-- The runbook's rule, independently: entitled needs the evidence and, when
-- Discord leads, a fresh snapshot; in scope + entitled is active; privilege
-- prevents any suspension; everything else is suspended.
CREATE TEMP TABLE runs (mode text, snap text, user_id bigint, new_status text, action text, jml text);
CREATE FUNCTION pg_temp.expected(mode text, snap text) RETURNS TABLE (user_id bigint, status text, revoke boolean)
LANGUAGE sql AS $$
  SELECT c.user_id,
         CASE WHEN c.in_scope AND ent THEN 'active' WHEN c.privilege <> 'none' THEN 'active' ELSE 'suspended' END,
         (c.privilege = 'none' AND (c.in_scope <> ent))
    FROM cases c,
         LATERAL (SELECT c.evidence AND (mode = 'portal_leading' OR snap = 'fresh') AS ent) x
$$;

CREATE FUNCTION pg_temp.run(mode text, snap text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM lhdiscord.member_snapshots;
  IF snap = 'fresh' THEN
    PERFORM lhdiscord.load_snapshot((SELECT m FROM members), now() - interval '1 hour');
  ELSIF snap = 'stale' THEN
    PERFORM lhdiscord.load_snapshot((SELECT m FROM members), now() - interval '7 hours');
  END IF;
  PERFORM set_config('lhdiscord.governance_mode', mode, true);
  INSERT INTO runs SELECT mode, snap, r.user_id, r.new_status, r.action, r.jml
    FROM lhdiscord.reconcile(dry_run => true) r;
END $$;

SELECT pg_temp.run(m, s) FROM unnest(ARRAY['discord_leading', 'portal_leading']) m,
                              unnest(ARRAY['fresh', 'stale', 'missing']) s;

-- Mismatches against the rule (users start active: a row means a suspension).
SELECT x.mode, x.snap, e.user_id, e.status AS expected, r.new_status AS got
  FROM (SELECT m, s FROM unnest(ARRAY['discord_leading', 'portal_leading']) m,
                         unnest(ARRAY['fresh', 'stale', 'missing']) s) AS x(mode, snap)
  CROSS JOIN LATERAL pg_temp.expected(x.mode, x.snap) e
  LEFT JOIN runs r ON r.mode = x.mode AND r.snap = x.snap AND r.user_id = e.user_id
 WHERE (e.status = 'suspended') <> (r.user_id IS NOT NULL)
    OR (r.user_id IS NOT NULL AND (r.new_status <> 'suspended' OR r.jml <> 'leaver'
                                   OR r.action <> CASE WHEN e.revoke THEN 'suspend_revoke_sessions' ELSE 'suspend' END));

-- The matrix itself, readable: suspended users per mode and snapshot state.
SELECT r.mode, r.snap, c.in_scope, c.evidence, c.privilege, r.action
  FROM runs r JOIN cases c USING (user_id)
 ORDER BY r.mode, r.snap, c.in_scope DESC, c.evidence DESC, c.privilege;
SELECT mode, snap, count(*) AS suspensions FROM runs GROUP BY 1, 2 ORDER BY 1, 2;

-- Dry runs wrote nothing at all.
SELECT count(*) AS audit_rows FROM lhdiscord.audit_log WHERE action LIKE 'entitlement.%';
SELECT count(*) FILTER (WHERE status <> 'active') AS not_active, count(*) AS users FROM lhdiscord.users;
SELECT count(*) AS exemptions FROM lhdiscord.access_state;

-- decide() itself, every cell.
SELECT s AS in_scope, e AS entitled, p AS privileged, lhdiscord.decide(s, e, p)
  FROM unnest(ARRAY[true, false]) s, unnest(ARRAY[true, false]) e, unnest(ARRAY[false, true]) p
 ORDER BY 1 DESC, 2 DESC, 3;
SELECT expect_error('SELECT lhdiscord.decide(NULL, true, false)');
