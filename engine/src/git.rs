//! Workflows kept in git: registered sources, and the provenance of a file that runs.
