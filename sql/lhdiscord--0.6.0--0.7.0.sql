-- lhdiscord 0.6.0 -> 0.7.0: the PostgreSQL and PHP ecosystems (issue 15):
-- metrics for Prometheus.

\echo Use "ALTER EXTENSION lhdiscord UPDATE TO '0.7.0'" to load this file. \quit

