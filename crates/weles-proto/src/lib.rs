//! WELES wire formats, in one place for both ends of each channel.
//!
//! * [`framing`] — `u32` big-endian length, then a body of at most 1 MiB: every WELES socket.
//! * [`vtpm_events`] — weles-vtpm's event socket (`docs/vtpm-protocol.md` §5): weles-vtpm writes
//!   it, the manager reads it.
//! * [`guest`] — the guest channel (`docs/guest-protocol.md`): weles-guest in the VM and the
//!   manager on the host.
//! * [`operator`] — welesd's local operator API: the `weles operator` commands and welesd.
//!
//! Everything here parses untrusted bytes: lengths are checked before anything is allocated and
//! no input panics (fuzz target `guest_channel`, `vtpm_events`).

pub mod api;
pub mod audit;
pub mod framing;
pub mod guest;
pub mod http;
pub mod operator;
pub mod vtpm_events;
