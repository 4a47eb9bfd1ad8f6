//! secureclaw engine
