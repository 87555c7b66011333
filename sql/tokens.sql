-- OAuth tokens: AES-256-GCM at rest, never readable in clear by the application.
\i sql/include/reset.sql

INSERT INTO lhdiscord.users (user_id, username, membership_level) VALUES
  (1, 'alice', 'traveler'), (2, 'bob', 'citizen'), (3, 'carol', 'resident');

SET ROLE lhd_app;
SELECT id AS alice_acct, (access_token IS NULL AND refresh_token IS NULL) AS tokens_hidden,
       token_expires_at = '2030-01-01 00:00:00+00' AS expiry_kept
  FROM lhdiscord.link_account(1, '100000000000000001', 'alice_d', NULL, NULL,
                              'tok-ALICE-access-0123456789', 'tok-ALICE-refresh-9876543210',
                              '2030-01-01 00:00:00+00') \gset
SELECT :'tokens_hidden' AS tokens_hidden, :'expiry_kept' AS expiry_kept;
SELECT id AS bob_acct FROM lhdiscord.link_account(2, '200000000000000002', 'bob_d', NULL, NULL,
                                                  'tok-BOB-access-0123456789', NULL) \gset

-- The application role cannot read the table, the tokens, or the accessor.
SELECT access_token FROM lhdiscord.discord_accounts;
SELECT * FROM lhdiscord.account_tokens(:alice_acct);
SELECT access_token, refresh_token FROM lhdiscord.accounts_of(1, 1);
-- Neither view exposes a token column.
SELECT count(*) AS token_columns_in_views
  FROM information_schema.columns
 WHERE table_schema = 'lhdiscord' AND table_name IN ('active_accounts', 'account_overview')
   AND column_name IN ('access_token', 'refresh_token');
RESET ROLE;

-- At rest: version byte + 12-byte nonce + 16-byte tag + ciphertext, no plaintext.
SELECT user_id,
       get_byte(access_token, 0) AS version,
       length(access_token) - 29 AS ciphertext_len,
       position(convert_to('tok-', 'UTF8') IN access_token) = 0 AS no_plaintext,
       refresh_token IS NULL AS no_refresh
  FROM lhdiscord.discord_accounts ORDER BY user_id;
-- Random nonce per value: the same plaintext encrypts differently.
SELECT (lhdiscord.link_account(3, '300000000000000003', 'carol_d', NULL, NULL, 'tok-BOB-access-0123456789')).id IS NOT NULL AS linked;
SELECT count(DISTINCT access_token) AS distinct_ciphertexts
  FROM lhdiscord.discord_accounts WHERE user_id IN (2, 3);

-- The superuser-only accessor decrypts.
SELECT * FROM lhdiscord.account_tokens(:alice_acct);
SELECT * FROM lhdiscord.account_tokens(:bob_acct);
SELECT expect_error('SELECT * FROM lhdiscord.account_tokens(424242)');

-- Authenticated: a ciphertext moved to another account does not decrypt.
BEGIN;
UPDATE lhdiscord.discord_accounts SET access_token = (SELECT access_token FROM lhdiscord.discord_accounts WHERE user_id = 1)
 WHERE user_id = 2;
SELECT expect_error(format('SELECT * FROM lhdiscord.account_tokens(%s)', :bob_acct));
ROLLBACK;
-- A flipped byte does not decrypt either.
BEGIN;
UPDATE lhdiscord.discord_accounts SET access_token = set_byte(access_token, 40, get_byte(access_token, 40) # 1)
 WHERE user_id = 1;
SELECT expect_error(format('SELECT * FROM lhdiscord.account_tokens(%s)', :alice_acct));
ROLLBACK;
-- A session cannot switch to another key (secrets come only from the
-- server's configuration); the refusal does not echo the value.
SELECT expect_error($$SET lhdiscord.encryption_key = 'ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff'$$);

-- No key configured: linking with tokens raises and writes nothing;
-- linking without tokens still works.
DELETE FROM lhdiscord.discord_accounts WHERE user_id = 3;
SET lhdiscord.encryption_key = '';
SELECT count(*) AS accounts_before FROM lhdiscord.discord_accounts;
SELECT (SELECT count(*) FROM lhdiscord.audit_log) AS audits_before, (SELECT count(*) FROM lhdiscord.outbox) AS jobs_before;
SET ROLE lhd_app;
SELECT lhdiscord.link_account(3, '300000000000000003', 'carol_d', NULL, NULL, 'tok-CAROL-access');
SELECT expect_error($$SELECT lhdiscord.link_account(3, '300000000000000003', 'carol_d', NULL, NULL, NULL, 'tok-CAROL-refresh')$$);
RESET ROLE;
SELECT count(*) AS accounts_after FROM lhdiscord.discord_accounts;
SELECT (SELECT count(*) FROM lhdiscord.audit_log) AS audits_after, (SELECT count(*) FROM lhdiscord.outbox) AS jobs_after;
SELECT status FROM lhdiscord.link_account(3, '300000000000000003', 'carol_d');
RESET lhdiscord.encryption_key;

-- Oversized token.
SELECT expect_error($$SELECT lhdiscord.link_account(3, '300000000000000033', 'c2', NULL, NULL, repeat('t', 5000))$$);

-- No token text anywhere in the audit log.
SELECT count(*) AS audit_rows_with_tokens
  FROM lhdiscord.audit_log
 WHERE coalesce(after_json::text, '') || coalesce(before_json::text, '') || coalesce(description, '') LIKE '%tok-%';
