-- The state schema as of version 3: poll watermarks, seen versions, the work queue and feed cursors,
-- rechecks, the alert ledger, run history and the CDS Hooks tables. Every statement runs on SQLite
-- and PostgreSQL; {{auto_id}} is a database-assigned 64-bit row id (INTEGER PRIMARY KEY on SQLite,
-- an identity column on PostgreSQL). Versions 1 and 2 existed only as SQLite files and are upgraded
-- in the program before this file runs (CREATE TABLE IF NOT EXISTS completes them).
CREATE TABLE IF NOT EXISTS watermarks (server TEXT NOT NULL, resource_type TEXT NOT NULL, value TEXT NOT NULL,
  PRIMARY KEY (server, resource_type));
CREATE TABLE IF NOT EXISTS seen_versions (server TEXT NOT NULL, reference TEXT NOT NULL, version TEXT NOT NULL,
  last_updated BIGINT NOT NULL, PRIMARY KEY (server, reference, version));
CREATE INDEX IF NOT EXISTS seen_versions_time ON seen_versions (server, last_updated);
CREATE TABLE IF NOT EXISTS alerts (server TEXT NOT NULL, identifier TEXT NOT NULL, patient TEXT NOT NULL,
  rule_id TEXT NOT NULL, evidence_hash TEXT NOT NULL, status TEXT NOT NULL, server_id TEXT NOT NULL,
  server_version TEXT NOT NULL, updated_at BIGINT NOT NULL, PRIMARY KEY (server, identifier));
CREATE INDEX IF NOT EXISTS alerts_patient ON alerts (server, patient);
CREATE TABLE IF NOT EXISTS runs (id {{auto_id}}, server TEXT NOT NULL, started_at BIGINT NOT NULL,
  finished_at BIGINT NOT NULL, outcome TEXT NOT NULL, summary TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cds_jti (issuer TEXT NOT NULL, jti TEXT NOT NULL, expires_at BIGINT NOT NULL,
  PRIMARY KEY (issuer, jti));
CREATE TABLE IF NOT EXISTS cds_feedback (id {{auto_id}}, service_id TEXT NOT NULL, card_uuid TEXT NOT NULL,
  patient TEXT NOT NULL, rule_id TEXT NOT NULL, outcome TEXT NOT NULL, override_reason TEXT NOT NULL,
  outcome_at BIGINT NOT NULL, received_at BIGINT NOT NULL, issuer TEXT NOT NULL DEFAULT '',
  order_ref TEXT NOT NULL DEFAULT '', evidence_hash TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS cds_feedback_card ON cds_feedback (patient, rule_id);
CREATE TABLE IF NOT EXISTS cds_issued_cards (issuer TEXT NOT NULL, service_id TEXT NOT NULL, card_uuid TEXT NOT NULL,
  patient TEXT NOT NULL, rule_id TEXT NOT NULL, order_ref TEXT NOT NULL, severity TEXT NOT NULL,
  evidence_hash TEXT NOT NULL, issued_at BIGINT NOT NULL, PRIMARY KEY (issuer, service_id, card_uuid));
CREATE INDEX IF NOT EXISTS cds_issued_cards_patient ON cds_issued_cards (issuer, service_id, patient);
CREATE TABLE IF NOT EXISTS cds_overrides (issuer TEXT NOT NULL, patient TEXT NOT NULL, rule_id TEXT NOT NULL,
  order_ref TEXT NOT NULL, card_uuid TEXT NOT NULL, evidence_hash TEXT NOT NULL, until_at BIGINT NOT NULL,
  PRIMARY KEY (issuer, patient, rule_id, order_ref));
CREATE TABLE IF NOT EXISTS poll_pending (server TEXT NOT NULL, patient TEXT NOT NULL, attempts INTEGER NOT NULL,
  last_error TEXT NOT NULL, queued_at BIGINT NOT NULL, PRIMARY KEY (server, patient));
CREATE TABLE IF NOT EXISTS poll_feed_cursors (server TEXT NOT NULL, resource_type TEXT NOT NULL,
  next_url TEXT NOT NULL, max_last_updated TEXT NOT NULL, max_last_updated_at BIGINT NOT NULL,
  PRIMARY KEY (server, resource_type));
CREATE TABLE IF NOT EXISTS poll_rechecks (server TEXT NOT NULL, patient TEXT NOT NULL, recheck_at BIGINT NOT NULL,
  basis TEXT NOT NULL, PRIMARY KEY (server, patient));
