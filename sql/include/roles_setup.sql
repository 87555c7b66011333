-- Role map used by the role-engine tests (ids 9000000000000001xx), a view of
-- the fake API's calls by role key, and the call count of the seed algorithm
-- (Lighthouse's SyncDiscordRoles + SyncDiscordStaff) for comparison.
SET client_min_messages = warning;
SELECT lhdiscord.map_role(k, id) FROM (VALUES
  ('traveler', '900000000000000101'), ('resident', '900000000000000102'),
  ('citizen', '900000000000000103'), ('verified', '900000000000000104'),
  ('staff_command', '900000000000000111'), ('staff_chaplain', '900000000000000112'),
  ('staff_engineer', '900000000000000113'), ('staff_quartermaster', '900000000000000114'),
  ('staff_steward', '900000000000000115'),
  ('rank_jr_crew', '900000000000000121'), ('rank_crew_member', '900000000000000122'),
  ('rank_officer', '900000000000000123'),
  ('hauling.member', '900000000000000131')) AS m(k, id);

CREATE OR REPLACE VIEW public.calls AS
  SELECT c.id, c.method, c.discord_user_id AS member,
         coalesce((SELECT string_agg(m.key, '|' ORDER BY m.key) FROM lhdiscord.role_map m
                    WHERE m.discord_role_id = c.role_id), c.role_id, c.route) AS role
    FROM lhdiscord.fake_calls c;

-- The seed algorithm, per active account: remove every membership role, add
-- the level's role, add verified; remove every department and rank role, add
-- the department's and the rank's.  Unconfigured roles send nothing.
CREATE OR REPLACE FUNCTION public.seed_calls(uid bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
  WITH m AS (SELECT key FROM lhdiscord.role_map WHERE coalesce(discord_role_id, '') <> ''),
       u AS (SELECT * FROM lhdiscord.users WHERE user_id = uid)
  SELECT (SELECT count(*) FROM lhdiscord.discord_accounts a WHERE a.user_id = uid AND a.status = 'active')
       * ((SELECT count(*) FROM m WHERE key IN ('traveler', 'resident', 'citizen'))
          + (SELECT count(*) FROM m, u WHERE m.key = u.membership_level::text)
          + (SELECT count(*) FROM m WHERE key = 'verified')
          + (SELECT count(*) FROM m WHERE key LIKE 'staff\_%' OR key LIKE 'rank\_%')
          + (SELECT count(*) FROM m, u WHERE m.key = 'staff_' || u.staff_department::text)
          + (SELECT count(*) FROM m, u WHERE m.key = 'rank_' || u.staff_rank::text))
$$;
RESET client_min_messages;
