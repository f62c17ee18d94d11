-- Roll back 0003: drop phone_otp_codes.
-- squawk-ignore-file ban-drop-table
DROP TABLE IF EXISTS phone_otp_codes;
