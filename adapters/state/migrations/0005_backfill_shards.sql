-- A whole-population backfill split into shards (poll --backfill bulk --shard K/N): the shards of
-- an export job (its status URL) that have finished their patients. The last one to finish hands
-- the change feeds over at the export's transactionTime.
CREATE TABLE IF NOT EXISTS backfill_shards (server TEXT NOT NULL, job TEXT NOT NULL, shard INTEGER NOT NULL,
  shards INTEGER NOT NULL, finished_at BIGINT NOT NULL, PRIMARY KEY (server, job, shard));
