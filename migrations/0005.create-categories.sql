-- Create categories: built-in ones (no owner) and each user's own, optionally nested one level deep.
-- depends: 0001.create-users
CREATE TABLE categories (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id bigint REFERENCES users (id) ON DELETE CASCADE,
    parent_id bigint REFERENCES categories (id) ON DELETE CASCADE,
    name text NOT NULL,
    kind text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT categories_name_length CHECK (char_length(name) BETWEEN 1 AND 60),
    CONSTRAINT categories_kind_known CHECK (kind IN ('income', 'expense', 'transfer')),
    CONSTRAINT categories_not_own_parent CHECK (parent_id <> id)
);

-- Names are unique per owner, ignoring case; built-in names are unique among themselves.
CREATE UNIQUE INDEX categories_builtin_name_key ON categories (lower(name)) WHERE user_id IS NULL;
CREATE UNIQUE INDEX categories_user_name_key ON categories (user_id, lower(name)) WHERE user_id IS NOT NULL;
CREATE INDEX categories_parent_id_idx ON categories (parent_id) WHERE parent_id IS NOT NULL;

INSERT INTO categories (name, kind) VALUES
    ('Salary', 'income'),
    ('Interest', 'income'),
    ('Groceries', 'expense'),
    ('Rent', 'expense'),
    ('Transport', 'expense'),
    ('Eating out', 'expense'),
    ('Transfer', 'transfer');
