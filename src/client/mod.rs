//! (being written)
pub mod traceparent;
