-- Reconcile, for real: audit evidence, roles removed, sessions revoked,
-- idempotence, dry run, the safety guard, exemptions, the shrink guard,
-- restore_user, reconcile_user on in_scope changes, bad input.
\i sql/include/reset.sql
SELECT lhdiscord.map_role('hauling.member', '900000000000000131');

-- 40 members in the guild, all entitled; users 1-40 linked, in scope.
INSERT INTO lhdiscord.users (user_id, username, membership_level)
  SELECT g, 'u' || g, 'traveler' FROM generate_series(1, 40) g;
INSERT INTO lhdiscord.user_roles SELECT g, 'forum.poster' FROM generate_series(1, 40) g;
INSERT INTO lhdiscord.user_roles VALUES (1, 'admin'), (2, 'hauling.lead');
SELECT count((lhdiscord.link_account(g, (100000000000000000 + g)::text, 'd' || g)).id)
  FROM generate_series(1, 40) g;
CREATE FUNCTION pg_temp.members(n int, without int[] DEFAULT '{}') RETURNS jsonb LANGUAGE sql AS $$
  SELECT coalesce(jsonb_agg(jsonb_build_object(
           'user', jsonb_build_object('id', (100000000000000000 + g)::text),
           'roles', '["900000000000000131"]'::jsonb)), '[]')
    FROM generate_series(1, n) g WHERE g <> ALL (without)
$$;
SELECT lhdiscord.load_snapshot(pg_temp.members(40)) AS snap1 \gset
SELECT id = :snap1 AS latest, complete, trusted, member_count, source FROM lhdiscord.member_snapshots;
SELECT * FROM lhdiscord.reconcile();

-- Users 2, 3 and 4 lose the Discord role; 5 goes out of scope (app decision).
SELECT lhdiscord.load_snapshot(pg_temp.members(40, '{2,3,4}')) AS snap2 \gset
UPDATE lhdiscord.users SET in_scope = false WHERE user_id = 5;
-- The in_scope change reconciled user 5 at once (it is still entitled).
SELECT user_id, status, session_revoked_at IS NOT NULL AS sessions_revoked FROM lhdiscord.users WHERE user_id = 5;
SELECT * FROM lhdiscord.user_roles WHERE user_id = 5;

-- Dry run: the rows a real run returns, and no write at all.
CREATE TEMP TABLE before AS
  SELECT (SELECT count(*) FROM lhdiscord.audit_log) AS audits,
         (SELECT string_agg(user_id || ':' || status, ',' ORDER BY user_id) FROM lhdiscord.users) AS statuses,
         (SELECT count(*) FROM lhdiscord.user_roles) AS roles;
SELECT * FROM lhdiscord.reconcile(dry_run => true);
SELECT (SELECT count(*) FROM lhdiscord.audit_log) = audits AS audit_unchanged,
       (SELECT string_agg(user_id || ':' || status, ',' ORDER BY user_id) FROM lhdiscord.users) = statuses AS statuses_unchanged,
       (SELECT count(*) FROM lhdiscord.user_roles) = roles AS roles_unchanged
  FROM before;

-- The real run: same rows.
SELECT * FROM lhdiscord.reconcile();
SELECT user_id, status, session_revoked_at IS NOT NULL AS sessions_revoked
  FROM lhdiscord.users WHERE user_id <= 5 ORDER BY 1;
SELECT user_id, role FROM lhdiscord.user_roles WHERE user_id <= 5 ORDER BY 1, 2;

-- One entitlement.reconcile row per changed user, entity_pk = user id, with
-- the decision and its evidence; the session revocation recorded apart.
SELECT action, subject_user_id, entity, entity_pk,
       before_json, after_json - 'snapshot_id' - 'snapshot_age_seconds' AS after_json
  FROM lhdiscord.audit_log WHERE action LIKE 'entitlement.%' ORDER BY id;
SELECT count(*) AS snapshot_evidence_ok FROM lhdiscord.audit_log
 WHERE action = 'entitlement.reconcile' AND (after_json->>'snapshot_id')::bigint = :snap2
   AND (after_json->>'snapshot_age_seconds')::int BETWEEN 0 AND 60;

-- Idempotent: a second run returns nothing and writes nothing.
SELECT count(*) AS audits_before FROM lhdiscord.audit_log \gset
SELECT * FROM lhdiscord.reconcile();
SELECT count(*) - :audits_before AS new_audit_rows FROM lhdiscord.audit_log;

-- A role re-added to a suspended user is removed again (mover).
INSERT INTO lhdiscord.user_roles VALUES (3, 'forum.poster');
SELECT * FROM lhdiscord.reconcile();

-- restore_user brings back exactly the roles the suspension removed.
SELECT lhdiscord.restore_user(2, 1);
SELECT user_id, role FROM lhdiscord.user_roles WHERE user_id = 2 ORDER BY role;
SELECT status FROM lhdiscord.users WHERE user_id = 2;
SELECT lhdiscord.restore_user(3, 1);
SELECT user_id, role FROM lhdiscord.user_roles WHERE user_id = 3 ORDER BY role;
SELECT action, actor_user_id, subject_user_id, after_json FROM lhdiscord.audit_log
 WHERE action = 'entitlement.restore' ORDER BY id;
-- Already active: nothing to do, nothing written.
SELECT lhdiscord.restore_user(2, 1);
-- Bad input.
SELECT expect_error('SELECT lhdiscord.restore_user(999, 1)');
SELECT expect_error('SELECT lhdiscord.restore_user(4, 999)');
SELECT expect_error('SELECT lhdiscord.restore_user(NULL, 1)');
UPDATE lhdiscord.users SET status = 'disabled' WHERE user_id = 40;
SELECT expect_error('SELECT lhdiscord.restore_user(40, 1)');
UPDATE lhdiscord.users SET status = 'active' WHERE user_id = 40;
-- The restored users are still not entitled: the next run suspends them again.
SELECT user_id, old_status, new_status, action, jml FROM lhdiscord.reconcile();

-- Back in the guild and in scope: joiners.
SELECT lhdiscord.load_snapshot(pg_temp.members(40)) IS NOT NULL AS loaded;
UPDATE lhdiscord.users SET in_scope = true WHERE user_id = 5;
SELECT user_id, old_status, new_status, action, jml FROM lhdiscord.reconcile();

-- Safety guard: an emptied guild would suspend everyone.  With a trusted
-- (accepted) empty snapshot, the run aborts, changes nothing, and audits
-- the counts; force proceeds.
SET lhdiscord.snapshot_max_shrink_percent = 50;
SELECT lhdiscord.load_snapshot('[]') AS empty_snap \gset
SELECT complete, trusted, member_count FROM lhdiscord.member_snapshots WHERE id = :empty_snap;
SELECT action, after_json - 'snapshot_id' - 'previous_snapshot_id' AS after_json
  FROM lhdiscord.audit_log WHERE action = 'entitlement.snapshot_held';
-- The held snapshot is not evidence: reconcile still uses the previous one.
SELECT snapshot_id = :empty_snap AS uses_held FROM lhdiscord.access_context();
SELECT count(*) AS changes FROM lhdiscord.reconcile();
-- Accepted by the calling role (a member of lhdiscord_governance), not the
-- functions' owner; the application may not accept snapshots.
SET ROLE lhd_app;
SELECT expect_error(format('SELECT lhdiscord.accept_snapshot(%s)', :empty_snap));
RESET ROLE;
SET ROLE lhd_gov;
SELECT lhdiscord.accept_snapshot(:empty_snap);
RESET ROLE;
SELECT lhdiscord.accept_snapshot(:empty_snap) AS again;
SELECT accepted_by FROM lhdiscord.member_snapshots WHERE id = :empty_snap;
SELECT description FROM lhdiscord.audit_log WHERE action = 'entitlement.snapshot_accepted';
SELECT snapshot_id = :empty_snap AS uses_accepted FROM lhdiscord.access_context();
SELECT count(*) AS audits_before FROM lhdiscord.audit_log \gset
SELECT count(*) AS rows_returned FROM lhdiscord.reconcile();
SELECT count(*) FILTER (WHERE status = 'active') AS still_active FROM lhdiscord.users;
SELECT action, after_json - 'snapshot_id' AS after_json
  FROM lhdiscord.audit_log WHERE id > :audits_before;
-- The dry run shows what the real run would do, and still writes nothing.
SELECT count(*) AS audits_before FROM lhdiscord.audit_log \gset
SELECT count(*) AS would_change FROM lhdiscord.reconcile(dry_run => true);
SELECT count(*) - :audits_before AS written FROM lhdiscord.audit_log;
SELECT count(*) AS forced_changes FROM lhdiscord.reconcile(force => true);
-- Only the admin (privileged) is still active: the exemption is audited once.
SELECT user_id, status FROM lhdiscord.users WHERE status = 'active';
SELECT subject_user_id, after_json - 'snapshot_id' AS after_json
  FROM lhdiscord.audit_log WHERE action = 'entitlement.exemption';
SELECT count(*) AS second_forced_run FROM lhdiscord.reconcile(force => true);
SELECT count(*) AS exemption_rows FROM lhdiscord.audit_log WHERE action = 'entitlement.exemption';
-- Break-glass works the same way, for a non-admin, until it expires.
INSERT INTO lhdiscord.break_glass (user_id, reason, granted_by, expires_at)
  VALUES (7, 'incident 42', 1, now() + interval '1 hour');
SELECT user_id, old_status, new_status, action, jml FROM lhdiscord.reconcile(force => true);
SELECT subject_user_id, after_json->>'exemption' AS exemption
  FROM lhdiscord.audit_log WHERE action = 'entitlement.exemption' ORDER BY id;
-- The admin's exemption ends once it is no longer needed (silently), and is
-- audited again the next time it prevents a suspension.
SELECT lhdiscord.load_snapshot(pg_temp.members(40)) IS NOT NULL AS guild_back;
SELECT count(*) AS joiners FROM lhdiscord.reconcile(force => true);
SELECT user_id, exempt_since IS NOT NULL AS exempt FROM lhdiscord.access_state ORDER BY 1;
SELECT lhdiscord.accept_snapshot(lhdiscord.load_snapshot('[]'));
SELECT count(*) AS leavers FROM lhdiscord.reconcile(force => true);
SELECT subject_user_id FROM lhdiscord.audit_log WHERE action = 'entitlement.exemption' ORDER BY id;

-- Bad input.
SET lhdiscord.governance_mode = 'anarchy';
\set VERBOSITY sqlstate
SET lhdiscord.snapshot_max_age = -5;
\set VERBOSITY default
SET lhdiscord.reconcile_max_suspend_percent = 150;
SELECT expect_error('SELECT * FROM lhdiscord.reconcile_user(424242)');
SELECT expect_error('SELECT * FROM lhdiscord.reconcile_user(NULL)');
SELECT expect_error('SELECT lhdiscord.accept_snapshot(424242)');
SELECT expect_error('SELECT lhdiscord.accept_snapshot(NULL)');
SELECT expect_error($$SELECT lhdiscord.load_snapshot('{"user": 1}')$$);
SELECT expect_error($$SELECT lhdiscord.load_snapshot('[{"user": {"id": "12"}}]')$$);
SELECT expect_error($$SELECT lhdiscord.load_snapshot('[{"user": {"id": "100000000000000001"}, "roles": [7]}]')$$);
SELECT expect_error($$SELECT lhdiscord.load_snapshot('[{"user": {"id": "100000000000000001"}}, {"user": {"id": "100000000000000001"}}]')$$);
SELECT expect_error($$SELECT lhdiscord.load_snapshot('[]', now() + interval '1 day')$$);
SELECT expect_error($$SELECT lhdiscord.load_snapshot(NULL)$$);
-- NULL flags are refused, not read as false: a NULL dry_run must not write.
SELECT (SELECT count(*) FROM lhdiscord.audit_log) AS audit_before,
       (SELECT count(*) FROM lhdiscord.member_snapshots) AS snapshots_before \gset
SELECT expect_error('SELECT * FROM lhdiscord.reconcile(NULL)');
SELECT expect_error('SELECT * FROM lhdiscord.reconcile(false, NULL)');
SELECT expect_error($$SELECT lhdiscord.load_snapshot('[]', NULL)$$);
SELECT (SELECT count(*) FROM lhdiscord.audit_log) = :audit_before AS no_audit,
       (SELECT count(*) FROM lhdiscord.member_snapshots) = :snapshots_before AS no_snapshot;
