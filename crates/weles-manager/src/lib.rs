//! welesd, the WELES manager (`docs/manager.md`).
//!
//! * [`monitor`] — one VM's measured history judged as it grows: pure logic, the heart.
//! * [`vtpm_link`] — follows a weles-vtpm's event socket and feeds the monitor.
//! * [`guest_link`] — serves a VM's guest channel and feeds the monitor.
//! * [`vm`] — one supervised VM: its monitor, links and notices.
//! * [`notices`] — the numbered stream of what happened, for subscribers.

pub mod guest_link;
pub mod monitor;
pub mod notices;
pub mod vm;
pub mod vtpm_link;

#[doc(hidden)]
pub mod testing;
