-- Unlink (owner only), revoke (admin only), listing, re-link, audit.
\i sql/include/reset.sql

INSERT INTO lhdiscord.users (user_id, username, membership_level) VALUES
  (1, 'alice', 'traveler'), (2, 'bob', 'resident'), (9, 'root_admin', 'citizen'), (10, 'sub', 'citizen');
INSERT INTO lhdiscord.user_roles (user_id, role) VALUES (9, 'admin'), (10, 'subadmin');
SELECT id AS alice_acct FROM lhdiscord.link_account(1, '100000000000000001', 'alice_d') \gset
SELECT id AS bob_acct FROM lhdiscord.link_account(2, '200000000000000002', 'bob_d', 'Bobby') \gset

CREATE VIEW public.state AS
  SELECT (SELECT count(*) FROM lhdiscord.discord_accounts) AS accounts,
         (SELECT count(*) FROM lhdiscord.outbox) AS jobs,
         (SELECT count(*) FROM lhdiscord.audit_log) AS audits;
GRANT SELECT ON public.state TO lhd_app;

SET ROLE lhd_app;

-- Listing: the owner, an admin, and nobody else.
SELECT id = :alice_acct AS own, discord_user_id, access_token, refresh_token FROM lhdiscord.accounts_of(1, 1);
SELECT discord_user_id FROM lhdiscord.accounts_of(9, 1);
SELECT discord_user_id FROM lhdiscord.accounts_of(9, 2);
SELECT count(*) FROM lhdiscord.accounts_of(9, 12345) AS unknown_user;
SELECT * FROM lhdiscord.accounts_of(2, 1);
SELECT expect_error($$SELECT * FROM lhdiscord.accounts_of(2, 1)$$);
SELECT expect_error($$SELECT * FROM lhdiscord.accounts_of(10, 1)$$);
SELECT expect_error($$SELECT * FROM lhdiscord.accounts_of(NULL, 1)$$);

-- Unlink by a stranger: 42501, nothing changes.
SELECT * FROM public.state;
SELECT lhdiscord.unlink_account(2, :alice_acct);
SELECT expect_error(format('SELECT lhdiscord.unlink_account(2, %s)', :alice_acct));
SELECT expect_error(format('SELECT lhdiscord.unlink_account(9, %s)', :alice_acct));
SELECT expect_error('SELECT lhdiscord.unlink_account(1, 987654)');
SELECT expect_error('SELECT lhdiscord.unlink_account(1, NULL)');
SELECT * FROM public.state;

-- Unlink by the owner: account gone, strip queued, audited.
SELECT lhdiscord.unlink_account(1, :alice_acct);
SELECT * FROM public.state;
SELECT lhdiscord.has_discord_linked(1);

-- Re-link after unlink is supported (edge case 4): a fresh record.
SELECT id <> :alice_acct AS fresh_record, status FROM lhdiscord.link_account(1, '100000000000000001', 'alice_d');

-- Revoke by a non-admin (even a subadmin or the owner): 42501, nothing changes.
SELECT * FROM public.state;
SELECT lhdiscord.revoke_account(10, :bob_acct);
SELECT expect_error(format('SELECT lhdiscord.revoke_account(10, %s)', :bob_acct));
SELECT expect_error(format('SELECT lhdiscord.revoke_account(2, %s)', :bob_acct));
SELECT expect_error('SELECT lhdiscord.revoke_account(10, 987654)');
SELECT expect_error('SELECT lhdiscord.revoke_account(9, 987654)');
SELECT * FROM public.state;

-- Revoke by an admin.
SELECT lhdiscord.revoke_account(9, :bob_acct);
SELECT * FROM public.state;
RESET ROLE;

-- Jobs: link, unlink (strip), link, revoke (strip) fold into one live
-- convergence per Discord user.
SELECT kind, discord_user_id, user_id, state, generation, reason FROM lhdiscord.outbox ORDER BY id;

-- Audit trail.  Revocation is recorded on the affected user (bob, 2), by the
-- admin (9), with the admin's name in the description.
SELECT action, actor_user_id, subject_user_id, entity,
       before_json - 'account_id' AS before_json, after_json - 'account_id' AS after_json, description
  FROM lhdiscord.audit_log ORDER BY id;
SELECT count(*) AS entity_pk_matches
  FROM lhdiscord.audit_log WHERE entity_pk = coalesce(before_json, after_json) ->> 'account_id';
DROP VIEW public.state;
