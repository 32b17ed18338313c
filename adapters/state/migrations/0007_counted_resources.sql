-- The Conditions whose latest version the change feed read counts for the rules (its code maps to a
-- concept of condition-codes.tsv or condition-words.tsv). The Condition feed queues a patient only for
-- a version that counts, or for one that no longer counts when the version before it did (a Condition
-- recoded away from a rule's concept can raise or end an alert): this table remembers the second.
CREATE TABLE IF NOT EXISTS counted_resources (server TEXT NOT NULL, reference TEXT NOT NULL,
  PRIMARY KEY (server, reference));
