//! Trace correlation: receive or fetch the server's spans and join them onto
//! the client's request records.

pub mod engines;
pub mod join;
pub mod receiver;
pub mod span;
