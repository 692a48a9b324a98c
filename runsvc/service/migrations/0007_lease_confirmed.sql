-- Whether the executor confirmed it has the lease's attempt (a heartbeat, output or an
-- upload reached us). A lease that expires unconfirmed puts its task back without using a
-- budget: the claim's answer may never have reached the executor. Leases from before this
-- column are taken as confirmed, as they were treated.
ALTER TABLE leases ADD COLUMN confirmed boolean NOT NULL DEFAULT true;
ALTER TABLE leases ALTER COLUMN confirmed SET DEFAULT false;
