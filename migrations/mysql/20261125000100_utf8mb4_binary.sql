-- Every table utf8mb4 with a binary NO PAD collation, whatever the database's default: user
-- ids and payload ids are compared byte for byte ("abc", "ABC" and "abc " are three users;
-- a case-insensitive or PAD SPACE collation would merge them), and 4-byte characters (emoji)
-- are stored rather than refused. {binary_collation} is the server's utf8mb4 binary NO PAD
-- collation (MariaDB utf8mb4_nopad_bin, MySQL 8 utf8mb4_0900_bin; utf8mb4_bin, which pads,
-- where the server has neither). Tables made by the earlier migrations took the database's
-- default; this converts them, data included (a table rebuild: on a large existing
-- deployment, run `terra-ingest migrate` when a pause of the projector is acceptable).
-- Converting to a finer collation cannot make two stored keys equal, so it cannot fail on
-- duplicates; each statement can be run again, so a migration cut short is finished by
-- running it again.
ALTER TABLE {schema}{prefix}ingest_migrations CONVERT TO CHARACTER SET utf8mb4 COLLATE {binary_collation};
ALTER TABLE {schema}{prefix}terra_users CONVERT TO CHARACTER SET utf8mb4 COLLATE {binary_collation};
ALTER TABLE {schema}{prefix}terra_data_payloads CONVERT TO CHARACTER SET utf8mb4 COLLATE {binary_collation};
ALTER TABLE {schema}{prefix}terra_misc_payloads CONVERT TO CHARACTER SET utf8mb4 COLLATE {binary_collation};
ALTER TABLE {schema}{prefix}ingest_positions CONVERT TO CHARACTER SET utf8mb4 COLLATE {binary_collation};
ALTER TABLE {schema}{prefix}ingest_payloads CONVERT TO CHARACTER SET utf8mb4 COLLATE {binary_collation};
ALTER TABLE {schema}{prefix}ingest_users CONVERT TO CHARACTER SET utf8mb4 COLLATE {binary_collation};
ALTER TABLE {schema}{prefix}ingest_user_events CONVERT TO CHARACTER SET utf8mb4 COLLATE {binary_collation};
ALTER TABLE {schema}{prefix}ingest_dead_letters CONVERT TO CHARACTER SET utf8mb4 COLLATE {binary_collation};
