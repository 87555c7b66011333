-- Least privilege (issue 12): who may call what, enumerated from the
-- catalog so that no function or view can slip through untested; refused
-- calls write nothing; trigger functions run only for their own tables;
-- canonical snowflakes; secrets only from the server's configuration; one
-- scan however often it is requested; the audit log's DDL guard.
\i sql/include/reset.sql

-- The predefined roles: NOLOGIN, documented.
SELECT rolname, rolcanlogin, rolsuper, rolinherit, shobj_description(oid, 'pg_authid') IS NOT NULL AS commented
  FROM pg_roles WHERE rolname LIKE 'lhdiscord\_%' ORDER BY 1;

-- The README's setup: a login role per job (lhd_app, lhd_gov, lhd_watch are
-- members of lhdiscord_app, lhdiscord_governance, lhdiscord_monitor; see the
-- preamble), and one with only CONNECT and schema USAGE.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lhd_nobody') THEN
    CREATE ROLE lhd_nobody LOGIN;
  END IF;
END $$;
DO $$ BEGIN EXECUTE format('GRANT CONNECT ON DATABASE %I TO lhd_nobody', current_database()); END $$;
GRANT USAGE ON SCHEMA lhdiscord TO lhd_nobody;

CREATE TEMP TABLE probe_roles (role name PRIMARY KEY);
INSERT INTO probe_roles VALUES ('lhd_app'), ('lhd_gov'), ('lhd_watch'), ('lhd_nobody'), ('lhd_stranger');

-- Every function of the extension, from pg_depend, and who may EXECUTE it.
CREATE TEMP VIEW ext_functions AS
  SELECT p.oid::regprocedure AS fn, p.prorettype::regtype::text AS rettype
    FROM pg_proc p
    JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
   WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
     AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'lhdiscord');

-- The explicit expected list.  '{}' means superusers (and roles explicitly
-- granted by a DBA) only.
CREATE TEMP TABLE expected_fn (fn text PRIMARY KEY, may text[] NOT NULL);
INSERT INTO expected_fn VALUES
  ('lhdiscord.accept_snapshot(bigint)', '{lhd_gov}'),
  ('lhdiscord.access_context()', '{lhd_app,lhd_watch}'),
  ('lhdiscord.account_tokens(bigint)', '{}'),
  ('lhdiscord.accounts_after_change()', '{}'),
  ('lhdiscord.accounts_of(bigint,bigint)', '{lhd_app}'),
  ('lhdiscord.audit_log_ddl_guard()', '{}'),
  ('lhdiscord.audit_log_guard()', '{}'),
  ('lhdiscord.audit_log_stamp()', '{}'),
  ('lhdiscord.avatar_url(lhdiscord.account_overview)', '{lhd_app}'),
  ('lhdiscord.avatar_url(lhdiscord.active_accounts)', '{lhd_app}'),
  ('lhdiscord.avatar_url(lhdiscord.discord_accounts)', '{lhd_app}'),
  ('lhdiscord.begin_oauth(bigint)', '{lhd_app}'),
  ('lhdiscord.can_link(bigint)', '{lhd_app}'),
  ('lhdiscord.complete_oauth(bigint,text,text)', '{lhd_app}'),
  ('lhdiscord.decide(boolean,boolean,boolean)', '{lhd_app,lhd_watch}'),
  ('lhdiscord.desired_roles(text)', '{lhd_app}'),
  ('lhdiscord.display_name(lhdiscord.account_overview)', '{lhd_app}'),
  ('lhdiscord.display_name(lhdiscord.active_accounts)', '{lhd_app}'),
  ('lhdiscord.display_name(lhdiscord.discord_accounts)', '{lhd_app}'),
  ('lhdiscord.drain_outbox(integer)', '{}'),
  ('lhdiscord.grant_break_glass(bigint,bigint,text,timestamp with time zone)', '{lhd_gov}'),
  ('lhdiscord.has_access(bigint)', '{lhd_app}'),
  ('lhdiscord.has_discord_linked(bigint)', '{lhd_app}'),
  ('lhdiscord.link_account(bigint,text,text,text,text,text,text,timestamp with time zone,lhdiscord.outbox_lane)', '{lhd_app}'),
  ('lhdiscord.load_snapshot(jsonb,timestamp with time zone)', '{lhd_gov}'),
  ('lhdiscord.map_role(text,text)', '{}'),
  ('lhdiscord.notify(bigint,text,text,lhdiscord.outbox_lane)', '{lhd_app}'),
  ('lhdiscord.outbox_wake()', '{}'),
  ('lhdiscord.prune_outbox(interval)', '{}'),
  ('lhdiscord.prune_snapshots(interval)', '{}'),
  ('lhdiscord.purge_audit_log(interval)', '{}'),
  ('lhdiscord.reconcile(boolean,boolean)', '{lhd_gov}'),
  ('lhdiscord.reconcile_user(bigint)', '{lhd_gov}'),
  ('lhdiscord.request_member_scan()', '{lhd_gov}'),
  ('lhdiscord.restore_user(bigint,bigint)', '{lhd_gov}'),
  ('lhdiscord.revoke_account(bigint,bigint)', '{lhd_app}'),
  ('lhdiscord.revoke_break_glass(bigint,bigint)', '{lhd_gov}'),
  ('lhdiscord.role_drift(text,boolean,text,text,text,text[],text[])', '{lhd_app,lhd_watch}'),
  ('lhdiscord.role_map_after_change()', '{}'),
  ('lhdiscord.role_map_validate()', '{}'),
  ('lhdiscord.sync_permissions(bigint)', '{lhd_app}'),
  ('lhdiscord.sync_roles(bigint)', '{lhd_app}'),
  ('lhdiscord.sync_staff(bigint)', '{lhd_app}'),
  ('lhdiscord.touch_updated_at()', '{}'),
  ('lhdiscord.unlink_account(bigint,bigint)', '{lhd_app}'),
  ('lhdiscord.user_roles_after_change()', '{}'),
  ('lhdiscord.users_after_update()', '{}'),
  ('lhdiscord.users_in_scope_changed()', '{}'),
  ('lhdiscord.worker_state()', '{lhd_watch}'),
  ('lhdiscord.gateway_state()', '{lhd_watch}');

-- A function of the extension missing from the list, or listed but gone.
SELECT fn::text AS not_in_expected_list FROM ext_functions
EXCEPT SELECT fn FROM expected_fn ORDER BY 1;
SELECT fn AS listed_but_not_in_extension FROM expected_fn
EXCEPT SELECT fn::text FROM ext_functions ORDER BY 1;
-- PUBLIC may execute none of them.
SELECT fn AS public_may_execute FROM ext_functions f, pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
 WHERE p.oid = f.fn AND a.grantee = 0 ORDER BY 1;
-- Every (function, role) whose EXECUTE privilege differs from the list.
SELECT e.fn, r.role, has_function_privilege(r.role, f.fn, 'EXECUTE') AS may_execute
  FROM ext_functions f JOIN expected_fn e ON e.fn = f.fn::text CROSS JOIN probe_roles r
 WHERE has_function_privilege(r.role, f.fn, 'EXECUTE') <> (r.role = ANY (e.may))
 ORDER BY 1, 2;
-- The resulting matrix, for the record.
SELECT f.fn::text AS function,
       coalesce(string_agg(r.role, ', ' ORDER BY r.role) FILTER (WHERE has_function_privilege(r.role, f.fn, 'EXECUTE')), '') AS executable_by
  FROM ext_functions f CROSS JOIN probe_roles r
 GROUP BY f.fn ORDER BY 1;

-- Every relation (table, view, sequence) of the extension and the
-- privileges each role holds on it, against the explicit list.
CREATE TEMP VIEW ext_relations AS
  SELECT c.oid::regclass AS rel, c.relkind
    FROM pg_class c
    JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid
   WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
     AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'lhdiscord');
CREATE TEMP TABLE expected_rel (rel text, role name, privs text, PRIMARY KEY (rel, role));
INSERT INTO expected_rel VALUES
  ('lhdiscord.users', 'lhd_app', 'SELECT,INSERT,UPDATE,DELETE'),
  ('lhdiscord.user_roles', 'lhd_app', 'SELECT,INSERT,UPDATE,DELETE'),
  ('lhdiscord.active_accounts', 'lhd_app', 'SELECT'),
  ('lhdiscord.account_overview', 'lhd_app', 'SELECT'),
  ('lhdiscord.status_map', 'lhd_app', 'SELECT'),
  ('lhdiscord.status_map', 'lhd_watch', 'SELECT'),
  ('lhdiscord.worker_status', 'lhd_watch', 'SELECT'),
  ('lhdiscord.outbox_stats', 'lhd_watch', 'SELECT'),
  ('lhdiscord.metrics', 'lhd_watch', 'SELECT'),
  ('lhdiscord.metrics_outbox', 'lhd_watch', 'SELECT'),
  ('lhdiscord.metrics_responses', 'lhd_watch', 'SELECT'),
  ('lhdiscord.metrics_reconcile', 'lhd_watch', 'SELECT');
CREATE TEMP VIEW actual_rel AS
  SELECT x.rel::text AS rel, r.role,
         (SELECT string_agg(p, ',' ORDER BY o) FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER'])
                 WITH ORDINALITY AS u(p, o)
           WHERE has_table_privilege(r.role, x.rel, p)) AS privs
    FROM ext_relations x CROSS JOIN probe_roles r
   WHERE x.relkind IN ('r', 'v', 'm', 'p')
  UNION ALL
  SELECT x.rel::text, r.role,
         (SELECT string_agg(p, ',' ORDER BY o) FROM unnest(ARRAY['USAGE', 'SELECT', 'UPDATE']) WITH ORDINALITY AS u(p, o)
           WHERE has_sequence_privilege(r.role, x.rel, p))
    FROM ext_relations x CROSS JOIN probe_roles r
   WHERE x.relkind = 'S';
SELECT coalesce(a.rel, e.rel) AS rel, coalesce(a.role, e.role) AS role, a.privs AS actual, e.privs AS expected
  FROM (SELECT * FROM actual_rel WHERE privs IS NOT NULL) a
  FULL JOIN expected_rel e ON e.rel = a.rel AND e.role = a.role
 WHERE a.privs IS DISTINCT FROM e.privs
 ORDER BY 1, 2;
SELECT x.rel AS public_has_privileges FROM ext_relations x, pg_class c, aclexplode(c.relacl) a
 WHERE c.oid = x.rel AND a.grantee = 0 ORDER BY 1;

-- Some data, so that a call that got through would have something to change.
INSERT INTO lhdiscord.users (user_id, username, membership_level, staff_department, staff_rank) VALUES
  (1, 'admin_alice', 'citizen', 'command', 'officer'), (2, 'bob', 'resident', NULL, 'none');
INSERT INTO lhdiscord.user_roles VALUES (1, 'admin'), (2, 'hauling.member');
SELECT lhdiscord.map_role('citizen', '900000000000000103');
SELECT lhdiscord.map_role('verified', '900000000000000104');
SELECT (lhdiscord.link_account(1, '200000000000000001', 'alice_d')).id IS NOT NULL AS linked;
SELECT (lhdiscord.link_account(2, '200000000000000002', 'bob_d')).id IS NOT NULL AS linked;
SELECT lhdiscord.drain_outbox() > 0 AS drained;

-- Row counts of every table of the extension, as one value.
CREATE FUNCTION pg_temp.row_counts() RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  t regclass;
  n bigint;
  out jsonb := '{}';
BEGIN
  FOR t IN SELECT rel FROM ext_relations WHERE relkind = 'r' ORDER BY rel::text LOOP
    EXECUTE format('SELECT count(*) FROM %s', t) INTO n;
    out := out || jsonb_build_object(t::text, n);
  END LOOP;
  RETURN out;
END $$;
CREATE TEMP TABLE counts_before AS SELECT pg_temp.row_counts() AS c;

-- Call every function (with NULL arguments, in subqueries so that the
-- planner cannot fold a strict call away) and read every view as every
-- role that may not: each is refused with 42501 before it runs.  Trigger
-- functions cannot be called; a role may not even attach them (below).
CREATE TEMP TABLE refused (fn text, role name, outcome text);
DO $$
DECLARE
  f record;
  r record;
  q text;
  outcome text;
BEGIN
  FOR f IN
    SELECT e.fn, e.may, p.oid, p.prorettype::regtype::text AS rettype, p.proname,
           (SELECT string_agg(format('(SELECT NULL::%s)', t::regtype), ', ' ORDER BY o)
              FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(t, o)) AS args
      FROM expected_fn e JOIN pg_proc p ON p.oid = e.fn::regprocedure
     WHERE p.prorettype NOT IN ('trigger'::regtype, 'event_trigger'::regtype)
  LOOP
    FOR r IN SELECT role FROM probe_roles WHERE NOT (role = ANY (f.may)) LOOP
      q := format('SELECT * FROM lhdiscord.%I(%s)', f.proname, coalesce(f.args, ''));
      BEGIN
        EXECUTE format('SET LOCAL ROLE %I', r.role);
        EXECUTE q;
        outcome := 'CALLED';
      EXCEPTION WHEN OTHERS THEN
        outcome := SQLSTATE || ': ' || SQLERRM;
      END;
      EXECUTE 'RESET ROLE';
      INSERT INTO refused VALUES (f.fn, r.role, outcome);
    END LOOP;
  END LOOP;
  FOR f IN SELECT x.rel::text AS rel FROM ext_relations x WHERE x.relkind IN ('r', 'v') LOOP
    FOR r IN SELECT p.role FROM probe_roles p
              WHERE NOT EXISTS (SELECT 1 FROM expected_rel e WHERE e.rel = f.rel AND e.role = p.role) LOOP
      BEGIN
        EXECUTE format('SET LOCAL ROLE %I', r.role);
        EXECUTE format('SELECT count(*) FROM %s', f.rel);
        outcome := 'READ';
      EXCEPTION WHEN OTHERS THEN
        outcome := SQLSTATE || ': ' || SQLERRM;
      END;
      EXECUTE 'RESET ROLE';
      INSERT INTO refused VALUES (f.rel, r.role, outcome);
    END LOOP;
  END LOOP;
END $$;
SELECT count(*) AS refused_attempts FROM refused;
-- Anything not refused for lack of privilege:
SELECT fn, role, outcome FROM refused
 WHERE outcome !~ '^42501: permission denied for (function|view|table|schema) ' ORDER BY 1, 2;
SELECT (SELECT c FROM counts_before) = pg_temp.row_counts() AS refused_calls_wrote_nothing;

-- And every role reads what it is granted (the functions behind each view
-- are granted with it).
CREATE TEMP TABLE allowed_reads (rel text, role name, outcome text);
DO $$
DECLARE
  e record;
  outcome text;
BEGIN
  FOR e IN SELECT * FROM expected_rel ORDER BY 1, 2 LOOP
    BEGIN
      EXECUTE format('SET LOCAL ROLE %I', e.role);
      EXECUTE format('SELECT count(*) FROM %s', e.rel);
      outcome := 'ok';
    EXCEPTION WHEN OTHERS THEN
      outcome := SQLSTATE || ': ' || SQLERRM;
    END;
    EXECUTE 'RESET ROLE';
    INSERT INTO allowed_reads VALUES (e.rel, e.role, outcome);
  END LOOP;
END $$;
SELECT * FROM allowed_reads ORDER BY 1, 2;

-- Trigger hijack: the monitoring role attaches users_after_update() to its
-- own temp table to "update" user 1 into the brig.  Refused.
SET ROLE lhd_watch;
CREATE TEMP TABLE fake_users (user_id bigint, membership_level text, staff_department text,
                              staff_rank text, in_brig boolean);
INSERT INTO fake_users VALUES (1, 'citizen', 'command', 'officer', false);
SELECT expect_error($$CREATE TRIGGER hijack AFTER UPDATE ON fake_users
  FOR EACH ROW EXECUTE FUNCTION lhdiscord.users_after_update()$$);
UPDATE fake_users SET in_brig = true;
RESET ROLE;
-- Even the owner cannot make a trigger function of the extension act for
-- another table: each checks which table fired it.
CREATE TRIGGER hijack AFTER UPDATE ON fake_users
  FOR EACH ROW EXECUTE FUNCTION lhdiscord.users_after_update();
SELECT expect_error('UPDATE fake_users SET in_brig = NOT in_brig');
DROP TRIGGER hijack ON fake_users;
-- Every trigger function of the extension, attached to a foreign table.
CREATE TEMP TABLE hijack_results (fn text, outcome text);
DO $$
DECLARE
  f record;
  outcome text;
BEGIN
  FOR f IN SELECT fn, p.proname FROM ext_functions e JOIN pg_proc p ON p.oid = e.fn
            WHERE e.rettype = 'trigger' ORDER BY 1 LOOP
    EXECUTE format('CREATE TRIGGER hijack_row AFTER INSERT ON fake_users FOR EACH ROW EXECUTE FUNCTION lhdiscord.%I()', f.proname);
    BEGIN
      INSERT INTO fake_users VALUES (2, 'citizen', NULL, 'none', true);
      outcome := 'RAN';
    EXCEPTION WHEN OTHERS THEN
      outcome := SQLSTATE || ': ' || SQLERRM;
    END;
    EXECUTE 'DROP TRIGGER hijack_row ON fake_users';
    INSERT INTO hijack_results VALUES (f.fn, outcome);
  END LOOP;
END $$;
SELECT * FROM hijack_results ORDER BY 1;
SELECT (SELECT c FROM counts_before) = pg_temp.row_counts() AS hijack_wrote_nothing;
SELECT status FROM lhdiscord.discord_accounts WHERE user_id = 1;
SELECT count(*) AS brig_audits FROM lhdiscord.audit_log WHERE action = 'discord_user_brigged';

-- restore_user and break-glass changes need an actor with portal role admin.
UPDATE lhdiscord.users SET status = 'suspended' WHERE user_id = 2;
TRUNCATE counts_before;
INSERT INTO counts_before SELECT pg_temp.row_counts();
SET ROLE lhd_gov;
SELECT expect_error('SELECT lhdiscord.restore_user(2, 2)');
SELECT expect_error('SELECT lhdiscord.restore_user(2, 424242)');
SELECT expect_error($$SELECT lhdiscord.grant_break_glass(2, 2, 'covering a shift', now() + interval '1 day')$$);
SELECT expect_error('SELECT lhdiscord.revoke_break_glass(1, 2)');
RESET ROLE;
SELECT (SELECT c FROM counts_before) = pg_temp.row_counts() AS unauthorized_wrote_nothing;
SET ROLE lhd_gov;
SELECT lhdiscord.restore_user(2, 1);
SELECT lhdiscord.grant_break_glass(2, 1, 'covering a shift', now() + interval '1 day') AS grant_id \gset
SELECT expect_error($$SELECT lhdiscord.grant_break_glass(2, 1, '', now() + interval '1 day')$$);
SELECT expect_error($$SELECT lhdiscord.grant_break_glass(2, 1, 'x', now() - interval '1 day')$$);
SELECT expect_error($$SELECT lhdiscord.grant_break_glass(424242, 1, 'x', now() + interval '1 day')$$);
SELECT expect_error($$SELECT lhdiscord.grant_break_glass(2, 1, NULL, now() + interval '1 day')$$);
SELECT lhdiscord.revoke_break_glass(:grant_id, 1) AS revoked, lhdiscord.revoke_break_glass(:grant_id, 1) AS again;
SELECT expect_error('SELECT lhdiscord.revoke_break_glass(424242, 1)');
RESET ROLE;
SELECT user_id, granted_by, revoked_by, expires_at <= now() AS ended FROM lhdiscord.break_glass;

-- Every audit row records the database roles beside the portal actor.
SELECT action, actor_user_id, subject_user_id, db_session_user = session_user AS session_user_recorded,
       db_current_user
  FROM lhdiscord.audit_log
 WHERE action IN ('entitlement.restore', 'entitlement.break_glass_granted', 'entitlement.break_glass_revoked')
 ORDER BY id;
-- A direct INSERT is stamped too; values that a writer brings are kept (a
-- restore's COPY brings the recorded ones back); only a role with INSERT on
-- the audit log, a superuser, can bring any.
INSERT INTO lhdiscord.audit_log (action) VALUES ('by_hand');
COPY lhdiscord.audit_log (action, db_session_user, db_current_user) FROM stdin;
restored	portal_login	portal_role
\.
SELECT action, db_session_user = session_user AS session_user_recorded, db_current_user = current_user AS current_user_recorded
  FROM lhdiscord.audit_log WHERE action = 'by_hand';
SELECT action, db_session_user, db_current_user FROM lhdiscord.audit_log WHERE action = 'restored';
SELECT count(*) AS rows_without_roles FROM lhdiscord.audit_log WHERE db_session_user = '' OR db_current_user = '';
SELECT has_table_privilege(r.role, 'lhdiscord.audit_log', 'INSERT') AS may_insert, count(*)
  FROM probe_roles r GROUP BY 1;

-- Canonical snowflakes: refused by every function taking one, and by a
-- direct INSERT; 2^64 - 1 is accepted.
INSERT INTO lhdiscord.users (user_id, username, membership_level) VALUES (3, 'carol', 'citizen');
TRUNCATE counts_before;
INSERT INTO counts_before SELECT pg_temp.row_counts();
CREATE TEMP TABLE bad_ids (id text);
INSERT INTO bad_ids VALUES ('0200000000000000001'), ('99999999999999999999'), ('18446744073709551616');
SELECT b.id,
       expect_error(format('SELECT lhdiscord.link_account(3, %L, %L)', b.id, 'carol_d')) AS link_account,
       expect_error(format('SELECT lhdiscord.map_role(%L, %L)', 'resident', b.id)) AS map_role,
       expect_error(format('SELECT lhdiscord.desired_roles(%L)', b.id)) AS desired_roles,
       expect_error(format('SELECT lhdiscord.role_drift(%L, false, %L, NULL, %L, NULL, %L)',
                           'active', 'citizen', 'none', ARRAY[b.id])) AS role_drift
  FROM bad_ids b ORDER BY 1;
SELECT b.id,
       expect_error(format('SELECT lhdiscord.load_snapshot(%L)', jsonb_build_array(jsonb_build_object('user', jsonb_build_object('id', b.id))))) AS load_snapshot_user,
       expect_error(format('SELECT lhdiscord.load_snapshot(%L)', jsonb_build_array(jsonb_build_object('user', jsonb_build_object('id', '200000000000000001'), 'roles', jsonb_build_array(b.id))))) AS load_snapshot_role
  FROM bad_ids b ORDER BY 1;
SELECT b.id,
       expect_error(format('INSERT INTO lhdiscord.discord_accounts (user_id, discord_user_id, username) VALUES (3, %L, %L)', b.id, 'c')) AS discord_accounts,
       expect_error(format('INSERT INTO lhdiscord.snapshot_members (snapshot_id, discord_user_id) SELECT max(id), %L FROM lhdiscord.member_snapshots', b.id)) AS snapshot_members,
       expect_error(format('INSERT INTO lhdiscord.outbox (kind, discord_user_id) VALUES (%L, %L)', 'roles', b.id)) AS outbox
  FROM bad_ids b ORDER BY 1;
SELECT b.id,
       expect_error(format('INSERT INTO lhdiscord.role_map VALUES (%L, %L)', 'resident', b.id)) AS role_map,
       expect_error(format('INSERT INTO lhdiscord.role_state VALUES (%L, %L)', '200000000000000009', ARRAY[b.id])) AS role_state_roles,
       expect_error(format('INSERT INTO lhdiscord.dm_channels VALUES (%L, %L)', '200000000000000009', b.id)) AS dm_channel,
       expect_error(format('UPDATE lhdiscord.member_snapshots SET scan_after = %L', b.id)) AS scan_cursor
  FROM bad_ids b ORDER BY 1;
SELECT expect_error($$SET lhdiscord.guild_id = '0200000000000000001'$$) AS guild_id;
SELECT (SELECT c FROM counts_before) = pg_temp.row_counts() AS bad_ids_wrote_nothing;
SELECT discord_user_id FROM lhdiscord.link_account(3, '18446744073709551615', 'carol_d');
SELECT lhdiscord.map_role('resident', '18446744073709551615');
SELECT lhdiscord.desired_roles('18446744073709551615');
SELECT lhdiscord.role_drift('active', false, 'resident', NULL, 'none', NULL, '{18446744073709551615,900000000000000104}');
SELECT lhdiscord.load_snapshot('[{"user": {"id": "18446744073709551615"}, "roles": ["18446744073709551615"]}]') AS max_snap \gset
SELECT discord_user_id, role_ids FROM lhdiscord.snapshot_members WHERE snapshot_id = :max_snap;
INSERT INTO lhdiscord.role_state VALUES ('18446744073709551614', '{18446744073709551615}');
SET lhdiscord.guild_id = '18446744073709551615';
SET lhdiscord.guild_id = '100000000000000001';

-- Secrets only from the server's configuration: ALTER ROLE/DATABASE ... SET
-- and CREATE FUNCTION ... SET are refused when they run, nothing reaches
-- pg_db_role_setting, and a session cannot give a secret a value.
SELECT expect_error($$ALTER ROLE lhd_app SET lhdiscord.bot_token = 'attacker-token'$$);
SELECT expect_error(format($$ALTER ROLE lhd_app IN DATABASE %I SET lhdiscord.bot_token = 'attacker-token'$$, current_database()));
SELECT expect_error($$ALTER ROLE ALL SET lhdiscord.client_secret = 'x'$$);
SELECT expect_error(format($$ALTER DATABASE %I SET lhdiscord.encryption_key = '%s'$$, current_database(), repeat('a', 64)));
SELECT expect_error($$ALTER ROLE lhd_app SET lhdiscord.bot_token = ''$$);
SELECT expect_error($$CREATE FUNCTION pg_temp.with_token() RETURNS int LANGUAGE sql
  SET lhdiscord.bot_token = 'x' AS 'SELECT 1'$$);
SELECT expect_error($$SET lhdiscord.bot_token = 'session-token'$$);
SELECT expect_error($$SELECT set_config('lhdiscord.client_secret', 'x', false)$$);
SELECT count(*) AS secret_role_settings FROM pg_db_role_setting
 WHERE array_to_string(setconfig, ' ') ~ 'lhdiscord\.(bot_token|client_secret|encryption_key)';
-- Other settings may still be set per role.
ALTER ROLE lhd_app SET lhdiscord.max_discord_accounts = 2;
SELECT count(*) AS other_role_settings FROM pg_db_role_setting WHERE 'lhdiscord.max_discord_accounts=2' = ANY (setconfig);
ALTER ROLE lhd_app RESET lhdiscord.max_discord_accounts;

-- Twenty request_member_scan() calls, each its own transaction, queue one
-- scan (and so do twenty in one statement).
SET ROLE lhd_gov;
CREATE TEMP TABLE scan_ids (id bigint);
SELECT 'INSERT INTO scan_ids SELECT lhdiscord.request_member_scan()' FROM generate_series(1, 20) \gexec
SELECT count(*) AS calls, count(DISTINCT id) AS snapshots FROM scan_ids;
SELECT count(DISTINCT lhdiscord.request_member_scan()) AS snapshots FROM generate_series(1, 20);
RESET ROLE;
SELECT count(*) AS scan_jobs FROM lhdiscord.outbox WHERE kind = 'member_scan';
SELECT lhdiscord.drain_outbox() >= 1 AS scanned;
SELECT state FROM lhdiscord.outbox WHERE kind = 'member_scan';
-- Once it finished, the next request queues the next scan.
SET ROLE lhd_gov;
SELECT lhdiscord.request_member_scan() = lhdiscord.request_member_scan() AS same_live_scan;
RESET ROLE;
SELECT count(*) AS scan_jobs FROM lhdiscord.outbox WHERE kind = 'member_scan';

-- Snapshot retention: old snapshots go, but never the latest trusted one,
-- the latest complete one, or one a scan is filling.
SELECT count(*) AS snapshots_before FROM lhdiscord.member_snapshots;
UPDATE lhdiscord.member_snapshots SET finished_at = now() - interval '30 days', taken_at = now() - interval '30 days';
SELECT lhdiscord.prune_snapshots() AS pruned;
SELECT s.complete, s.trusted,
       s.id = (SELECT snapshot_id FROM lhdiscord.access_context()) AS in_use,
       EXISTS (SELECT 1 FROM lhdiscord.outbox o WHERE o.kind = 'member_scan' AND o.state = 'pending'
                AND (o.payload->>'snapshot_id')::bigint = s.id) AS scanning
  FROM lhdiscord.member_snapshots s ORDER BY s.id;
SELECT action, after_json->'snapshots_removed' AS removed FROM lhdiscord.audit_log
 WHERE action = 'entitlement.snapshots_pruned';
SET lhdiscord.snapshot_retention = 0;
SELECT lhdiscord.prune_snapshots(interval '1 day') AS pruned_again;
RESET lhdiscord.snapshot_retention;

-- The audit log's guard holds against its owner's DDL, whatever
-- session_replication_role says.
SELECT expect_error('ALTER TABLE lhdiscord.audit_log DISABLE TRIGGER audit_log_no_change');
SELECT expect_error('ALTER TABLE lhdiscord.audit_log DISABLE TRIGGER ALL');
SELECT expect_error('ALTER TABLE lhdiscord.audit_log ENABLE TRIGGER audit_log_no_change');
SELECT expect_error($$ALTER TABLE lhdiscord.audit_log ALTER COLUMN description TYPE text USING 'forged'$$);
SELECT expect_error('CREATE RULE keep AS ON DELETE TO lhdiscord.audit_log DO INSTEAD NOTHING');
SELECT expect_error('CREATE RULE keep AS ON UPDATE TO lhdiscord.audit_log DO INSTEAD NOTHING');
SELECT expect_error($$CREATE TRIGGER drop_rows BEFORE INSERT ON lhdiscord.audit_log
  FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()$$);
SELECT expect_error('DROP TRIGGER audit_log_no_change ON lhdiscord.audit_log');
SELECT expect_error('ALTER TRIGGER audit_log_no_change ON lhdiscord.audit_log RENAME TO off');
SET session_replication_role = replica;
SELECT expect_error('ALTER TABLE lhdiscord.audit_log DISABLE TRIGGER audit_log_no_change');
SELECT expect_error('DELETE FROM lhdiscord.audit_log');
RESET session_replication_role;
SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'lhdiscord.audit_log'::regclass ORDER BY 1;
SELECT count(*) AS rules FROM pg_rewrite WHERE ev_class = 'lhdiscord.audit_log'::regclass;
-- Other tables' DDL, by any role, is untouched by the guard.
SET ROLE lhd_app;
CREATE TEMP TABLE mine (x int);
ALTER TABLE mine ADD COLUMN y int;
CREATE RULE nothing AS ON DELETE TO mine DO INSTEAD NOTHING;
CREATE FUNCTION pg_temp.noop() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
CREATE TRIGGER noop BEFORE INSERT ON mine FOR EACH ROW EXECUTE FUNCTION pg_temp.noop();
DROP TRIGGER noop ON mine;
DROP RULE nothing ON mine;
DROP TABLE mine;
RESET ROLE;
SET ROLE lhd_stranger;   -- not even USAGE on schema lhdiscord
CREATE TEMP TABLE theirs (x int);
ALTER TABLE theirs ADD COLUMN y int;
CREATE RULE nothing AS ON DELETE TO theirs DO INSTEAD NOTHING;
DROP RULE nothing ON theirs;
DROP TABLE theirs;
RESET ROLE;
SELECT evtname, evtevent, evtenabled FROM pg_event_trigger WHERE evtname LIKE 'lhdiscord%' ORDER BY 1;

-- DROP EXTENSION leaves the cluster-wide roles in place.
SET client_min_messages = warning;
DROP EXTENSION lhdiscord CASCADE;
RESET client_min_messages;
SELECT count(*) AS roles_left FROM pg_roles WHERE rolname IN ('lhdiscord_app', 'lhdiscord_governance', 'lhdiscord_monitor');
SELECT count(*) AS event_triggers_left FROM pg_event_trigger WHERE evtname LIKE 'lhdiscord%';
CREATE EXTENSION lhdiscord;
SELECT has_function_privilege('lhdiscord_app', 'lhdiscord.link_account(bigint,text,text,text,text,text,text,timestamptz,lhdiscord.outbox_lane)', 'EXECUTE') AS app_again;
DO $$ BEGIN EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM lhd_nobody', current_database()); END $$;
