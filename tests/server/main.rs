//! The HTTP API end to end: a real `secureclaw serve` on loopback, real HTTP.

mod harness;

mod smoke;
