-- Run once by the postgres image on an empty data directory (docker-entrypoint-initdb.d).
-- One database per service that runs migrations: each keeps its own `_sqlx_migrations`
-- table, and two services' migration histories in one table refuse each other.
CREATE DATABASE platform_socketio;
CREATE DATABASE platform_webhooks;
CREATE DATABASE platform_integrations;
