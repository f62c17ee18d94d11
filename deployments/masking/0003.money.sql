-- Free text people type about their money: account names ("Joint with Sam"), transaction descriptions and
-- their own category names. Amounts, dates and built-in categories stay: they are what staging tests with.
UPDATE accounts
SET name = initcap(replace(kind, '_', ' ')) || ' ' || id;

UPDATE transactions
SET description = 'Transaction ' || id
WHERE description IS NOT NULL;

UPDATE categories
SET name = 'Category ' || id
WHERE user_id IS NOT NULL;
