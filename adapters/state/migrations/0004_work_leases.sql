-- Leases with expiry, so that pollers sharing one database never read the change feed ("feed") or
-- work on one patient ("Patient/123") at the same time; expires_at is wall-clock epoch seconds.
CREATE TABLE IF NOT EXISTS poll_leases (server TEXT NOT NULL, subject TEXT NOT NULL, owner TEXT NOT NULL,
  expires_at BIGINT NOT NULL, PRIMARY KEY (server, subject));
