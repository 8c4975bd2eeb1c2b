//! weles-vtpm: one VM's TPM 2.0, the libtpms engine behind swtpm's socket interface.
//!
//! - [`ffi`]: libtpms and `SCM_RIGHTS` (the crate's only `unsafe` code).
//! - [`engine`]: the process's TPM, serialised, with its blobs in the state directory.
//! - [`frame`]: TPM command framing on the data channel.
//! - [`ctrl`]: swtpm's control-channel protocol (what QEMU's `-tpmdev emulator` speaks).
//! - [`sealed`]: the state at rest, sealed and rollback-protected.
//! - [`manufacture`]: PCR banks, EKs and EK certificates of a new vTPM (as `swtpm_setup`).
//! - [`host_counter`]: the monotonic store on the host TPM (an NV counter).
//! - [`events`]: what the TPM did (PCR changes, startup, shutdown), for the manager.
//! - [`tpm_cmd`]: the TPM structures the vTPM reads itself.
//! - [`server`]: the sockets.
//! - [`options`]: swtpm's command-line spelling (`--server type=tcp,port=...`).
//!
//! The wire formats are documented in `docs/vtpm-protocol.md`.

#![deny(unsafe_code)]

pub mod ctrl;
pub mod engine;
pub mod events;
pub mod ffi;
pub mod frame;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod host_counter;
pub mod log;
pub mod manufacture;
pub mod options;
pub mod sealed;
pub mod server;
pub mod tpm_cmd;
