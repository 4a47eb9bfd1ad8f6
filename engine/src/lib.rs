//! The secureclaw engine: workflow model, validation, templating, risk, policy, scheduling.

pub mod diag;
pub mod yaml;
pub mod model;
pub mod units;
pub mod schema;
pub mod template;
pub mod workspace;
pub mod validate;
pub mod events;
pub mod policy;
pub mod record;
pub mod actions;
pub mod inputs;
pub mod scheduler;
pub mod watch;
