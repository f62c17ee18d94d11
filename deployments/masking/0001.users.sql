-- Users: phone numbers, emails and names replaced by fake ones derived from the id (unique, like the real
-- ones; +1555... numbers and example.invalid addresses reach no one).
UPDATE users
SET phone_e164 = '+1555' || lpad(id::text, 11, '0'),
    email = CASE WHEN email IS NULL THEN NULL ELSE 'user' || id || '@example.invalid' END,
    display_name = CASE WHEN display_name IS NULL THEN NULL ELSE 'User ' || id END;
