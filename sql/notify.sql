-- notify(): names, preference, active accounts only, null content, long
-- content as ordered parts delivered once each (fake API).
\i sql/include/reset.sql

INSERT INTO lhdiscord.users (user_id, username, membership_level, notify_discord) VALUES
  (1, 'none_linked', 'traveler', true),
  (2, 'one', 'traveler', true),
  (3, 'two', 'citizen', true),
  (4, 'prefers_email', 'traveler', false),
  (5, 'brigged', 'traveler', true);
SET lhdiscord.max_discord_accounts = 2;
SELECT count((lhdiscord.link_account(u, id, 'd' || id)).id) FROM (VALUES
  (2, '200000000000000002'), (3, '300000000000000003'), (3, '300000000000000033'),
  (4, '400000000000000004'), (5, '500000000000000005')) AS x(u, id);
RESET lhdiscord.max_discord_accounts;
UPDATE lhdiscord.users SET in_brig = true WHERE user_id = 5;
SELECT lhdiscord.drain_outbox();
TRUNCATE lhdiscord.fake_calls;

CREATE VIEW public.dm_jobs AS
  SELECT discord_user_id, payload->>'notification' AS notification,
         jsonb_array_length(payload->'parts') AS parts, state
    FROM lhdiscord.outbox WHERE kind = 'dm';
GRANT SELECT ON public.dm_jobs TO lhd_app;

SET ROLE lhd_app;
-- 0, 1 and 2 active accounts; preference off; brigged (accounts not active).
SELECT lhdiscord.notify(1, 'NewTicketNotification', 'hello') AS no_accounts;
SELECT lhdiscord.notify(2, 'NewTicketNotification', 'hello') AS one_account;
SELECT lhdiscord.notify(3, 'TicketAssignedNotification', 'hello') AS two_accounts;
SELECT lhdiscord.notify(4, 'NewTicketNotification', 'hello') AS preference_off;
SELECT lhdiscord.notify(5, 'UserPutInBrigNotification', 'you are in the brig') AS brigged;
-- Every user-facing name is accepted.
SELECT n, lhdiscord.notify(2, n, 'x') FROM unnest(ARRAY[
  'NewTicketReplyNotification', 'MessageFlaggedNotification', 'BrigTimerExpiredNotification',
  'UserReleasedFromBrigNotification', 'UserPromotedToTravelerNotification',
  'UserPromotedToResidentNotification', 'UserPromotedToStowawayNotification']) AS n;
-- Known but not user-facing: nothing queued, no error.
SELECT lhdiscord.notify(2, 'TicketDigestNotification', 'digest') AS digest;
SELECT lhdiscord.notify(2, 'MinecraftCommandNotification', 'cmd') AS minecraft;
-- Null or blank content: nothing to send.
SELECT lhdiscord.notify(2, 'NewTicketNotification', NULL) AS null_content;
SELECT lhdiscord.notify(2, 'NewTicketNotification', E'  \n ') AS blank_content;
SELECT * FROM public.dm_jobs ORDER BY discord_user_id, notification;

-- Bad input: exact errors, nothing queued.
SELECT count(*) AS jobs_before FROM public.dm_jobs;
SELECT lhdiscord.notify(2, 'NewTicketNotificaton', 'typo');
SELECT expect_error($$SELECT lhdiscord.notify(2, 'SomethingElse', 'x')$$);
SELECT expect_error($$SELECT lhdiscord.notify(2, 'TicketDigestNotification ', 'x')$$);
SELECT expect_error($$SELECT lhdiscord.notify(NULL, 'NewTicketNotification', 'x')$$);
SELECT expect_error($$SELECT lhdiscord.notify(2, NULL, 'x')$$);
SELECT expect_error($$SELECT lhdiscord.notify(424242, 'NewTicketNotification', 'x')$$);
SELECT expect_error($$SELECT lhdiscord.notify(2, 'NewTicketNotification', repeat('x', 40001))$$);
SELECT count(*) AS jobs_after FROM public.dm_jobs;
RESET ROLE;

-- 4,500 characters arrive as ordered parts, each once, with its own nonce.
DELETE FROM lhdiscord.outbox WHERE kind = 'dm';
SELECT lhdiscord.notify(2, 'NewTicketReplyNotification',
  string_agg('Line ' || g || ' of the ticket reply, with a few words to wrap.', E'\n' ORDER BY g)) AS queued
  FROM generate_series(1, 83) g;
SELECT length(string_agg('Line ' || g || ' of the ticket reply, with a few words to wrap.', E'\n' ORDER BY g)) AS chars
  FROM generate_series(1, 83) g;
SELECT parts FROM public.dm_jobs;
SELECT lhdiscord.drain_outbox();
SELECT route, length(body->>'content') AS chars, body->>'nonce' LIKE '%-' || (row_number() OVER (ORDER BY id) - 2) AS nonce_per_part,
       left(body->>'content', 7) AS starts, right(body->>'content', 12) AS ends
  FROM lhdiscord.fake_calls ORDER BY id;
-- Reassembled (the newline at each break is the separator), nothing is lost.
SELECT string_agg(body->>'content', E'\n' ORDER BY id) =
       (SELECT string_agg('Line ' || g || ' of the ticket reply, with a few words to wrap.', E'\n' ORDER BY g)
          FROM generate_series(1, 83) g) AS lossless
  FROM lhdiscord.fake_calls WHERE route LIKE '%/messages';

-- Whitespace-only stretches never become a part of their own (Discord
-- refuses an empty message): 1,999 x, 2,001 newlines, y -> two parts.
DELETE FROM lhdiscord.outbox WHERE kind = 'dm';
SELECT lhdiscord.notify(2, 'NewTicketNotification', repeat('x', 1999) || repeat(E'\n', 2001) || 'y') AS queued;
SELECT parts FROM public.dm_jobs;

-- An account cut off after the DM was queued gets nothing: revoked (user 3's
-- first account) and brigged (user 2) before the drain; user 3's second
-- account still gets its DM.
DELETE FROM lhdiscord.outbox WHERE kind = 'dm';
TRUNCATE lhdiscord.fake_calls;
SELECT lhdiscord.notify(2, 'NewTicketNotification', 'for two') AS queued_2,
       lhdiscord.notify(3, 'NewTicketNotification', 'for three') AS queued_3;
INSERT INTO lhdiscord.users (user_id, username) VALUES (9, 'an_admin');
INSERT INTO lhdiscord.user_roles (user_id, role) VALUES (9, 'admin');
SELECT lhdiscord.revoke_account(9, a.id)
  FROM lhdiscord.discord_accounts a WHERE a.discord_user_id = '300000000000000003';
UPDATE lhdiscord.users SET in_brig = true WHERE user_id = 2;
SELECT lhdiscord.drain_outbox();
SELECT discord_user_id, state, last_error FROM lhdiscord.outbox WHERE kind = 'dm' ORDER BY discord_user_id;
SELECT route, body->>'content' AS content FROM lhdiscord.fake_calls
 WHERE route LIKE '/channels/%' ORDER BY id;
DROP VIEW public.dm_jobs;
