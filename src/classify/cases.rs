//! The table-driven classification suite: each line is a statement with its expected class, the
//! columns it reads and the columns it writes. SQL comes from hand-written edge cases, pgbench's
//! built-in scripts, and what SQLAlchemy, Django and Diesel really emit.
//!
//! Line format: `class ¦ reads ¦ writes ¦ sql` (reads and writes comma-separated, `-` for none).

use std::collections::BTreeSet;

use super::{Class, classify};
use crate::schema::Schema;

pub const SCHEMA: &str = r#"
default = "strong"
[tables.accounts]
consistency = "strong"
[tables.posts]
consistency = "weak"
[tables.comments]
consistency = "weak"
[tables.tags]
consistency = "weak"
[tables."app.users"]
consistency = "weak"
strong_columns = ["email", "balance"]
[tables.orders]
consistency = "weak"
strong_columns = ["total"]
[tables.pgbench_history]
consistency = "weak"
[tables.'"Mixed"']
consistency = "weak"
[tables.auth_user]
consistency = "weak"
strong_columns = ["password"]
[tables.blog_post]
consistency = "weak"
[functions]
weak = ["slugify"]
"#;

const CASES: &str = r#"
weak_read ¦ posts.title,posts.id ¦ - ¦ SELECT title FROM posts WHERE id = 1
weak_read ¦ posts.* ¦ - ¦ SELECT * FROM posts
weak_read ¦ posts.* ¦ - ¦ select * from POSTS
weak_read ¦ posts.* ¦ - ¦ SELECT p.* FROM posts p
weak_read ¦ posts.id,posts.title ¦ - ¦ SELECT p.id, p.title FROM public.posts AS p
weak_read ¦ - ¦ - ¦ SELECT count(*) FROM posts
local ¦ - ¦ - ¦ SELECT 1
local ¦ - ¦ - ¦ SELECT now(), random(), gen_random_uuid()
local ¦ - ¦ - ¦ SELECT $1::int + 1
local ¦ - ¦ - ¦ SELECT version()
weak_read ¦ posts.id,comments.post_id,comments.body ¦ - ¦ SELECT c.body FROM posts p JOIN comments c ON c.post_id = p.id
weak_read ¦ posts.id,comments.post_id,posts.title ¦ - ¦ SELECT p.title FROM posts p LEFT JOIN comments c ON c.post_id = p.id WHERE c.post_id IS NULL
weak_read ¦ posts.id,comments.post_id ¦ - ¦ SELECT p.id FROM posts p WHERE EXISTS (SELECT 1 FROM comments c WHERE c.post_id = p.id)
weak_read ¦ posts.id,tags.post_id,posts.post_id ¦ - ¦ SELECT id FROM posts WHERE id IN (SELECT post_id FROM tags)
weak_read ¦ posts.title,tags.name,posts.name,tags.title,posts.id,tags.post_id ¦ - ¦ SELECT title, name FROM posts, tags WHERE posts.id = tags.post_id
weak_read ¦ posts.title ¦ - ¦ SELECT title FROM posts UNION SELECT title FROM posts
weak_read ¦ posts.title,comments.body ¦ - ¦ SELECT title FROM posts UNION ALL SELECT body FROM comments
weak_read ¦ posts.author,posts.likes ¦ - ¦ SELECT author, sum(likes) FROM posts GROUP BY author HAVING sum(likes) > 10
weak_read ¦ posts.id,posts.created ¦ - ¦ SELECT id FROM posts ORDER BY created DESC LIMIT 10 OFFSET 20
weak_read ¦ posts.title,posts.id ¦ - ¦ SELECT title, row_number() OVER (ORDER BY id) FROM posts
weak_read ¦ posts.title,posts.id ¦ - ¦ WITH recent AS (SELECT id, title FROM posts) SELECT title FROM recent
weak_read ¦ posts.* ¦ - ¦ WITH recent AS (SELECT * FROM posts) SELECT * FROM recent r
weak_read ¦ posts.id ¦ - ¦ WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 5) SELECT p.id FROM posts p, t
weak_read ¦ posts.title ¦ - ¦ SELECT lower(title) || '!' FROM posts
weak_read ¦ posts.title ¦ - ¦ SELECT slugify(title) FROM posts
weak_read ¦ posts.body ¦ - ¦ SELECT coalesce(body, '') FROM posts
weak_read ¦ posts.id ¦ - ¦ SELECT DISTINCT ON (id) id FROM posts
weak_read ¦ posts.meta ¦ - ¦ SELECT meta->>'k' FROM posts
weak_read ¦ posts.created ¦ - ¦ SELECT date_trunc('day', created) FROM posts
weak_read ¦ posts.id,posts.title ¦ - ¦ SELECT id, title FROM posts WHERE title ILIKE $1
weak_read ¦ posts.title ¦ - ¦ SELECT CASE WHEN title IS NULL THEN 'x' ELSE title END FROM posts
weak_read ¦ posts.* ¦ - ¦ SELECT * FROM posts FOR UPDATE
weak_read ¦ posts.* ¦ - ¦ SELECT * FROM posts FOR NO KEY UPDATE
weak_read ¦ posts.* ¦ - ¦ SELECT * FROM posts FOR KEY SHARE SKIP LOCKED
weak_read ¦ posts.* ¦ - ¦ SELECT * FROM posts FOR SHARE NOWAIT
weak_read ¦ app.users.name ¦ - ¦ SELECT name FROM app.users
weak_read ¦ app.users.name,app.users.id ¦ - ¦ SELECT u.name FROM app.users u WHERE u.id = $1
weak_read ¦ "Mixed".a ¦ - ¦ SELECT a FROM "Mixed"
weak_read ¦ orders.id,orders.status ¦ - ¦ SELECT id, status FROM orders
weak_read ¦ - ¦ - ¦ SELECT count(*) FROM orders
weak_read ¦ posts.* ¦ - ¦ COPY posts TO STDOUT
weak_read ¦ posts.id,posts.title ¦ - ¦ COPY posts (id, title) TO STDOUT WITH (FORMAT csv)
weak_read ¦ posts.title ¦ - ¦ COPY (SELECT title FROM posts) TO STDOUT
weak_read ¦ posts.title ¦ - ¦ /* pgmix:key=abc */ SELECT title FROM posts
weak_read ¦ posts.title ¦ - ¦ -- comment
SELECT title FROM posts
weak_read ¦ posts.id,posts.title ¦ - ¦ SELECT id, title FROM posts WHERE id = ANY($1)
weak_read ¦ posts.id ¦ - ¦ SELECT id FROM posts WHERE id BETWEEN 1 AND 10
weak_read ¦ posts.id,posts.tags ¦ - ¦ SELECT id FROM posts WHERE tags @> ARRAY['a']
weak_read ¦ posts.title,tags.name,posts.name ¦ - ¦ SELECT (SELECT max(name) FROM tags) AS top, title FROM posts
weak_read ¦ posts.id ¦ - ¦ SELECT x.id FROM (SELECT id FROM posts) x
strong_read ¦ accounts.balance,accounts.id ¦ - ¦ SELECT balance FROM accounts WHERE id = 1
strong_read ¦ accounts.* ¦ - ¦ SELECT * FROM accounts
strong_read ¦ - ¦ - ¦ SELECT count(*) FROM accounts
strong_read ¦ - ¦ - ¦ SELECT 1 FROM public.accounts LIMIT 1
strong_read ¦ app.users.email,app.users.id ¦ - ¦ SELECT email FROM app.users WHERE id = 3
strong_read ¦ app.users.* ¦ - ¦ SELECT * FROM app.users
strong_read ¦ app.users.* ¦ - ¦ SELECT u.* FROM app.users u
strong_read ¦ app.users.name,app.users.balance ¦ - ¦ SELECT name FROM app.users WHERE balance > 0
strong_read ¦ app.users.name,app.users.balance ¦ - ¦ SELECT name FROM app.users ORDER BY balance
strong_read ¦ app.users.email ¦ - ¦ SELECT lower(email) FROM APP.USERS
strong_read ¦ orders.total ¦ - ¦ SELECT sum(total) FROM orders
strong_read ¦ orders.* ¦ - ¦ SELECT * FROM orders
strong_read ¦ posts.title,posts.author_id,accounts.id,accounts.balance ¦ - ¦ SELECT p.title, a.balance FROM posts p JOIN accounts a ON a.id = p.author_id
strong_read ¦ posts.title,posts.id,app.users.id,app.users.email,app.users.name ¦ - ¦ SELECT p.title FROM posts p JOIN app.users u ON u.id = p.id WHERE u.email = 'x' AND u.name = 'y'
strong_read ¦ posts.id,accounts.id ¦ - ¦ SELECT id FROM posts WHERE id IN (SELECT id FROM accounts)
strong_read ¦ posts.id,accounts.balance,accounts.owner ¦ - ¦ SELECT p.id FROM posts p WHERE EXISTS (SELECT 1 FROM accounts a WHERE a.owner = p.id AND a.balance > 0)
strong_read ¦ accounts.balance ¦ - ¦ WITH b AS (SELECT balance FROM accounts) SELECT sum(balance) FROM b
strong_read ¦ other_table.* ¦ - ¦ SELECT * FROM other_table
strong_read ¦ other.x.a ¦ - ¦ SELECT a FROM other.x
strong_read ¦ mixed.a ¦ - ¦ SELECT a FROM mixed
strong_read ¦ accounts.* ¦ - ¦ COPY accounts TO STDOUT
strong_read ¦ app.users.email ¦ - ¦ COPY app.users (email) TO STDOUT
strong_read ¦ accounts.balance ¦ - ¦ COPY (SELECT balance FROM accounts) TO STDOUT WITH CSV HEADER
strong_read ¦ posts.title,accounts.balance ¦ - ¦ SELECT title FROM posts UNION SELECT balance::text FROM accounts
weak_read ¦ posts.x,app.users.x ¦ - ¦ SELECT x FROM posts, app.users
strong_read ¦ posts.*,app.users.* ¦ - ¦ SELECT * FROM posts JOIN app.users ON true
weak_write ¦ - ¦ posts.id,posts.title ¦ INSERT INTO posts (id, title) VALUES (1, 'a')
weak_write ¦ - ¦ posts.* ¦ INSERT INTO posts VALUES (1, 'a')
weak_write ¦ - ¦ posts.* ¦ INSERT INTO posts DEFAULT VALUES
weak_write ¦ - ¦ posts.id,posts.title ¦ INSERT INTO posts (id, title) VALUES (DEFAULT, 'a')
weak_write ¦ posts.id ¦ posts.title ¦ INSERT INTO posts (title) VALUES ($1) RETURNING id
weak_write ¦ - ¦ posts.id,posts.title ¦ INSERT INTO posts (id, title) VALUES (1, 'a'), (2, 'b')
weak_write ¦ posts.title ¦ posts.id,posts.title ¦ INSERT INTO posts (id, title) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title
weak_write ¦ - ¦ posts.id,posts.title ¦ INSERT INTO posts (id, title) VALUES (1, 'a') ON CONFLICT DO NOTHING
weak_write ¦ comments.body ¦ posts.title ¦ INSERT INTO posts (title) SELECT body FROM comments
weak_write ¦ posts.* ¦ comments.* ¦ INSERT INTO comments SELECT * FROM posts
weak_write ¦ posts.id ¦ posts.title ¦ UPDATE posts SET title = 'x' WHERE id = 1
weak_write ¦ posts.id ¦ posts.title ¦ UPDATE posts SET title = DEFAULT WHERE id = 1
weak_write ¦ posts.likes,posts.id ¦ posts.likes ¦ UPDATE posts SET likes = likes + 1 WHERE id = $1
weak_write ¦ posts.id ¦ posts.title,posts.body ¦ UPDATE posts SET (title, body) = ('a', 'b') WHERE id = 2
weak_write ¦ posts.id,comments.post_id,comments.body ¦ posts.title ¦ UPDATE posts p SET title = c.body FROM comments c WHERE c.post_id = p.id
weak_write ¦ posts.id ¦ posts.* ¦ DELETE FROM posts WHERE id = 1
weak_write ¦ - ¦ posts.* ¦ DELETE FROM posts
weak_write ¦ posts.id,comments.post_id ¦ posts.* ¦ DELETE FROM posts p USING comments c WHERE c.post_id = p.id
weak_write ¦ posts.id,posts.* ¦ posts.* ¦ DELETE FROM posts WHERE id = 1 RETURNING *
weak_write ¦ - ¦ posts.* ¦ TRUNCATE posts
weak_write ¦ - ¦ posts.*,comments.* ¦ TRUNCATE TABLE posts, comments
weak_write ¦ - ¦ posts.* ¦ COPY posts FROM STDIN
weak_write ¦ - ¦ posts.id,posts.title ¦ COPY posts (id, title) FROM STDIN WITH (FORMAT csv)
weak_write ¦ app.users.id ¦ app.users.name ¦ UPDATE app.users SET name = 'bob' WHERE id = 1
weak_write ¦ orders.id ¦ orders.status ¦ UPDATE orders SET status = 'shipped' WHERE id = 7
weak_write ¦ posts.id,posts.title ¦ posts.title ¦ UPDATE posts SET title = slugify(title) WHERE id = 1
weak_write ¦ "Mixed".a ¦ "Mixed".a ¦ UPDATE "Mixed" SET a = a + 1
weak_write ¦ posts.id,posts.title ¦ comments.*,posts.* ¦ WITH moved AS (DELETE FROM posts WHERE id = 1 RETURNING id, title) INSERT INTO comments SELECT id, title FROM moved
weak_write ¦ posts.id,comments.id,comments.body ¦ posts.* ¦ MERGE INTO posts p USING comments c ON p.id = c.id WHEN MATCHED THEN UPDATE SET title = c.body WHEN NOT MATCHED THEN INSERT (id, title) VALUES (c.id, c.body)
weak_write ¦ posts.id ¦ posts.* ¦ DELETE FROM ONLY posts WHERE id = 1
strong_write ¦ accounts.id ¦ accounts.balance ¦ UPDATE accounts SET balance = 0 WHERE id = 1
strong_write ¦ accounts.balance,accounts.id ¦ accounts.balance ¦ UPDATE accounts SET balance = balance - $1 WHERE id = $2
strong_write ¦ - ¦ accounts.id,accounts.balance ¦ INSERT INTO accounts (id, balance) VALUES (1, 100)
strong_write ¦ - ¦ accounts.* ¦ INSERT INTO accounts DEFAULT VALUES
strong_write ¦ accounts.id ¦ accounts.* ¦ DELETE FROM accounts WHERE id = 1
strong_write ¦ - ¦ accounts.* ¦ TRUNCATE accounts
strong_write ¦ - ¦ accounts.* ¦ COPY accounts FROM STDIN
strong_write ¦ app.users.id ¦ app.users.email ¦ UPDATE app.users SET email = 'a@b' WHERE id = 1
strong_write ¦ app.users.id ¦ app.users.name,app.users.balance ¦ UPDATE app.users SET name = 'x', balance = 5 WHERE id = 1
strong_write ¦ app.users.id ¦ app.users.name,app.users.email ¦ UPDATE app.users SET (name, email) = ('x', 'y') WHERE id = 1
strong_write ¦ - ¦ app.users.id,app.users.name ¦ INSERT INTO app.users (id, name) VALUES (1, 'x')
strong_write ¦ app.users.id ¦ app.users.* ¦ DELETE FROM app.users WHERE id = 1
strong_write ¦ - ¦ orders.id,orders.status ¦ INSERT INTO orders (id, status) VALUES (1, 'new')
strong_write ¦ orders.id ¦ orders.total ¦ UPDATE orders SET total = 10 WHERE id = 1
strong_write ¦ accounts.id,posts.id ¦ posts.title ¦ UPDATE posts SET title = 'x' WHERE id IN (SELECT id FROM accounts)
strong_write ¦ app.users.email,posts.author,posts.email ¦ posts.* ¦ DELETE FROM posts WHERE author IN (SELECT email FROM app.users)
strong_write ¦ accounts.balance ¦ posts.likes ¦ INSERT INTO posts (likes) SELECT balance FROM accounts
strong_write ¦ posts.title ¦ accounts.note ¦ INSERT INTO accounts (note) SELECT title FROM posts
strong_write ¦ posts.id,posts.title ¦ accounts.*,posts.* ¦ WITH d AS (DELETE FROM posts RETURNING id, title) INSERT INTO accounts SELECT id, title FROM d
strong_write ¦ accounts.id ¦ accounts.*,posts.id ¦ WITH gone AS (DELETE FROM accounts WHERE id = 1 RETURNING id) INSERT INTO posts (id) SELECT id FROM gone
strong_write ¦ accounts.id,posts.id,posts.title ¦ accounts.* ¦ MERGE INTO accounts a USING posts p ON a.id = p.id WHEN MATCHED THEN UPDATE SET note = p.title WHEN NOT MATCHED THEN INSERT (id, note) VALUES (p.id, p.title)
strong_write ¦ accounts.* ¦ - ¦ SELECT * FROM accounts FOR UPDATE
strong_write ¦ accounts.* ¦ - ¦ SELECT * FROM accounts FOR NO KEY UPDATE
strong_write ¦ accounts.id ¦ - ¦ SELECT id FROM accounts WHERE id = 1 FOR SHARE
strong_write ¦ accounts.id ¦ - ¦ SELECT id FROM accounts FOR KEY SHARE
strong_write ¦ app.users.name ¦ - ¦ SELECT name FROM app.users FOR UPDATE
strong_read ¦ posts.id,accounts.id ¦ - ¦ SELECT p.id FROM posts p JOIN accounts a ON a.id = p.id FOR UPDATE OF p
strong_write ¦ - ¦ - ¦ SELECT nextval('posts_id_seq')
strong_write ¦ - ¦ - ¦ SELECT setval('posts_id_seq', 10)
strong_write ¦ - ¦ - ¦ SELECT pg_advisory_lock(42)
strong_write ¦ - ¦ - ¦ SELECT pg_try_advisory_xact_lock(1)
strong_write ¦ posts.title ¦ - ¦ SELECT my_volatile(title) FROM posts
strong_write ¦ - ¦ - ¦ SELECT app.do_things()
strong_write ¦ - ¦ posts.id,posts.title ¦ INSERT INTO posts (id, title) VALUES (nextval('s'), 'x')
strong_write ¦ - ¦ - ¦ DO $$ BEGIN UPDATE posts SET title = 'x'; END $$
strong_write ¦ - ¦ - ¦ do language plpgsql $$ begin perform 1; end $$
strong_write ¦ - ¦ - ¦ CALL transfer(1, 2, 10)
strong_write ¦ - ¦ - ¦ EXECUTE q(1)
strong_write ¦ - ¦ - ¦ SELEC title FROM posts
strong_write ¦ - ¦ - ¦ UPDATE posts SET WHERE
strong_write ¦ - ¦ - ¦ SELECT title FROM posts trailing garbage here
strong_write ¦ - ¦ - ¦ LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE
strong_write ¦ accounts.id ¦ accounts.balance ¦ EXPLAIN ANALYZE UPDATE accounts SET balance = 1 WHERE id = 1
strong_write ¦ accounts.id ¦ accounts.balance ¦ PREPARE up(int) AS UPDATE accounts SET balance = 0 WHERE id = $1
strong_write ¦ - ¦ - ¦ SELECT 'unterminated
weak_write ¦ posts.id ¦ posts.title ¦ PREPARE p2(text) AS UPDATE posts SET title = $1 WHERE id = 1
weak_read ¦ posts.title ¦ - ¦ PREPARE p1 AS SELECT title FROM posts
strong_read ¦ accounts.balance ¦ - ¦ PREPARE p3 AS SELECT balance FROM accounts
weak_read ¦ posts.title ¦ - ¦ EXPLAIN ANALYZE SELECT title FROM posts
local ¦ - ¦ - ¦ EXPLAIN SELECT * FROM accounts
local ¦ - ¦ - ¦ EXPLAIN (COSTS OFF) UPDATE accounts SET balance = 1
ddl ¦ - ¦ - ¦ CREATE TABLE t (id int primary key)
ddl ¦ - ¦ - ¦ CREATE TABLE IF NOT EXISTS app.things (id uuid primary key default gen_random_uuid())
ddl ¦ - ¦ - ¦ ALTER TABLE posts ADD COLUMN x int
ddl ¦ - ¦ - ¦ DROP TABLE posts
ddl ¦ - ¦ - ¦ DROP TABLE IF EXISTS posts CASCADE
ddl ¦ - ¦ - ¦ CREATE INDEX ON posts (title)
ddl ¦ - ¦ - ¦ CREATE UNIQUE INDEX CONCURRENTLY i ON posts (title)
ddl ¦ - ¦ - ¦ CREATE VIEW v AS SELECT * FROM accounts
ddl ¦ - ¦ - ¦ CREATE MATERIALIZED VIEW mv AS SELECT 1
ddl ¦ - ¦ - ¦ REFRESH MATERIALIZED VIEW mv
ddl ¦ - ¦ - ¦ COMMENT ON TABLE posts IS 'x'
ddl ¦ - ¦ - ¦ GRANT SELECT ON posts TO bob
ddl ¦ - ¦ - ¦ REVOKE ALL ON accounts FROM bob
ddl ¦ - ¦ - ¦ CREATE SCHEMA app
ddl ¦ - ¦ - ¦ CREATE EXTENSION IF NOT EXISTS pgcrypto
ddl ¦ - ¦ - ¦ CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$
ddl ¦ - ¦ - ¦ CREATE OR REPLACE FUNCTION g() RETURNS trigger AS $body$ BEGIN RETURN NEW; END $body$ LANGUAGE plpgsql
ddl ¦ - ¦ - ¦ CREATE TRIGGER t BEFORE UPDATE ON posts FOR EACH ROW EXECUTE FUNCTION g()
ddl ¦ - ¦ - ¦ CREATE SEQUENCE s
ddl ¦ - ¦ - ¦ ALTER SEQUENCE s RESTART
ddl ¦ - ¦ - ¦ CREATE TYPE mood AS ENUM ('sad', 'ok')
ddl ¦ - ¦ - ¦ CREATE DATABASE shop
ddl ¦ - ¦ - ¦ DROP DATABASE shop
ddl ¦ - ¦ - ¦ CREATE ROLE bob LOGIN
ddl ¦ - ¦ - ¦ ALTER ROLE bob PASSWORD 'x'
ddl ¦ - ¦ - ¦ REINDEX TABLE posts
ddl ¦ - ¦ - ¦ CLUSTER posts USING posts_pkey
ddl ¦ - ¦ - ¦ SECURITY LABEL ON TABLE posts IS 'x'
ddl ¦ - ¦ - ¦ create table pgbench_history(tid int,bid int,aid    int,delta int,mtime timestamp,filler char(22))
ddl ¦ - ¦ - ¦ alter table pgbench_branches add primary key (bid)
local ¦ - ¦ - ¦ CREATE TEMP TABLE scratch (x int)
local ¦ - ¦ - ¦ CREATE TEMPORARY TABLE scratch AS SELECT * FROM accounts
local ¦ - ¦ - ¦ SET search_path = app, public
local ¦ - ¦ - ¦ SET LOCAL statement_timeout = 0
local ¦ - ¦ - ¦ SET pgmix.idempotency_key = 'k1'
local ¦ - ¦ - ¦ SET SESSION AUTHORIZATION bob
local ¦ - ¦ - ¦ SHOW server_version
local ¦ - ¦ - ¦ SHOW ALL
local ¦ - ¦ - ¦ RESET ALL
local ¦ - ¦ - ¦ LISTEN jobs
local ¦ - ¦ - ¦ UNLISTEN *
local ¦ - ¦ - ¦ NOTIFY jobs, 'x'
local ¦ - ¦ - ¦ DISCARD ALL
strong_write ¦ - ¦ - ¦ SELECT FROM FROM
strong_write ¦ - ¦ - ¦ SELECT select FROM posts
strong_write ¦ - ¦ - ¦ SELECT p.id FROM posts AS where
strong_write ¦ - ¦ - ¦ INSERT posts VALUES (1)
strong_write ¦ - ¦ - ¦ SET
weak_read ¦ posts.id ¦ - ¦ SELECT p.id AS select FROM posts p
local ¦ - ¦ - ¦ SELECT current_role, system_user, current_catalog
local ¦ - ¦ - ¦ DEALLOCATE ALL
local ¦ - ¦ - ¦ DEALLOCATE p1
local ¦ - ¦ - ¦ VACUUM
local ¦ - ¦ - ¦ VACUUM (VERBOSE, ANALYZE) posts
local ¦ - ¦ - ¦ VACUUM FULL accounts
local ¦ - ¦ - ¦ ANALYZE posts
local ¦ - ¦ - ¦ CHECKPOINT
local ¦ - ¦ - ¦ LOCK TABLE posts
local ¦ - ¦ - ¦ FETCH 10 FROM c1
local ¦ - ¦ - ¦ CLOSE c1
local ¦ - ¦ - ¦ BEGIN
local ¦ - ¦ - ¦ BEGIN TRANSACTION
local ¦ - ¦ - ¦ BEGIN ISOLATION LEVEL SERIALIZABLE
local ¦ - ¦ - ¦ BEGIN READ ONLY
local ¦ - ¦ - ¦ START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ WRITE
local ¦ - ¦ - ¦ COMMIT
local ¦ - ¦ - ¦ COMMIT AND CHAIN
local ¦ - ¦ - ¦ END
local ¦ - ¦ - ¦ ROLLBACK
local ¦ - ¦ - ¦ ABORT
local ¦ - ¦ - ¦ SAVEPOINT sp1
local ¦ - ¦ - ¦ RELEASE SAVEPOINT sp1
local ¦ - ¦ - ¦ ROLLBACK TO SAVEPOINT sp1
local ¦ - ¦ - ¦ SET TRANSACTION ISOLATION LEVEL SERIALIZABLE
local ¦ - ¦ - ¦ SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY
ddl ¦ - ¦ - ¦ SELECT * INTO newt FROM posts
ddl ¦ - ¦ - ¦ SELECT id INTO TEMP scratch FROM accounts
local ¦ - ¦ - ¦ SELECT * FROM generate_series(1, 3) g
strong_write ¦ - ¦ - ¦ SELECT * FROM my_writer(1)
strong_read ¦ accounts.* ¦ - ¦ SELECT * FROM generate_series(1, 3) g, accounts
local ¦ - ¦ - ¦ SELECT set_config('search_path', 'app', false)
strong_read ¦ app.users.*,app.users.u ¦ - ¦ SELECT row_to_json(u) FROM app.users u
strong_read ¦ app.users.*,app.users.u ¦ - ¦ SELECT u FROM app.users u
strong_read ¦ app.users.*,app.users.users ¦ - ¦ SELECT to_jsonb(app.users) FROM app.users
strong_read ¦ app.users.* ¦ - ¦ SELECT array_agg(u.*) FROM app.users u
weak_read ¦ posts.*,posts.p ¦ - ¦ SELECT row_to_json(p) FROM posts p
weak_read ¦ - ¦ - ¦ SELECT count(*) FROM app.users
strong_write ¦ app.users.*,app.users.id ¦ app.users.name ¦ UPDATE app.users SET name = 'x' WHERE id = 1 RETURNING *
strong_write ¦ app.users.* ¦ app.users.name ¦ UPDATE app.users u SET name = 'x' RETURNING u.*
strong_write ¦ app.users.email ¦ app.users.name ¦ UPDATE app.users SET name = 'x' RETURNING email
weak_write ¦ posts.* ¦ posts.* ¦ DELETE FROM posts RETURNING *
refused ¦ - ¦ - ¦ PREPARE TRANSACTION 'tx1'
refused ¦ - ¦ - ¦ COMMIT PREPARED 'tx1'
refused ¦ - ¦ - ¦ ROLLBACK PREPARED 'tx1'
refused ¦ - ¦ - ¦ prepare transaction 'lower-case'
strong_read ¦ pgbench_accounts.abalance,pgbench_accounts.aid ¦ - ¦ SELECT abalance FROM pgbench_accounts WHERE aid = $1
strong_write ¦ pgbench_accounts.abalance,pgbench_accounts.aid ¦ pgbench_accounts.abalance ¦ UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2
strong_write ¦ pgbench_tellers.tbalance,pgbench_tellers.tid ¦ pgbench_tellers.tbalance ¦ UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2
strong_write ¦ pgbench_branches.bbalance,pgbench_branches.bid ¦ pgbench_branches.bbalance ¦ UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2
weak_write ¦ - ¦ pgbench_history.tid,pgbench_history.bid,pgbench_history.aid,pgbench_history.delta,pgbench_history.mtime ¦ INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)
strong_write ¦ - ¦ pgbench_accounts.*,pgbench_branches.*,pgbench_history.*,pgbench_tellers.* ¦ truncate table pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers
strong_write ¦ - ¦ pgbench_branches.bid,pgbench_branches.bbalance ¦ insert into pgbench_branches(bid,bbalance) values(1,0)
strong_write ¦ - ¦ pgbench_accounts.* ¦ copy pgbench_accounts from stdin with (freeze on)
strong_read ¦ users.id,users.name,users.email ¦ - ¦ SELECT users.id AS users_id, users.name AS users_name, users.email AS users_email FROM users WHERE users.id = $1
weak_read ¦ blog_post.id,blog_post.title,blog_post.author_id ¦ - ¦ SELECT blog_post.id AS blog_post_id, blog_post.title AS blog_post_title, blog_post.author_id AS blog_post_author_id FROM blog_post WHERE blog_post.author_id = $1
weak_write ¦ blog_post.id ¦ blog_post.title,blog_post.author_id ¦ INSERT INTO blog_post (title, author_id) VALUES ($1, $2) RETURNING blog_post.id
weak_write ¦ blog_post.id ¦ blog_post.title ¦ UPDATE blog_post SET title=$1 WHERE blog_post.id = $2
weak_write ¦ blog_post.id ¦ blog_post.* ¦ DELETE FROM blog_post WHERE blog_post.id = $1
strong_read ¦ auth_user.id,auth_user.password,auth_user.username ¦ - ¦ SELECT "auth_user"."id", "auth_user"."password", "auth_user"."username" FROM "auth_user" WHERE "auth_user"."username" = $1 LIMIT 21
weak_write ¦ auth_user.id ¦ auth_user.last_login ¦ UPDATE "auth_user" SET "last_login" = $1 WHERE "auth_user"."id" = $2
strong_write ¦ auth_user.id ¦ auth_user.password ¦ UPDATE "auth_user" SET "password" = $1 WHERE "auth_user"."id" = $2
weak_read ¦ blog_post.id,blog_post.title ¦ - ¦ SELECT "blog_post"."id", "blog_post"."title" FROM "blog_post" ORDER BY "blog_post"."id" DESC
weak_read ¦ - ¦ - ¦ SELECT COUNT(*) AS "__count" FROM "blog_post"
weak_read ¦ blog_post.id ¦ - ¦ SELECT 1 AS "a" FROM "blog_post" WHERE "blog_post"."id" = $1 LIMIT 1
weak_read ¦ posts.id,posts.title,posts.published ¦ - ¦ SELECT "posts"."id", "posts"."title" FROM "posts" WHERE "posts"."published" = $1 LIMIT $2
weak_write ¦ posts.id ¦ posts.title,posts.body ¦ INSERT INTO "posts" ("title", "body") VALUES ($1, $2) RETURNING "posts"."id"
weak_write ¦ posts.id,posts.published ¦ posts.published ¦ UPDATE "posts" SET "published" = $1 WHERE ("posts"."id" = $2) RETURNING "posts"."id", "posts"."published"
weak_write ¦ posts.id ¦ posts.* ¦ DELETE FROM "posts" WHERE ("posts"."id" = $1)
strong_write ¦ accounts.id ¦ accounts.owner,accounts.balance ¦ INSERT INTO "accounts" ("owner", "balance") VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING "accounts"."id"
strong_read ¦ - ¦ - ¦ SELECT pg_catalog.pg_get_userbyid(1) FROM pg_catalog.pg_class
strong_read ¦ pg_catalog.pg_namespace.nspname,pg_catalog.pg_class.relname,pg_catalog.pg_class.relnamespace,pg_catalog.pg_namespace.oid ¦ - ¦ SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
local ¦ - ¦ - ¦ SELECT current_setting('server_version_num')
"#;

/// (class, reads, writes, sql) for every case, also used by the property tests and the benchmark.
pub fn cases() -> Vec<(Class, BTreeSet<String>, BTreeSet<String>, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(Class, BTreeSet<String>, BTreeSet<String>, String)> = None;
    for line in CASES.lines() {
        let parts: Vec<&str> = line.splitn(4, " ¦ ").collect();
        if parts.len() == 4 {
            if let Some(p) = pending.take() {
                out.push(p);
            }
            let class =
                Class::ALL.into_iter().find(|c| c.as_str() == parts[0]).unwrap_or_else(|| panic!("class {}", parts[0]));
            let set = |s: &str| -> BTreeSet<String> {
                if s == "-" { BTreeSet::new() } else { s.split(',').map(|x| x.trim().to_owned()).collect() }
            };
            pending = Some((class, set(parts[1]), set(parts[2]), parts[3].to_owned()));
        } else if let Some(p) = pending.as_mut() {
            // A statement that goes on over several lines.
            p.3.push('\n');
            p.3.push_str(line);
        }
    }
    out.extend(pending);
    out
}

#[test]
fn every_case_gets_its_expected_class_reads_and_writes() {
    let schema = Schema::from_toml_str(SCHEMA, "cases.toml").unwrap();
    let cases = cases();
    assert!(cases.len() >= 200, "the suite must cover at least 200 statements, has {}", cases.len());
    let mut failures = Vec::new();
    for (class, reads, writes, sql) in &cases {
        let got = classify(sql, &schema);
        assert_eq!(got.len(), 1, "one statement: {sql}");
        let got = &got[0];
        if got.class != *class || got.reads != *reads || got.writes != *writes {
            failures.push(format!(
                "{sql}\n  want {} reads {reads:?} writes {writes:?}\n  got  {} reads {:?} writes {:?} ({})",
                class.as_str(),
                got.class.as_str(),
                got.reads,
                got.writes,
                got.reason
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases wrong:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// The class cache shares one entry among texts that differ only in literal values (see
/// `split::shape`), so classification must not depend on them: every case, with each literal
/// replaced, must classify exactly as before (a search_path's value aside, which the cache keeps
/// apart).
#[test]
fn literal_values_never_change_a_classification() {
    use sqlparser::tokenizer::Token;
    let schema = Schema::from_toml_str(SCHEMA, "cases.toml").unwrap();
    let mut checked = 0;
    for (_, _, _, sql) in cases() {
        let Ok(tokens) = super::split::tokenize(&sql) else { continue };
        let variant: String = tokens
            .iter()
            .map(|t| match &t.token {
                Token::Number(..) => "42".to_owned(),
                Token::SingleQuotedString(_) => "'zz'".to_owned(),
                Token::EscapedStringLiteral(_) => "E'zz'".to_owned(),
                Token::DollarQuotedString(_) => "$$zz$$".to_owned(),
                other => other.to_string(),
            })
            .collect();
        if variant == sql {
            continue;
        }
        let (a, b) = (&classify(&sql, &schema)[0], &classify(&variant, &schema)[0]);
        if a.search_path.is_none() {
            assert_eq!((a.class, &a.reads, &a.writes), (b.class, &b.reads, &b.writes), "{sql}\n{variant}");
            assert_eq!(super::split::shape(&tokens), super::split::shape(&super::split::tokenize(&variant).unwrap()));
            checked += 1;
        }
    }
    assert!(checked >= 50, "only {checked} cases have literals");
}

#[test]
fn multi_statement_queries_classify_each_statement() {
    let schema = Schema::from_toml_str(SCHEMA, "cases.toml").unwrap();
    let got =
        classify("BEGIN; UPDATE accounts SET balance = 1 WHERE id = 1; SELECT title FROM posts; COMMIT;", &schema);
    let classes: Vec<Class> = got.iter().map(|c| c.class).collect();
    assert_eq!(classes, [Class::Local, Class::StrongWrite, Class::WeakRead, Class::Local]);
    assert_eq!(super::combined(&got), Class::StrongWrite);
    // Semicolons inside strings, dollar quotes and comments do not split.
    let got = classify("SELECT 'a;b' FROM posts; DO $$ BEGIN PERFORM 1; END $$; /* ; */ SELECT 1", &schema);
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].class, Class::StrongWrite);
}

#[test]
fn transaction_options_are_read() {
    let schema = Schema::default();
    let got = classify("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY, NOT DEFERRABLE", &schema);
    let tx = got[0].tx.clone().unwrap();
    assert_eq!(tx.isolation.as_deref(), Some("repeatable read"));
    assert_eq!(tx.read_only, Some(true));
    assert_eq!(tx.deferrable, Some(false));
    let tx = classify("BEGIN ISOLATION LEVEL SERIALIZABLE", &schema)[0].tx.clone().unwrap();
    assert_eq!(tx.isolation.as_deref(), Some("serializable"));
}

#[test]
fn no_schema_file_means_everything_touching_a_table_is_strong() {
    let schema = Schema::default();
    assert_eq!(classify("SELECT title FROM posts", &schema)[0].class, Class::StrongRead);
    assert_eq!(classify("INSERT INTO posts VALUES (1)", &schema)[0].class, Class::StrongWrite);
    assert_eq!(classify("SELECT 1", &schema)[0].class, Class::Local);
}

#[test]
fn views_from_the_catalog_are_strong() {
    let mut schema = Schema::from_toml_str("default = \"weak\"", "s.toml").unwrap();
    assert_eq!(classify("SELECT a FROM v", &schema)[0].class, Class::WeakRead);
    schema.views.insert(crate::schema::TableName::new(Some("public"), "v"));
    assert_eq!(classify("SELECT a FROM v", &schema)[0].class, Class::StrongRead);
}
