-- the broker's ledger and a demo application database that OpenBao hands out credentials for
CREATE DATABASE broker;
CREATE DATABASE orders;
\connect orders
CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL, placed_at timestamptz DEFAULT now());
INSERT INTO orders (item) VALUES ('coffee'), ('tea');
