-- Create accounts: a user's bank accounts, cards and wallets, each in one currency.
-- depends: 0001.create-users
-- Money is held as a whole number of the currency's minor unit (cents), never as a float.
CREATE TABLE accounts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name text NOT NULL,
    kind text NOT NULL,
    currency text NOT NULL,
    opening_balance_minor bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    archived_at timestamptz,
    CONSTRAINT accounts_user_name_key UNIQUE (user_id, name),
    CONSTRAINT accounts_name_length CHECK (char_length(name) BETWEEN 1 AND 100),
    CONSTRAINT accounts_kind_known
        CHECK (kind IN ('checking', 'savings', 'credit_card', 'cash', 'investment', 'loan')),
    CONSTRAINT accounts_currency_iso4217 CHECK (currency ~ '^[A-Z]{3}$'),
    CONSTRAINT accounts_archived_after_created CHECK (archived_at >= created_at)
);
