-- lhdiscord demo: what the portal application does, in plain SQL.
\pset footer off
CREATE EXTENSION lhdiscord;

-- Discord roles managed by lhdiscord.
SELECT lhdiscord.map_role(k, id) FROM (VALUES
  ('traveler', '900000000000000101'), ('resident', '900000000000000102'),
  ('citizen', '900000000000000103'), ('verified', '900000000000000104'),
  ('staff_engineer', '900000000000000113'), ('rank_officer', '900000000000000123')) m(k, id);

-- The application's database role, granted what README.md lists.
CREATE ROLE portal LOGIN;
GRANT USAGE ON SCHEMA lhdiscord TO portal;
GRANT SELECT, INSERT, UPDATE, DELETE ON lhdiscord.users, lhdiscord.user_roles TO portal;
GRANT SELECT ON lhdiscord.active_accounts, lhdiscord.account_overview TO portal;

SET ROLE portal;

-- Portal users.
INSERT INTO lhdiscord.users (user_id, username, membership_level) VALUES
  (1, 'alice', 'traveler'), (2, 'bob', 'drifter'), (9, 'admiral', 'citizen');
INSERT INTO lhdiscord.user_roles (user_id, role) VALUES (9, 'admin');

-- Who may link?
SELECT user_id, lhdiscord.can_link(user_id) FROM lhdiscord.users ORDER BY 1;

-- Alice links her Discord account (tokens are encrypted at rest).
SELECT id, discord_user_id, username, status, access_token
  FROM lhdiscord.link_account(1, '112233445566778899', 'alice.d', 'Alice', NULL,
                              'demo-access-token', 'demo-refresh-token', now() + interval '7 days');

-- Bob is a drifter: the gate refuses him.
\set ON_ERROR_STOP 0
SELECT lhdiscord.link_account(2, '998877665544332211', 'bob.d');
\set ON_ERROR_STOP 1

SELECT portal_username, display_name, avatar_url, status, has_access_token, pending_jobs
  FROM lhdiscord.account_overview;

-- Alice becomes a staff officer, then is promoted several times before the
-- queue is drained: one convergence, only the net calls.
UPDATE lhdiscord.users SET staff_department = 'engineer', staff_rank = 'officer' WHERE user_id = 1;
UPDATE lhdiscord.users SET membership_level = 'resident' WHERE user_id = 1;
UPDATE lhdiscord.users SET membership_level = 'citizen' WHERE user_id = 1;
RESET ROLE;
SELECT id, kind, discord_user_id, state, generation, reason FROM lhdiscord.outbox ORDER BY id;
SELECT lhdiscord.desired_roles('112233445566778899');
SET lhdiscord.api_mode = 'fake';
SELECT lhdiscord.drain_outbox();
SELECT method, route FROM lhdiscord.fake_calls ORDER BY id;

-- The brig strips every managed role; release brings the full set back.
TRUNCATE lhdiscord.fake_calls;
UPDATE lhdiscord.users SET in_brig = true WHERE user_id = 1;
SELECT lhdiscord.drain_outbox();
UPDATE lhdiscord.users SET in_brig = false WHERE user_id = 1;
SELECT lhdiscord.drain_outbox();
SELECT method, route FROM lhdiscord.fake_calls ORDER BY id;

-- The admin revokes Alice's account; the role strip is queued.
SET ROLE portal;
SELECT lhdiscord.revoke_account(9, (SELECT id FROM lhdiscord.active_accounts WHERE user_id = 1));
RESET ROLE;
SELECT id, kind, discord_user_id, state, generation, reason FROM lhdiscord.outbox ORDER BY id;
SELECT action, actor_user_id AS actor, subject_user_id AS subject, description
  FROM lhdiscord.audit_log ORDER BY id;
