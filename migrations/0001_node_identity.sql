-- pgmix's own metadata lives in the schema `pgmix` of every database a node replicates. pgmix
-- applies these files in order at start-up (and when a database is first opened), each in one
-- transaction with its number recorded in pgmix.schema_version. Never edit a file that has
-- shipped: add the next one.

-- Which node of which cluster this database belongs to: a node pointed at another node's
-- Postgres, or at a copy of it, is refused instead of mixing two nodes' changes.
CREATE TABLE pgmix.node (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    cluster text NOT NULL,
    node_id integer NOT NULL
);

-- pgmix's metadata is pgmix's: client roles get no access.
REVOKE ALL ON SCHEMA pgmix FROM PUBLIC;
