-- Roll back 0002: drop devices.
-- squawk-ignore-file ban-drop-table
DROP TABLE IF EXISTS devices;
