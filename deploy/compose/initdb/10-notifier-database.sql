-- Runs once, when the PostgreSQL volume is first initialised (docker-entrypoint-initdb.d), as POSTGRES_USER.
-- POSTGRES_DB (luccs_procedure) already exists. The notifier gets a database of its own: both services have a
-- table named "eos", so they must never share one database.
CREATE DATABASE luccs_notifier;
