-- A patient queued again while a poller works on it (the feed saw a newer change) must stay queued
-- when that poller finishes: each enqueue of a patient already queued counts up its generation, and
-- a poller takes the patient off the queue only if the generation is still the one it read.
ALTER TABLE poll_pending ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
