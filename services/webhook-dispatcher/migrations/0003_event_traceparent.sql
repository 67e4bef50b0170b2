-- The W3C `traceparent` the event was published with (its NATS header), so an attempt made
-- later from this table still joins the publisher's trace. NULL for events published without
-- a well-formed one (and for the test events the API creates).
ALTER TABLE webhook_events ADD COLUMN traceparent TEXT;
