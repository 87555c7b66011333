-- lhdiscord demo: what the portal application does, in plain SQL, with the
-- background worker delivering the Discord calls to the mock server.
\pset footer off
CREATE EXTENSION lhdiscord;

-- Demo helper: wait (bounded) until the worker has drained everything due.
CREATE FUNCTION public.wait_for_worker() RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE deadline timestamptz := clock_timestamp() + interval '20 seconds';
BEGIN
  LOOP
    IF NOT EXISTS (SELECT 1 FROM lhdiscord.outbox WHERE state IN ('pending', 'in_flight')) THEN
      RETURN 'outbox drained';
    END IF;
    IF clock_timestamp() > deadline THEN RETURN 'still busy after 20 s'; END IF;
    PERFORM pg_sleep(0.05);
  END LOOP;
END $$;

-- Discord roles managed by lhdiscord (a DBA does this once).
SELECT lhdiscord.map_role(k, id) FROM (VALUES
  ('traveler', '900000000000000101'), ('resident', '900000000000000102'),
  ('citizen', '900000000000000103'), ('verified', '900000000000000104'),
  ('staff_engineer', '900000000000000113'), ('rank_officer', '900000000000000123'),
  ('hauling.member', '900000000000000131')) m(k, id);

-- The application's database role, granted what README.md says: the
-- predefined role lhdiscord_app, and nothing else.
CREATE ROLE portal LOGIN;
GRANT lhdiscord_app TO portal;
SET ROLE portal;

-- Portal users.
INSERT INTO lhdiscord.users (user_id, username, membership_level) VALUES
  (1, 'alice', 'traveler'), (2, 'bob', 'drifter'), (9, 'admiral', 'citizen');
INSERT INTO lhdiscord.user_roles (user_id, role) VALUES (9, 'admin');

-- Who may link?
SELECT user_id, lhdiscord.can_link(user_id) FROM lhdiscord.users ORDER BY 1;

-- Alice links her Discord account (tokens are encrypted at rest).  When this
-- commits, the worker wakes and gives her the traveler and verified roles.
SELECT id, discord_user_id, username, status, access_token
  FROM lhdiscord.link_account(1, '112233445566778899', 'alice.d', 'Alice', NULL,
                              'demo-access-token', 'demo-refresh-token', now() + interval '7 days');

-- Bob is a drifter: the gate refuses him.
\set ON_ERROR_STOP 0
SELECT lhdiscord.link_account(2, '998877665544332211', 'bob.d');
\set ON_ERROR_STOP 1
SELECT public.wait_for_worker();

-- Alice becomes a staff officer and is promoted twice in one transaction:
-- one convergence, only the net calls.
BEGIN;
UPDATE lhdiscord.users SET staff_department = 'engineer', staff_rank = 'officer' WHERE user_id = 1;
UPDATE lhdiscord.users SET membership_level = 'resident' WHERE user_id = 1;
UPDATE lhdiscord.users SET membership_level = 'citizen' WHERE user_id = 1;
COMMIT;
SELECT public.wait_for_worker();
SELECT portal_username, display_name, avatar_url, status, has_access_token, pending_jobs
  FROM lhdiscord.account_overview;

-- The brig strips every managed role at once; release brings them back.
UPDATE lhdiscord.users SET in_brig = true WHERE user_id = 1;
SELECT status FROM lhdiscord.accounts_of(1, 1);
SELECT public.wait_for_worker();
UPDATE lhdiscord.users SET in_brig = false WHERE user_id = 1;
SELECT public.wait_for_worker();
RESET ROLE;

-- A notification as a Discord DM: Alice wants DMs; a long one is split.
SET ROLE portal;
UPDATE lhdiscord.users SET notify_discord = true WHERE user_id = 1;
SELECT lhdiscord.notify(1, 'UserPromotedToResidentNotification', 'Welcome aboard, Alice!') AS queued;
SELECT lhdiscord.notify(1, 'TicketDigestNotification', 'digests are email only') AS not_a_dm;
RESET ROLE;
SELECT public.wait_for_worker();

-- Entitlement: the worker scans the guild (paginated) into a snapshot, then
-- reconciles.  Alice holds the hauling.member role in Discord: entitled.
-- Bob has no Discord account: suspended.  The admiral is privileged: exempt.
SELECT lhdiscord.request_member_scan() AS snapshot \gset
SELECT public.wait_for_worker();
SELECT id, source, complete, trusted, member_count FROM lhdiscord.member_snapshots;
SELECT user_id, username, identity_status, eligible, entitled, privileged,
       effective_access, policy_outcome, drift
  FROM lhdiscord.status_map ORDER BY user_id;
SELECT user_id, lhdiscord.has_access(user_id) FROM lhdiscord.users ORDER BY 1;

-- What the DBA sees.
SELECT kind, state, jobs FROM lhdiscord.outbox_stats ORDER BY 1, 2;
SELECT running, paused, calls, responses_2xx, rate_limited, last_error, pending_jobs
  FROM lhdiscord.worker_status;
SELECT action, actor_user_id AS actor, subject_user_id AS subject, description
  FROM lhdiscord.audit_log ORDER BY id;
