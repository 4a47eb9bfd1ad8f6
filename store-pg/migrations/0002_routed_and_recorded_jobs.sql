-- A job whose lease lapsed is `interrupted` at once, in the statement that takes the lease
-- away; its run is marked interrupted in the run's own record (sealed, written by a node)
-- just after. `recorded` says that second write happened: a node that fails it (an error, or
-- it dies in between) leaves the job for the next node's pass, so no run stays `running`
-- with nobody left to end it.
ALTER TABLE sc_jobs ADD COLUMN recorded boolean NOT NULL DEFAULT true;
CREATE INDEX sc_jobs_unrecorded ON sc_jobs (finished_at) WHERE state = 'interrupted' AND NOT recorded;

-- A job only one node can do (a revert needs the disk of the node that ran the run): `target`
-- is that node's id, and only its workers claim the job. `result` is the node's answer, sealed
-- like a payload, which the replica that queued the job hands to its client.
ALTER TABLE sc_jobs ADD COLUMN target text;
ALTER TABLE sc_jobs ADD COLUMN result bytea;

UPDATE sc_schema SET version = 2;
