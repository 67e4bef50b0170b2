-- The delivery path writes each delivery row three times (intake, claim, outcome) and each
-- write of a pending row touched every index and ran every foreign-key check. Measured on the
-- CI kind (docs/benchmarks.md): the three foreign keys of the hot tables cost ~34 µs of the
-- ~110 µs PostgreSQL spent per delivery (a trigger query and a row lock each, per row), and two
-- indexes were maintained for queries that do not need them. What the keys guaranteed is kept
-- by the statements that write these tables (store.rs, store/claims.rs, store/deliveries.rs):
-- intake inserts a delivery only for a subscription it holds a key-share lock on (once per
-- subscription per batch, not per row), deleting a subscription deletes its deliveries and
-- their attempts in the same transaction, pruning deletes attempts with their deliveries, and
-- an event is pruned only when no delivery refers to it and intake has not just received it
-- again.
ALTER TABLE webhook_deliveries
    DROP CONSTRAINT webhook_deliveries_event_id_fkey,
    DROP CONSTRAINT webhook_deliveries_subscription_id_fkey;
ALTER TABLE webhook_attempts
    DROP CONSTRAINT webhook_attempts_delivery_id_fkey;

-- Pending deliveries are walked per subscription (webhook_deliveries_due_by_subscription);
-- the oldest due delivery for the metrics is found the same way, one probe per subscription.
DROP INDEX webhook_deliveries_due;

-- Only pruning looks deliveries up by age, and rows are inserted in `created_at` order: a
-- block-range index serves it at a fraction of a B-tree's cost per write.
DROP INDEX webhook_deliveries_created;
CREATE INDEX webhook_deliveries_created ON webhook_deliveries USING brin (created_at);
