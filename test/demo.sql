-- lhdiscord demo: what the portal application does, in plain SQL, with the
-- background worker delivering the Discord calls to the mock server.
--
-- Played by test/demo with psql -e: every statement is shown before its
-- result.  psql does not show SQL comments, so each step says what it does
-- and what to expect with \echo.
\pset footer off
\set ECHO none
\set QUIET on
SET client_min_messages = warning;
CREATE EXTENSION lhdiscord;

-- Demo helpers (the demo's own, not part of lhdiscord):
-- wait (bounded) until the worker has delivered everything that is due ...
CREATE FUNCTION public.wait_for_worker() RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE deadline timestamptz := clock_timestamp() + interval '20 seconds';
BEGIN
  LOOP
    IF NOT EXISTS (SELECT 1 FROM lhdiscord.outbox WHERE state IN ('pending', 'in_flight')) THEN
      RETURN 'delivered';
    END IF;
    IF clock_timestamp() > deadline THEN
      RAISE WARNING 'the worker is still busy after 20 s';
      RETURN 'still busy';
    END IF;
    PERFORM pg_sleep(0.05);
  END LOOP;
END $$;
-- ... and run a statement that is expected to be refused, showing the
-- refusal (SQLSTATE and message) as a result instead of an ERROR.  It runs
-- as the caller (SECURITY INVOKER), so the refusal is the caller's own.
CREATE FUNCTION public.expect_refusal(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE stmt;
  RETURN 'NOT refused (unexpected)';
EXCEPTION WHEN OTHERS THEN
  RETURN 'refused as expected: ' || SQLSTATE || ' ' || SQLERRM;
END $$;
GRANT EXECUTE ON FUNCTION public.expect_refusal(text) TO PUBLIC;
RESET client_min_messages;
\set QUIET off
\set ECHO queries

\echo
\echo '== Step 1: the DBA maps Discord roles to portal keys (done once).'
\echo '   Expect: the seven mapped roles.'
DO $$ BEGIN
  PERFORM lhdiscord.map_role(k, id) FROM (VALUES
    ('traveler', '900000000000000101'), ('resident', '900000000000000102'),
    ('citizen', '900000000000000103'), ('verified', '900000000000000104'),
    ('staff_engineer', '900000000000000113'), ('rank_officer', '900000000000000123'),
    ('hauling.member', '900000000000000131')) m(k, id);
END $$;
SELECT key, discord_role_id FROM lhdiscord.role_map WHERE discord_role_id <> '' ORDER BY discord_role_id;

\echo
\echo '== Step 2: the application connects as its own role, granted only the'
\echo '   predefined role lhdiscord_app (what README.md says), and writes its users.'
\echo '   Alice is a traveler, Bob a drifter, the admiral a citizen and an admin.'
CREATE ROLE portal LOGIN;
GRANT lhdiscord_app TO portal;
SET ROLE portal;
INSERT INTO lhdiscord.users (user_id, username, membership_level) VALUES
  (1, 'alice', 'traveler'), (2, 'bob', 'drifter'), (9, 'admiral', 'citizen');
INSERT INTO lhdiscord.user_roles (user_id, role) VALUES (9, 'admin');

\echo
\echo '== Step 3: who may link a Discord account?  Travelers and above.'
\echo '   Expect: alice and the admiral yes, bob (a drifter) no.'
SELECT user_id, username, lhdiscord.can_link(user_id) AS can_link FROM lhdiscord.users ORDER BY 1;

\echo
\echo '== Step 4: Alice links her Discord account.  Her tokens are encrypted at'
\echo '   rest (the result shows no token).  When this commits the worker wakes'
\echo '   and gives her the traveler and verified roles on Discord.'
SELECT id, discord_user_id, username, status, access_token
  FROM lhdiscord.link_account(1, '112233445566778899', 'alice.d', 'Alice', NULL,
                              'demo-access-token', 'demo-refresh-token', now() + interval '7 days');

\echo
\echo '== Step 5: Bob tries to link too.  Expect: REFUSED (a drifter may not link),'
\echo '   and nothing is written.'
SELECT public.expect_refusal($$SELECT lhdiscord.link_account(2, '998877665544332211', 'bob.d')$$) AS bob_links;
SELECT count(*) AS bobs_accounts FROM lhdiscord.accounts_of(2, 2);
SELECT public.wait_for_worker() AS worker;

\echo
\echo '== Step 6: Alice becomes a staff officer and is promoted twice in one'
\echo '   transaction.  Expect: one convergence on Discord with only the net'
\echo '   changes (citizen, staff_engineer, rank_officer; traveler removed).'
BEGIN;
UPDATE lhdiscord.users SET staff_department = 'engineer', staff_rank = 'officer' WHERE user_id = 1;
UPDATE lhdiscord.users SET membership_level = 'resident' WHERE user_id = 1;
UPDATE lhdiscord.users SET membership_level = 'citizen' WHERE user_id = 1;
COMMIT;
SELECT public.wait_for_worker() AS worker;
SELECT portal_username, display_name, avatar_url, status, has_access_token, pending_jobs
  FROM lhdiscord.account_overview;

\echo
\echo '== Step 7: the brig.  Expect: her account shows brigged and every managed'
\echo '   role is stripped at once (an urgent job); release brings them back.'
UPDATE lhdiscord.users SET in_brig = true WHERE user_id = 1;
SELECT status FROM lhdiscord.accounts_of(1, 1);
SELECT public.wait_for_worker() AS worker;
UPDATE lhdiscord.users SET in_brig = false WHERE user_id = 1;
SELECT status FROM lhdiscord.accounts_of(1, 1);
SELECT public.wait_for_worker() AS worker;

\echo
\echo '== Step 8: notifications as Discord DMs.  Alice opts in.  Expect: the'
\echo '   promotion notice is queued as 1 DM; a digest is email-only, 0 DMs.'
UPDATE lhdiscord.users SET notify_discord = true WHERE user_id = 1;
SELECT lhdiscord.notify(1, 'UserPromotedToResidentNotification', 'Welcome aboard, Alice!') AS dms_queued;
SELECT lhdiscord.notify(1, 'TicketDigestNotification', 'digests are email only') AS dms_queued;
RESET ROLE;
SELECT public.wait_for_worker() AS worker;

\echo
\echo '== Step 9: a governance-only call from the application role.'
\echo '   Expect: REFUSED (42501): the portal may not run reconcile.'
SET ROLE portal;
SELECT public.expect_refusal('SELECT lhdiscord.reconcile()') AS portal_reconciles;
RESET ROLE;

\echo
\echo '== Step 10: entitlement.  The worker scans the guild (page by page) into a'
\echo '   snapshot, then reconcile decides.  Expect: Alice holds hauling.member on'
\echo '   Discord, so she is entitled; Bob has no Discord account, so he is'
\echo '   suspended; the admiral is privileged, so exempt.'
SELECT lhdiscord.request_member_scan() AS snapshot \gset
SELECT public.wait_for_worker() AS worker;
SELECT id, source, complete, trusted, member_count FROM lhdiscord.member_snapshots;
SELECT user_id, username, identity_status, eligible, entitled, privileged,
       effective_access, policy_outcome, drift
  FROM lhdiscord.status_map ORDER BY user_id;
SELECT user_id, lhdiscord.has_access(user_id) FROM lhdiscord.users ORDER BY 1;

\echo
\echo '== Step 11: what the DBA watches: the outbox, the worker, the audit log.'
SELECT lane, kind, state, jobs FROM lhdiscord.outbox_stats ORDER BY 1, 2, 3;
SELECT running, paused, calls, responses_2xx, rate_limited, last_error, pending_jobs
  FROM lhdiscord.worker_status;
SELECT action, actor_user_id AS actor, subject_user_id AS subject, description
  FROM lhdiscord.audit_log ORDER BY id;
