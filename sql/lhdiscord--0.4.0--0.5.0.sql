-- lhdiscord 0.4.0 -> 0.5.0: Discord DM notifications and OAuth2 linking in
-- SQL: notify(), begin_oauth(), complete_oauth(), guild join and token
-- refresh jobs.

\echo Use "ALTER EXTENSION lhdiscord UPDATE TO '0.5.0'" to load this file. \quit

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
