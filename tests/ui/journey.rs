//! A person's whole path through the web UI.
