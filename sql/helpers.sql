-- avatar_url, display_name, has_discord_linked and the account views.
\i sql/include/reset.sql

INSERT INTO lhdiscord.users (user_id, username, membership_level) VALUES
  (1, 'alice', 'traveler'), (2, 'bob', 'citizen'), (3, 'nolink', 'citizen');
SELECT (lhdiscord.link_account(1, '80351110224678912', 'alice_d', 'Alice A', 'a1b2c3d4e5f60718293a4b5c6d7e8f90')).id IS NOT NULL AS linked;
SELECT (lhdiscord.link_account(2, '175928847299117063', 'bob_d', NULL, NULL)).id IS NOT NULL AS linked;
UPDATE lhdiscord.discord_accounts SET avatar_hash = 'a_0123456789abcdef0123456789abcdef' WHERE user_id = 2;

SET ROLE lhd_app;
SELECT a.username, lhdiscord.display_name(a), lhdiscord.avatar_url(a)
  FROM lhdiscord.accounts_of(1, 1) a;
RESET ROLE;

SELECT username, lhdiscord.display_name(a), lhdiscord.avatar_url(a)
  FROM lhdiscord.discord_accounts a ORDER BY id;
-- Without a hash: Discord's default avatar, (id >> 22) % 6.
UPDATE lhdiscord.discord_accounts SET avatar_hash = NULL;
SELECT discord_user_id, lhdiscord.avatar_url(a) FROM lhdiscord.discord_accounts a ORDER BY id;

SET ROLE lhd_app;
SELECT user_id, lhdiscord.has_discord_linked(user_id) FROM lhdiscord.users ORDER BY user_id;
SELECT lhdiscord.has_discord_linked(404) AS unknown_user;
SELECT expect_error('SELECT lhdiscord.has_discord_linked(NULL)');
SELECT portal_username, discord_user_id, username, display_name, avatar_url FROM lhdiscord.active_accounts ORDER BY id;
SELECT portal_username, status, has_access_token, pending_jobs FROM lhdiscord.account_overview ORDER BY id;
RESET ROLE;

-- A brigged account is still linked but not active.
UPDATE lhdiscord.discord_accounts SET status = 'brigged' WHERE user_id = 2;
SELECT lhdiscord.has_discord_linked(2);
SELECT count(*) AS active_views FROM lhdiscord.active_accounts;

-- The helpers take the account views' rows too (what an admin page reads),
-- with a hash (PNG, animated GIF) or without one (the default avatar), for
-- a brigged account as for an active one, and agree with the
-- discord_accounts variants.
UPDATE lhdiscord.discord_accounts SET avatar_hash = 'a1b2c3d4e5f60718293a4b5c6d7e8f90' WHERE user_id = 1;
SET ROLE lhd_app;
SELECT v.username, lhdiscord.display_name(v), lhdiscord.avatar_url(v)
  FROM lhdiscord.active_accounts v ORDER BY id;
SELECT v.username, v.status, lhdiscord.display_name(v), lhdiscord.avatar_url(v)
  FROM lhdiscord.account_overview v ORDER BY id;
SELECT lhdiscord.display_name(NULL::lhdiscord.active_accounts) AS null_active,
       lhdiscord.avatar_url(NULL::lhdiscord.account_overview) AS null_overview;
RESET ROLE;
UPDATE lhdiscord.discord_accounts SET avatar_hash = 'a_0123456789abcdef0123456789abcdef', global_name = 'Bob B' WHERE user_id = 2;
UPDATE lhdiscord.discord_accounts SET avatar_hash = NULL WHERE user_id = 1;
SELECT count(*) AS rows_compared,
       count(*) FILTER (WHERE lhdiscord.display_name(a) IS DISTINCT FROM lhdiscord.display_name(v)
                           OR lhdiscord.avatar_url(a) IS DISTINCT FROM lhdiscord.avatar_url(v)) AS disagreeing
  FROM lhdiscord.discord_accounts a JOIN lhdiscord.account_overview v USING (id);
UPDATE lhdiscord.discord_accounts SET status = 'active' WHERE user_id = 2;
SELECT count(*) AS rows_compared,
       count(*) FILTER (WHERE lhdiscord.display_name(a) IS DISTINCT FROM lhdiscord.display_name(v)
                           OR lhdiscord.avatar_url(a) IS DISTINCT FROM lhdiscord.avatar_url(v)) AS disagreeing
  FROM lhdiscord.discord_accounts a JOIN lhdiscord.active_accounts v USING (id);
SELECT v.username, lhdiscord.display_name(v), lhdiscord.avatar_url(v)
  FROM lhdiscord.active_accounts v ORDER BY id;
