-- The full install script of the release (CREATE EXTENSION lhdiscord runs
-- sql/lhdiscord--<version>.sql) gives exactly what the upgrade path from
-- 0.1.0 gives: the same objects with the same definitions, columns (in the
-- same order), constraints, indexes, triggers, comments, privileges, enum
-- labels, sequences and seed rows.
\i sql/include/reset.sql

-- One row per property of every member object of the extension, named so
-- that two installs can be compared (no OIDs, no positions of dropped
-- columns).
CREATE FUNCTION public.lhd_fingerprint() RETURNS TABLE (obj text, prop text, val text)
LANGUAGE sql AS $$
  WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'lhdiscord'),
  members AS (
    SELECT d.classid, d.objid FROM pg_depend d, ext
     WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
  ),
  rels AS (
    SELECT c.oid, c.oid::regclass::text AS name, c.relkind FROM pg_class c
      JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
  )
  -- every member, its comment and (functions) its definition and privileges
  SELECT pg_describe_object(m.classid, m.objid, 0), 'comment',
         coalesce(obj_description(m.objid, m.classid::regclass::text), '(none)')
    FROM members m
  UNION ALL
  SELECT p.oid::regprocedure::text, 'definition', pg_get_functiondef(p.oid)
    FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
   WHERE p.prokind <> 'a'
  UNION ALL
  SELECT p.oid::regprocedure::text, 'acl', coalesce(p.proacl::text, '(default)')
    FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
  -- relations: kind, privileges, options, view text
  UNION ALL
  SELECT r.name, 'relation',
         r.relkind::text || ' acl=' || coalesce(c.relacl::text, '(default)')
         || ' options=' || coalesce(c.reloptions::text, '') || ' persistence=' || c.relpersistence::text
         || ' rls=' || c.relrowsecurity
    FROM rels r JOIN pg_class c ON c.oid = r.oid
  UNION ALL
  SELECT r.name, 'view', pg_get_viewdef(r.oid) FROM rels r WHERE r.relkind IN ('v', 'm')
  -- columns, in order among the live ones
  UNION ALL
  SELECT r.name, 'column ' || row_number() OVER (PARTITION BY r.oid ORDER BY a.attnum),
         a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
         || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
         || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '')
         || CASE a.attidentity WHEN '' THEN '' ELSE ' identity ' || a.attidentity::text END
         || CASE a.attgenerated WHEN '' THEN '' ELSE ' generated ' || a.attgenerated::text END
         || coalesce(' collate ' || NULLIF(a.attcollation, 0)::regcollation::text, '')
         || ' acl=' || coalesce(a.attacl::text, '(default)')
         || ' comment=' || coalesce(col_description(r.oid, a.attnum), '(none)')
    FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
  -- constraints, indexes, triggers, rules, policies of member relations
  UNION ALL
  SELECT r.name, 'constraint ' || co.conname, pg_get_constraintdef(co.oid)
    FROM rels r JOIN pg_constraint co ON co.conrelid = r.oid
  UNION ALL
  SELECT r.name, 'index ' || i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
    FROM rels r JOIN pg_index i ON i.indrelid = r.oid
  UNION ALL
  SELECT r.name, 'trigger ' || t.tgname, pg_get_triggerdef(t.oid) || ' enabled=' || t.tgenabled::text
    FROM rels r JOIN pg_trigger t ON t.tgrelid = r.oid AND NOT t.tgisinternal
  UNION ALL
  SELECT r.name, 'rule ' || ru.rulename, pg_get_ruledef(ru.oid)
    FROM rels r JOIN pg_rewrite ru ON ru.ev_class = r.oid AND ru.rulename <> '_RETURN'
  UNION ALL
  SELECT r.name, 'policy ' || po.polname, po.polcmd::text || ' ' || coalesce(pg_get_expr(po.polqual, po.polrelid), '')
    FROM rels r JOIN pg_policy po ON po.polrelid = r.oid
  -- sequences
  UNION ALL
  SELECT r.name, 'sequence', format_type(s.seqtypid, NULL) || ' ' || s.seqstart || ' ' || s.seqincrement
         || ' ' || s.seqmax || ' ' || s.seqmin || ' ' || s.seqcache || ' ' || s.seqcycle
    FROM rels r JOIN pg_sequence s ON s.seqrelid = r.oid
  -- enum labels, in their order (not their sort positions, which ALTER TYPE
  -- ... ADD VALUE makes fractional)
  UNION ALL
  SELECT t.oid::regtype::text, 'labels', string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
    FROM pg_type t JOIN members m ON m.classid = 'pg_type'::regclass AND m.objid = t.oid
    JOIN pg_enum e ON e.enumtypid = t.oid
   GROUP BY t.oid
  -- event triggers
  UNION ALL
  SELECT et.evtname, 'event trigger', et.evtevent || ' ' || et.evtfoid::regproc::text
         || ' ' || coalesce(et.evttags::text, '') || ' enabled=' || et.evtenabled::text
    FROM pg_event_trigger et JOIN members m ON m.classid = 'pg_event_trigger'::regclass AND m.objid = et.oid
  -- schema privileges
  UNION ALL
  SELECT 'schema lhdiscord', 'acl', coalesce(nspacl::text, '(default)')
    FROM pg_namespace WHERE nspname = 'lhdiscord'
$$;

-- The rows the scripts seed, per member table (ordered text of each row).
CREATE FUNCTION public.lhd_seed_rows() RETURNS TABLE (rel text, rows text)
LANGUAGE plpgsql AS $$
DECLARE
  r regclass;
BEGIN
  FOR r IN
    SELECT c.oid::regclass FROM pg_class c
      JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid
     WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
       AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'lhdiscord')
       AND c.relkind = 'r'
  LOOP
    rel := r::text;
    EXECUTE format('SELECT coalesce(string_agg(t::text, E''\n'' ORDER BY t::text), '''') FROM %s t', r)
      INTO rows;
    RETURN NEXT;
  END LOOP;
END $$;

-- The upgrade path: the first release, then every upgrade script.
SET client_min_messages = warning;
DROP EXTENSION lhdiscord CASCADE;
CREATE EXTENSION lhdiscord VERSION '0.1.0';
ALTER EXTENSION lhdiscord UPDATE;
RESET client_min_messages;
SELECT extversion = (SELECT default_version FROM pg_available_extensions WHERE name = 'lhdiscord') AS upgraded_to_default
  FROM pg_extension WHERE extname = 'lhdiscord';
CREATE TEMP TABLE upgraded AS SELECT * FROM public.lhd_fingerprint();
CREATE TEMP TABLE upgraded_rows AS SELECT * FROM public.lhd_seed_rows();

-- The full script: CREATE EXTENSION at the default version runs one file,
-- lhdiscord--<version>.sql (it exists: no replay of the chain).
SELECT count(*) AS full_scripts FROM pg_available_extension_versions v
 WHERE v.name = 'lhdiscord' AND v.version = (SELECT default_version FROM pg_available_extensions WHERE name = 'lhdiscord');
SET client_min_messages = warning;
DROP EXTENSION lhdiscord CASCADE;
CREATE EXTENSION lhdiscord;
RESET client_min_messages;
CREATE TEMP TABLE fresh AS SELECT * FROM public.lhd_fingerprint();
CREATE TEMP TABLE fresh_rows AS SELECT * FROM public.lhd_seed_rows();

-- Both installs were fingerprinted in full ...
SELECT (SELECT count(*) FROM fresh) > 500 AS many_properties,
       (SELECT count(*) FROM fresh WHERE prop = 'definition') > 40 AS many_functions,
       (SELECT count(*) FROM fresh WHERE prop LIKE 'column %') > 100 AS many_columns,
       (SELECT count(*) FROM fresh) = (SELECT count(*) FROM upgraded) AS same_count;
-- ... and nothing differs (rows only in one of them, marked which).
(SELECT 'only upgraded' AS side, * FROM upgraded EXCEPT SELECT 'only upgraded', * FROM fresh)
UNION ALL
(SELECT 'only fresh', * FROM fresh EXCEPT SELECT 'only fresh', * FROM upgraded)
ORDER BY 2, 3, 1;
(SELECT 'only upgraded' AS side, * FROM upgraded_rows EXCEPT SELECT 'only upgraded', * FROM fresh_rows)
UNION ALL
(SELECT 'only fresh', * FROM fresh_rows EXCEPT SELECT 'only fresh', * FROM upgraded_rows)
ORDER BY 2, 1;
SELECT count(*) > 10 AS tables_compared FROM fresh_rows;

-- The comparison sees a difference: a changed comment, a grant, a column
-- default and a disabled trigger each show up.
COMMENT ON FUNCTION lhdiscord.can_link(bigint) IS 'changed';
GRANT SELECT ON lhdiscord.role_map TO lhdiscord_monitor;
ALTER TABLE lhdiscord.users ALTER COLUMN notify_discord SET DEFAULT true;
ALTER TABLE lhdiscord.user_roles DISABLE TRIGGER USER;
SELECT obj, prop FROM (SELECT * FROM public.lhd_fingerprint() EXCEPT SELECT * FROM fresh) changed
 ORDER BY 1, 2;

DROP FUNCTION public.lhd_fingerprint();
DROP FUNCTION public.lhd_seed_rows();
