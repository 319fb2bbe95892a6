//! End-to-end tests: the real `terra-ingest` binary as a child process.
