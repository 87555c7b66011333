-- examples/php/sql/portal_sync.sql: keeps lhdiscord.users in step with the
-- application's public.users. Run it once, as the application's role (the
-- owner of public.users, a member of lhdiscord_app), from a migration:
--
--   DB::unprepared(file_get_contents(base_path('database/sql/portal_sync.sql')));
--
-- It holds no values from users, only schema, so it may run over the simple
-- query protocol. Sent as one string, it runs in one transaction: all or
-- nothing. Running it again changes nothing.
--
-- What it does:
--   1. adds the columns lhdiscord needs to public.users (the portal's own
--      copy of level, staff, brig, DM preference and access-policy outcome);
--   2. a SECURITY INVOKER trigger function that writes each insert, update
--      and delete through to lhdiscord.users in the same statement;
--   3. copies the users that exist already (the backfill).
--
-- SECURITY INVOKER, not DEFINER: the sync runs with the rights of whoever
-- writes public.users. The application's role may write lhdiscord.users
-- (lhdiscord_app); a role that may not is refused, and its write to
-- public.users with it, so the tables never disagree and writing the
-- application's table never lends anyone lhdiscord_app's rights.
--
-- What lhdiscord writes back (status, session_revoked_at) stays in
-- lhdiscord.users and is read from there (Client::checkSession); this
-- trigger never writes those columns, so it cannot undo a suspension.

-- 1. The portal's columns. Text, as Laravel's string columns are: lhdiscord's
-- own types check the values in the trigger (an unknown level is 22P02 and
-- refuses the application's write).
ALTER TABLE public.users
  ADD COLUMN IF NOT EXISTS membership_level varchar(32) NOT NULL DEFAULT 'drifter',
  ADD COLUMN IF NOT EXISTS staff_department varchar(32),
  ADD COLUMN IF NOT EXISTS staff_rank       varchar(32) NOT NULL DEFAULT 'none',
  ADD COLUMN IF NOT EXISTS in_brig          boolean NOT NULL DEFAULT false,
  ADD COLUMN IF NOT EXISTS notify_discord   boolean NOT NULL DEFAULT false,
  ADD COLUMN IF NOT EXISTS in_scope         boolean NOT NULL DEFAULT true;

-- 2. The sync. search_path is pinned and every name qualified, so nothing
-- in a schema the caller controls can stand in for lhdiscord's objects.
CREATE OR REPLACE FUNCTION public.lhdiscord_sync_user() RETURNS trigger
  LANGUAGE plpgsql
  SECURITY INVOKER
  SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
  IF TG_OP = 'DELETE' THEN
    -- lhdiscord strips the roles of the user's accounts (urgent lane).
    DELETE FROM lhdiscord.users WHERE user_id = OLD.id;
    RETURN OLD;
  END IF;
  IF TG_OP = 'UPDATE' AND NEW.id IS DISTINCT FROM OLD.id THEN
    RAISE EXCEPTION 'public.users.id cannot change: lhdiscord.users is keyed by it'
      USING ERRCODE = 'feature_not_supported';
  END IF;
  -- An upsert, so that a user the backfill missed is healed by the next
  -- write; the WHERE leaves an unchanged row alone (no work queued).
  INSERT INTO lhdiscord.users AS u
      (user_id, username, membership_level, staff_department, staff_rank,
       in_brig, notify_discord, in_scope)
    VALUES (NEW.id, NEW.name,
            NEW.membership_level::lhdiscord.membership_level,
            NEW.staff_department::lhdiscord.staff_department,
            NEW.staff_rank::lhdiscord.staff_rank,
            NEW.in_brig, NEW.notify_discord, NEW.in_scope)
  ON CONFLICT (user_id) DO UPDATE
    SET username = EXCLUDED.username,
        membership_level = EXCLUDED.membership_level,
        staff_department = EXCLUDED.staff_department,
        staff_rank = EXCLUDED.staff_rank,
        in_brig = EXCLUDED.in_brig,
        notify_discord = EXCLUDED.notify_discord,
        in_scope = EXCLUDED.in_scope,
        updated_at = now()
    WHERE (u.username, u.membership_level, u.staff_department, u.staff_rank,
           u.in_brig, u.notify_discord, u.in_scope)
          IS DISTINCT FROM
          (EXCLUDED.username, EXCLUDED.membership_level, EXCLUDED.staff_department,
           EXCLUDED.staff_rank, EXCLUDED.in_brig, EXCLUDED.notify_discord,
           EXCLUDED.in_scope);
  RETURN NEW;
END
$fn$;
COMMENT ON FUNCTION public.lhdiscord_sync_user() IS
  'Writes public.users through to lhdiscord.users (SECURITY INVOKER: with the writer''s rights).';

-- TRUNCATE fires no row triggers: it would leave every lhdiscord.users row
-- behind (and every Discord role on), so it is refused; DELETE instead.
CREATE OR REPLACE FUNCTION public.lhdiscord_refuse_truncate() RETURNS trigger
  LANGUAGE plpgsql
  SECURITY INVOKER
  SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
  RAISE EXCEPTION 'TRUNCATE public.users would leave lhdiscord.users out of step'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'DELETE FROM public.users: lhdiscord then strips the Discord roles of every account.';
END
$fn$;

-- Trigger functions need no EXECUTE right to fire; nobody needs to call them.
REVOKE ALL ON FUNCTION public.lhdiscord_sync_user() FROM PUBLIC;
REVOKE ALL ON FUNCTION public.lhdiscord_refuse_truncate() FROM PUBLIC;

DROP TRIGGER IF EXISTS lhdiscord_sync_insert ON public.users;
DROP TRIGGER IF EXISTS lhdiscord_sync_update ON public.users;
DROP TRIGGER IF EXISTS lhdiscord_sync_delete ON public.users;
DROP TRIGGER IF EXISTS lhdiscord_refuse_truncate ON public.users;

-- AFTER ROW: the row as stored (id assigned, defaults applied). An error in
-- lhdiscord's checks aborts the application's statement with it.
CREATE TRIGGER lhdiscord_sync_insert AFTER INSERT ON public.users
  FOR EACH ROW EXECUTE FUNCTION public.lhdiscord_sync_user();
-- Only when a synced column changed: Laravel rewrites updated_at,
-- remember_token and the like all the time, and those are not lhdiscord's.
CREATE TRIGGER lhdiscord_sync_update AFTER UPDATE ON public.users
  FOR EACH ROW
  WHEN ((OLD.id, OLD.name, OLD.membership_level, OLD.staff_department, OLD.staff_rank,
         OLD.in_brig, OLD.notify_discord, OLD.in_scope)
        IS DISTINCT FROM
        (NEW.id, NEW.name, NEW.membership_level, NEW.staff_department, NEW.staff_rank,
         NEW.in_brig, NEW.notify_discord, NEW.in_scope))
  EXECUTE FUNCTION public.lhdiscord_sync_user();
CREATE TRIGGER lhdiscord_sync_delete AFTER DELETE ON public.users
  FOR EACH ROW EXECUTE FUNCTION public.lhdiscord_sync_user();
CREATE TRIGGER lhdiscord_refuse_truncate BEFORE TRUNCATE ON public.users
  FOR EACH STATEMENT EXECUTE FUNCTION public.lhdiscord_refuse_truncate();

-- 3. The backfill: users that existed before this migration. Rows of
-- lhdiscord.users with no public.users row are left alone: find out why
-- they are there before deleting them (a delete strips Discord roles).
INSERT INTO lhdiscord.users AS u
    (user_id, username, membership_level, staff_department, staff_rank,
     in_brig, notify_discord, in_scope)
  SELECT id, name,
         membership_level::lhdiscord.membership_level,
         staff_department::lhdiscord.staff_department,
         staff_rank::lhdiscord.staff_rank,
         in_brig, notify_discord, in_scope
    FROM public.users
ON CONFLICT (user_id) DO UPDATE
  SET username = EXCLUDED.username,
      membership_level = EXCLUDED.membership_level,
      staff_department = EXCLUDED.staff_department,
      staff_rank = EXCLUDED.staff_rank,
      in_brig = EXCLUDED.in_brig,
      notify_discord = EXCLUDED.notify_discord,
      in_scope = EXCLUDED.in_scope,
      updated_at = now()
  WHERE (u.username, u.membership_level, u.staff_department, u.staff_rank,
         u.in_brig, u.notify_discord, u.in_scope)
        IS DISTINCT FROM
        (EXCLUDED.username, EXCLUDED.membership_level, EXCLUDED.staff_department,
         EXCLUDED.staff_rank, EXCLUDED.in_brig, EXCLUDED.notify_discord,
         EXCLUDED.in_scope);
