-- examples/php/sql/users_table.sql: the application's own users table as a
-- fresh Laravel application creates it (its "create_users_table"
-- migration, written out for PostgreSQL), so that the example starts where
-- a real portal starts. A real portal already has it and skips this file.
-- Run as the application's role: the table is the application's, not
-- lhdiscord's.

CREATE TABLE IF NOT EXISTS public.users (
  id                bigserial PRIMARY KEY,
  name              varchar(255) NOT NULL,
  email             varchar(255) NOT NULL UNIQUE,
  email_verified_at timestamp(0) without time zone,
  password          varchar(255) NOT NULL,
  remember_token    varchar(100),
  created_at        timestamp(0) without time zone,
  updated_at        timestamp(0) without time zone
);
