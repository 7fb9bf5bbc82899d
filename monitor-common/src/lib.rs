//! The kernel/user ABI of agent-monitor, and nothing else.
//!
//! Every type that crosses the boundary between `monitor-ebpf` and the daemon
//! is defined here: `#[repr(C)]`, explicit padding, a size assertion each, and
//! a kind tag at the head of every ring-buffer record. Map and program names
//! are shared constants so the two sides cannot drift apart.
#![no_std]

pub mod event;
pub mod maps;
pub mod names;
pub mod policy;
pub mod tamper;

/// Asserts a struct's size at compile time, on both sides of the ABI.
#[macro_export]
macro_rules! assert_size {
    ($ty:ty, $size:expr) => {
        const _: () = assert!(::core::mem::size_of::<$ty>() == $size);
    };
}
