-- Index transactions by category, built without blocking writes to a live table.
-- depends: 0006.create-transactions
-- transactional: false
-- CONCURRENTLY cannot run in a transaction; IF NOT EXISTS lets a rerun skip a finished build.
CREATE INDEX CONCURRENTLY IF NOT EXISTS transactions_category_id_idx
    ON transactions (category_id) WHERE category_id IS NOT NULL;
