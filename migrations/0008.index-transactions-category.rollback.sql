-- Roll back 0008: drop the category index without blocking writes.
-- transactional: false
-- (yoyo runs a rollback the way it runs its migration; the header above says so to readers and tools.)
DROP INDEX CONCURRENTLY IF EXISTS transactions_category_id_idx;
