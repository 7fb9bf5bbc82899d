//! The event path: kernel records are decoded ([`decode`]) into the
//! user-facing [`record`](crate::record) model, sequenced per trajectory by the
//! [`pipeline`], and handed to the sinks.

pub mod decode;
pub mod handle;
pub mod kernel;
pub mod leftover;
pub mod pipeline;
pub mod process;
mod refusal;
pub mod resume;
pub mod ringpos;
pub mod state;
pub mod summary;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;
