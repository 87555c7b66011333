-- status_map: every drift kind and policy outcome; has_access agrees with
-- effective_access.
\i sql/include/reset.sql
\i sql/include/roles_setup.sql

INSERT INTO lhdiscord.users (user_id, username, membership_level, in_scope) VALUES
  (1, 'none_drift', 'traveler', true),
  (2, 'missing', 'traveler', true),
  (3, 'excess', 'traveler', true),
  (4, 'unlinked', 'traveler', true),
  (5, 'out_of_scope', 'traveler', false),
  (6, 'admin', 'traveler', false);
INSERT INTO lhdiscord.user_roles VALUES (6, 'admin');
SELECT count((lhdiscord.link_account(g, (100000000000000000 + g)::text, 'd' || g)).id)
  FROM generate_series(1, 6) g WHERE g <> 4;

-- No snapshot: stale_snapshot (or unlinked), nobody entitled (fail closed).
SELECT user_id, username, identity_status, eligible, entitled, privileged, effective_access,
       policy_outcome, drift, snapshot_age FROM lhdiscord.status_map ORDER BY user_id;

-- A fresh snapshot: 1 holds exactly its desired roles, 2 lacks verified,
-- 3 holds a managed role it should not (citizen).  The entitlement role is
-- evidence in Discord-leading mode, never drift.
SELECT lhdiscord.load_snapshot(jsonb_build_array(
  jsonb_build_object('user', jsonb_build_object('id', '100000000000000001'),
                     'roles', jsonb_build_array('900000000000000101', '900000000000000104', '900000000000000131')),
  jsonb_build_object('user', jsonb_build_object('id', '100000000000000002'),
                     'roles', jsonb_build_array('900000000000000101', '900000000000000131')),
  jsonb_build_object('user', jsonb_build_object('id', '100000000000000003'),
                     'roles', jsonb_build_array('900000000000000101', '900000000000000104', '900000000000000103', '900000000000000131')),
  jsonb_build_object('user', jsonb_build_object('id', '100000000000000005'),
                     'roles', jsonb_build_array('900000000000000101', '900000000000000104', '900000000000000131')),
  jsonb_build_object('user', jsonb_build_object('id', '100000000000000006'),
                     'roles', jsonb_build_array('900000000000000101', '900000000000000104')))) IS NOT NULL AS loaded;
SELECT user_id, username, identity_status, eligible, entitled, privileged, effective_access,
       policy_outcome, drift, snapshot_age < interval '1 minute' AS fresh
  FROM lhdiscord.status_map ORDER BY user_id;

-- has_access agrees with effective_access, for every user and for unknown ones.
SELECT count(*) AS disagreements FROM lhdiscord.status_map s WHERE lhdiscord.has_access(s.user_id) <> s.effective_access;
SELECT lhdiscord.has_access(424242) AS unknown_user;
SELECT expect_error('SELECT lhdiscord.has_access(NULL)');

-- After reconcile everything is compliant (5 suspended, 6 exempt).
SELECT count(*) FROM lhdiscord.reconcile();
SELECT user_id, identity_status, effective_access, policy_outcome FROM lhdiscord.status_map ORDER BY user_id;
SELECT count(*) AS disagreements FROM lhdiscord.status_map s WHERE lhdiscord.has_access(s.user_id) <> s.effective_access;

-- A brigged account: every managed role it still holds is excess.
UPDATE lhdiscord.users SET in_brig = true WHERE user_id = 1;
SELECT user_id, drift FROM lhdiscord.status_map WHERE user_id = 1;
UPDATE lhdiscord.users SET in_brig = false WHERE user_id = 1;

-- A stale snapshot: drift stale_snapshot, entitlement gone (fail closed).
SET lhdiscord.snapshot_max_age = 1;
SELECT pg_sleep(1.1);
SELECT user_id, entitled, effective_access, drift FROM lhdiscord.status_map ORDER BY user_id;
RESET lhdiscord.snapshot_max_age;

-- Portal-leading: entitlement comes from the portal role, snapshots do not matter.
SET lhdiscord.governance_mode = 'portal_leading';
INSERT INTO lhdiscord.user_roles VALUES (1, 'hauling.member');
SELECT user_id, entitled, effective_access FROM lhdiscord.status_map WHERE user_id IN (1, 2) ORDER BY 1;
SELECT lhdiscord.has_access(1), lhdiscord.has_access(2);

-- The application role calls has_access and reads the admin views; a role
-- granted nothing reads neither.
SET ROLE lhd_app;
SELECT lhdiscord.has_access(1);
SELECT count(*) FROM lhdiscord.status_map;
RESET ROLE;
SET ROLE lhd_stranger;
SELECT expect_error('SELECT lhdiscord.has_access(1)');
SELECT expect_error('SELECT count(*) FROM lhdiscord.status_map');
RESET ROLE;

-- The monitoring role reads the view whole (the functions behind it run with
-- the extension's rights, like the view's own tables).
SET ROLE lhd_watch;
SELECT user_id, entitled, effective_access, drift FROM lhdiscord.status_map ORDER BY user_id;
RESET ROLE;
