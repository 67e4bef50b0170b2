-- Widget keys of the /widget namespace: which embeddable widget may connect, from where.
CREATE TABLE widget_keys (
    key             text        PRIMARY KEY,
    name            text        NOT NULL,
    allowed_origins text[]      NOT NULL,
    active          boolean     NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    deactivated_at  timestamptz
);
