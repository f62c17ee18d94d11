-- Create transactions: money in (positive) or out (negative) of an account, optionally categorised.
-- depends: 0004.create-accounts 0005.create-categories
CREATE TABLE transactions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    category_id bigint REFERENCES categories (id) ON DELETE SET NULL,
    amount_minor bigint NOT NULL,
    occurred_at timestamptz NOT NULL,
    description text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT transactions_amount_nonzero CHECK (amount_minor <> 0),
    CONSTRAINT transactions_description_length CHECK (char_length(description) <= 500)
);

-- An account's statement: its transactions, newest first.
CREATE INDEX transactions_account_occurred_idx ON transactions (account_id, occurred_at DESC);
