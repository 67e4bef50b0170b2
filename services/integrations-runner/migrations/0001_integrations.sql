-- integrations-runner schema (docs/integrations.md, "Data model").

CREATE TABLE integrations (
    id               text PRIMARY KEY,          -- the backend's id, e.g. 24 hex digits
    project_id       text NOT NULL,
    provider         text NOT NULL,             -- "stripe", "github", "twitter", ...
    name             text NOT NULL,
    base_url         text NOT NULL,
    auth             jsonb NOT NULL,            -- non-secret part: {"type": "bearer"} ...
    endpoints        jsonb NOT NULL,            -- {"getUserTweets": Endpoint, ...}
    rate_limit       jsonb,                     -- {"requests": 100, "perSeconds": 60}
    webhook          jsonb,                     -- non-secret part: {"scheme": "stripe", "toleranceSeconds": 300}
    secrets          bytea,                     -- AES-256-GCM: nonce (12) || ciphertext || tag
    secrets_key_id   text,                      -- which configured key encrypted `secrets`
    is_active        boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    last_used_at     timestamptz,
    CHECK ((secrets IS NULL) = (secrets_key_id IS NULL))
);
CREATE INDEX integrations_project ON integrations (project_id, id);
-- Finding the rows a key still protects, before removing it from the keyring.
CREATE INDEX integrations_secrets_key ON integrations (secrets_key_id) WHERE secrets_key_id IS NOT NULL;

CREATE TABLE integration_usage (
    integration_id text NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    day            date NOT NULL,
    endpoint       text NOT NULL,
    calls          bigint NOT NULL DEFAULT 0,
    successes      bigint NOT NULL DEFAULT 0,
    failures       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (integration_id, day, endpoint)
);

CREATE TABLE integration_rate_state (
    integration_id text PRIMARY KEY REFERENCES integrations (id) ON DELETE CASCADE,
    tokens         double precision NOT NULL,
    refilled_at    timestamptz NOT NULL,
    blocked_until  timestamptz,                 -- from an upstream 429 + Retry-After
    upstream_limit bigint, upstream_remaining bigint, upstream_reset_at timestamptz
);
