-- Hardening: response bodies as bytes, claims identified by a token, a per-subscription due index.

-- A receiver's response body is whatever bytes it sent (0x00 included, which `text` rejects);
-- the API decodes it for display.
ALTER TABLE webhook_attempts
    ALTER COLUMN response_body TYPE BYTEA USING convert_to(response_body, 'UTF8');

-- Set by each claim, cleared when its outcome is recorded. An outcome is recorded only while
-- the delivery still carries the token of the claim that produced it, so a replica whose lease
-- was taken over (or a delivery reset by redeliver) cannot overwrite the newer claim's state.
ALTER TABLE webhook_deliveries ADD COLUMN lease_token UUID;

-- The claim walks each enabled subscription's due deliveries, oldest first, up to what that
-- subscription may send now.
CREATE INDEX webhook_deliveries_due_by_subscription
    ON webhook_deliveries (subscription_id, next_attempt_at) WHERE status = 'pending';
