-- begin_oauth() and the checks of complete_oauth() that need no HTTP.
\i sql/include/reset.sql

INSERT INTO lhdiscord.users (user_id, username, membership_level, in_brig) VALUES
  (1, 'alice', 'traveler', false), (2, 'drifter', 'drifter', false),
  (3, 'brigged', 'citizen', true), (4, 'linked', 'citizen', false);
SELECT (lhdiscord.link_account(4, '400000000000000004', 'd4')).id IS NOT NULL AS linked;

-- Not configured: a clear error.
SELECT lhdiscord.begin_oauth(1);
SET lhdiscord.client_id = '123456789012345678';
SET lhdiscord.redirect_uri = 'https://portal.example/auth/discord/callback';

-- begin_oauth() sends nothing: show the URL for Discord's own host.
SET lhdiscord.api_base_url = 'https://discord.com/api/v10';
SET ROLE lhd_app;
-- The URL: Discord's authorize page, code flow, client id, redirect URI,
-- both scopes (URL-encoded) and a 256-bit random state.
SELECT regexp_replace(lhdiscord.begin_oauth(1), 'state=[0-9a-f]{64}$', 'state=<64 hex>') AS url;
SELECT lhdiscord.begin_oauth(1) <> lhdiscord.begin_oauth(1) AS states_differ;
-- The gate first, with link_account's errors.
SELECT expect_error('SELECT lhdiscord.begin_oauth(2)');
SELECT expect_error('SELECT lhdiscord.begin_oauth(3)');
SELECT expect_error('SELECT lhdiscord.begin_oauth(4)');
SELECT expect_error('SELECT lhdiscord.begin_oauth(424242)');
SELECT expect_error('SELECT lhdiscord.begin_oauth(NULL)');
RESET ROLE;

-- Only a hash of each state is stored, bound to the user, expiring.
SELECT user_id, length(state_hash), expires_at - created_at AS ttl, used_at FROM lhdiscord.oauth_states;
SET lhdiscord.api_base_url = 'http://127.0.0.1:9/api/v10';
SELECT regexp_replace(lhdiscord.begin_oauth(1), '\?.*', '') AS authorize_follows_api_host;

-- complete_oauth: a bad state fails before any request, writes nothing
-- (the state is checked before the client secret, which a session cannot
-- set; the preamble cleared it).
SET lhdiscord.api_mode = 'live';
SELECT lhdiscord.begin_oauth(1) AS url \gset
SELECT substring(:'url' from 'state=([0-9a-f]{64})') AS state \gset
SELECT count(*) AS accounts_before FROM lhdiscord.discord_accounts;
SELECT expect_error(format('SELECT lhdiscord.complete_oauth(1, %L, %L)', 'code', repeat('0', 64)));
SELECT expect_error(format('SELECT lhdiscord.complete_oauth(2, %L, %L)', 'code', :'state'));
SELECT expect_error(format('SELECT lhdiscord.complete_oauth(1, %L, NULL)', 'code'));
SELECT expect_error(format('SELECT lhdiscord.complete_oauth(1, %L, %L)', '', :'state'));
SELECT expect_error('SELECT lhdiscord.complete_oauth(NULL, ''c'', ''s'')');
UPDATE lhdiscord.oauth_states SET expires_at = now() - interval '1 second'
 WHERE state_hash = encode(sha256(convert_to(:'state', 'UTF8')), 'hex');
SELECT lhdiscord.complete_oauth(1, 'code', :'state');
SET lhdiscord.api_mode = 'fake';
SELECT lhdiscord.begin_oauth(1) AS url2 \gset
SELECT expect_error(format('SELECT lhdiscord.complete_oauth(1, %L, %L)', 'code',
                           substring(:'url2' from 'state=([0-9a-f]{64})')));
SELECT count(*) AS accounts_after, (SELECT count(*) FROM lhdiscord.oauth_states WHERE used_at IS NOT NULL) AS used
  FROM lhdiscord.discord_accounts;
