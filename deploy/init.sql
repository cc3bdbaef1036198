-- Run by the postgres image when it creates its data directory (docker-compose.yml mounts it).
-- pgmix logs each session in as its user's own role: the development user `pgmix` is a
-- superuser role whose password matches the `password` of [[users]] in deploy/node*.toml.
CREATE ROLE pgmix SUPERUSER LOGIN PASSWORD 'pgmix';
-- Postgres's default search_path starts with "$user", which for this role would be pgmix's own
-- metadata schema `pgmix` (in a cluster): keep its tables in public.
ALTER ROLE pgmix SET search_path = public;
