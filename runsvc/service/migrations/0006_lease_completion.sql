-- The completion an executor reported for a lease's attempt, as it was accepted (MessagePack
-- of the protocol's Completion). The same completion sent again is answered as before; a
-- different one is refused, so a contradicting late report changes nothing.
ALTER TABLE leases ADD COLUMN completion bytea;
