-- Linking: the gate, the account limit, duplicates and malformed input.
\i sql/include/reset.sql

INSERT INTO lhdiscord.users (user_id, username, membership_level, in_brig) VALUES
  (1, 'alice', 'traveler', false),
  (2, 'bob', 'drifter', false),
  (3, 'carol', 'stowaway', false),
  (4, 'dave', 'resident', true),
  (5, 'erin', 'citizen', false),
  (6, 'frank', 'resident', false);

CREATE VIEW public.state AS
  SELECT (SELECT count(*) FROM lhdiscord.discord_accounts) AS accounts,
         (SELECT count(*) FROM lhdiscord.outbox) AS jobs,
         (SELECT count(*) FROM lhdiscord.audit_log) AS audits;
GRANT SELECT ON public.state TO lhd_app;

-- The application connects as an ordinary role.
SET ROLE lhd_app;

SELECT user_id, lhdiscord.can_link(user_id) FROM lhdiscord.users ORDER BY user_id;
SELECT lhdiscord.can_link(999) AS unknown_user;

-- Gate: below traveler, or in the brig.
SELECT lhdiscord.link_account(2, '200000000000000002', 'bob_d');
SELECT lhdiscord.link_account(3, '300000000000000003', 'carol_d');
SELECT lhdiscord.link_account(4, '400000000000000004', 'dave_d');
SELECT expect_error($$SELECT lhdiscord.link_account(4, '400000000000000004', 'dave_d')$$);
SELECT * FROM public.state;

-- Success: active, verified now, tokens never returned.
SELECT id, user_id, discord_user_id, username, global_name, avatar_hash,
       access_token, refresh_token, status, verified_at IS NOT NULL AS verified
  FROM lhdiscord.link_account(1, '100000000000000001', 'alice_d', 'Alice');
SELECT * FROM public.state;

-- Limit (default 1), checked before duplicates.
SELECT lhdiscord.link_account(1, '100000000000000011', 'alice_two');
SELECT expect_error($$SELECT lhdiscord.link_account(1, '100000000000000011', 'alice_two')$$);
SELECT lhdiscord.link_account(1, '100000000000000001', 'alice_d');
SELECT lhdiscord.can_link(1);

-- Duplicate Discord id on another user.
SELECT lhdiscord.link_account(5, '100000000000000001', 'erin_d');
SELECT expect_error($$SELECT lhdiscord.link_account(5, '100000000000000001', 'erin_d')$$);
SELECT * FROM public.state;

-- Raising the limit to 2 allows exactly one more account (edge case 7).
RESET ROLE;
SET lhdiscord.max_discord_accounts = 2;
SET ROLE lhd_app;
SELECT lhdiscord.can_link(1);
SELECT discord_user_id, status FROM lhdiscord.link_account(1, '100000000000000011', 'alice_two');
SELECT lhdiscord.can_link(1);
SELECT lhdiscord.link_account(1, '100000000000000111', 'alice_three');
RESET ROLE;
RESET lhdiscord.max_discord_accounts;
SET ROLE lhd_app;

-- Malformed input: exact errors, nothing written.
SELECT * FROM public.state;
SELECT expect_error($$SELECT lhdiscord.link_account(5, 'abc', 'erin_d')$$);
SELECT expect_error($$SELECT lhdiscord.link_account(5, '1234567890123456', 'erin_d')$$);
SELECT expect_error($$SELECT lhdiscord.link_account(5, '123456789012345678901', 'erin_d')$$);
SELECT expect_error($$SELECT lhdiscord.link_account(5, ' 500000000000000005', 'erin_d')$$);
SELECT expect_error($$SELECT lhdiscord.link_account(NULL, '500000000000000005', 'erin_d')$$);
SELECT expect_error($$SELECT lhdiscord.link_account(5, NULL, 'erin_d')$$);
SELECT expect_error($$SELECT lhdiscord.link_account(5, '500000000000000005', NULL)$$);
SELECT expect_error($$SELECT lhdiscord.link_account(5, '500000000000000005', '')$$);
SELECT expect_error($$SELECT lhdiscord.link_account(5, '500000000000000005', repeat('x', 33))$$);
SELECT expect_error($$SELECT lhdiscord.link_account(5, '500000000000000005', 'erin_d', repeat('G', 33))$$);
SELECT expect_error($$SELECT lhdiscord.link_account(5, '500000000000000005', E'erin\nd')$$);
SELECT expect_error($$SELECT lhdiscord.link_account(5, '500000000000000005', 'erin_d', NULL, '../../etc')$$);
SELECT expect_error($$SELECT lhdiscord.link_account(999, '500000000000000005', 'nobody')$$);
SELECT * FROM public.state;

-- A 32-character name is fine.
SELECT username FROM lhdiscord.link_account(5, '500000000000000005', repeat('e', 32));

RESET ROLE;
-- Every link queued one role convergence for its Discord user.
SELECT kind, discord_user_id, user_id, state, reason FROM lhdiscord.outbox ORDER BY id;

-- Audit: one discord_account_linked row per link, on the user, no tokens.
SELECT action, actor_user_id, subject_user_id, entity, before_json, after_json - 'account_id' AS after_json, description
  FROM lhdiscord.audit_log ORDER BY id;

-- Table constraints hold even for direct writes by the owner.
INSERT INTO lhdiscord.discord_accounts (user_id, discord_user_id, username) VALUES (6, '42', 'x');
INSERT INTO lhdiscord.discord_accounts (user_id, discord_user_id, username) VALUES (6, '100000000000000001', 'x');
DROP VIEW public.state;
