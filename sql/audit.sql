-- The audit log is append-only for every role; retention only via purge_audit_log.
\i sql/include/reset.sql

INSERT INTO lhdiscord.users (user_id, username, membership_level) VALUES (1, 'alice', 'traveler');
SELECT (lhdiscord.link_account(1, '100000000000000001', 'alice_d')).id IS NOT NULL AS linked;
SELECT count(*) FROM lhdiscord.audit_log;

-- The owner/superuser cannot change or remove rows.
UPDATE lhdiscord.audit_log SET description = 'forged';
DELETE FROM lhdiscord.audit_log;
TRUNCATE lhdiscord.audit_log;
SELECT expect_error('UPDATE lhdiscord.audit_log SET action = NULL');
-- Not even with triggers switched to replica mode.
SET session_replication_role = replica;
DELETE FROM lhdiscord.audit_log;
RESET session_replication_role;
SELECT count(*), min(description) FROM lhdiscord.audit_log;

-- The application role has no privileges on it at all.
SET ROLE lhd_app;
SELECT count(*) FROM lhdiscord.audit_log;
DELETE FROM lhdiscord.audit_log;
SELECT lhdiscord.purge_audit_log('1 year');
RESET ROLE;

-- Retention: at least 30 days are kept; older rows go; the purge is audited.
SELECT lhdiscord.purge_audit_log('1 day');
SELECT lhdiscord.purge_audit_log(NULL);
INSERT INTO lhdiscord.audit_log (action, description, created_at)
  VALUES ('ancient', 'from last year', now() - interval '400 days');
SELECT lhdiscord.purge_audit_log('365 days');
SELECT action, after_json, description LIKE 'Audit rows older than % removed by %' AS described
  FROM lhdiscord.audit_log ORDER BY id;
-- The flag the purge uses does not leak: deletes are refused again.
DELETE FROM lhdiscord.audit_log;
