//! The only `unsafe` code of weles-vtpm: libtpms (Debian `libtpms-dev`, TPM 2.0) and the one
//! socket call std does not offer (receiving a file descriptor with `SCM_RIGHTS`).
//!
//! libtpms keeps global state: one process serves one TPM, and every call into it must be
//! serialised. [`crate::engine`] holds the lock; nothing else calls these functions.

#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_uchar, c_uint};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

pub type TpmResult = u32;

pub const TPM_SUCCESS: TpmResult = 0;
pub const TPM_BAD_PARAMETER: TpmResult = 3;
pub const TPM_FAIL: TpmResult = 9;
pub const TPM_BAD_ORDINAL: TpmResult = 10;
pub const TPM_SIZE: TpmResult = 23;
pub const TPM_IOERROR: TpmResult = 31;
pub const TPM_BAD_LOCALITY: TpmResult = 61;
pub const TPM_RETRY: TpmResult = 0x800;

const TPMLIB_TPM_VERSION_2: c_int = 1;

/// `enum TPMLIB_StateType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub enum StateType {
    Permanent = 1,
    Volatile = 2,
    SaveState = 4,
}

#[repr(C)]
struct LibtpmsCallbacks {
    size_of_struct: c_int,
    tpm_nvram_init: Option<extern "C" fn() -> TpmResult>,
    tpm_nvram_loaddata:
        Option<extern "C" fn(*mut *mut c_uchar, *mut u32, u32, *const c_char) -> TpmResult>,
    tpm_nvram_storedata:
        Option<extern "C" fn(*const c_uchar, u32, u32, *const c_char) -> TpmResult>,
    tpm_nvram_deletename: Option<extern "C" fn(u32, *const c_char, c_uchar) -> TpmResult>,
    tpm_io_init: Option<extern "C" fn() -> TpmResult>,
    tpm_io_getlocality: Option<extern "C" fn(*mut u32, u32) -> TpmResult>,
    tpm_io_getphysicalpresence: Option<extern "C" fn(*mut c_uchar, u32) -> TpmResult>,
}

#[link(name = "tpms")]
unsafe extern "C" {
    fn TPMLIB_ChooseTPMVersion(ver: c_int) -> TpmResult;
    fn TPMLIB_RegisterCallbacks(cbs: *mut LibtpmsCallbacks) -> TpmResult;
    fn TPMLIB_MainInit() -> TpmResult;
    fn TPMLIB_Terminate();
    fn TPMLIB_Process(
        resp: *mut *mut c_uchar,
        resp_size: *mut u32,
        resp_buf_size: *mut u32,
        cmd: *mut c_uchar,
        cmd_size: u32,
    ) -> TpmResult;
    fn TPMLIB_CancelCommand() -> TpmResult;
    fn TPMLIB_SetBufferSize(wanted: u32, min: *mut u32, max: *mut u32) -> u32;
    fn TPMLIB_GetState(st: c_int, buffer: *mut *mut c_uchar, len: *mut u32) -> TpmResult;
    fn TPMLIB_SetState(st: c_int, buffer: *const c_uchar, len: u32) -> TpmResult;
    fn TPMLIB_VolatileAll_Store(buffer: *mut *mut c_uchar, len: *mut u32) -> TpmResult;
    fn TPMLIB_GetInfo(flags: c_uint) -> *mut c_char;
    fn TPM_IO_Hash_Start() -> TpmResult;
    fn TPM_IO_Hash_Data(data: *const c_uchar, len: u32) -> TpmResult;
    fn TPM_IO_Hash_End() -> TpmResult;
    fn TPM_IO_TpmEstablished_Get(established: *mut c_uchar) -> TpmResult;
    fn TPM_IO_TpmEstablished_Reset() -> TpmResult;
    fn TPM_Malloc(buffer: *mut *mut c_uchar, size: u32) -> TpmResult;
    fn TPM_Free(buffer: *mut c_uchar);
}

/// What libtpms asks of its host: persistent blobs and the current locality. Implemented by the
/// engine; the hooks below forward to it. Callbacks run *inside* libtpms calls, so an
/// implementation must not call back into libtpms.
pub trait Host: Send + Sync {
    fn load(&self, name: &str) -> Option<Vec<u8>>;
    fn store(&self, name: &str, data: &[u8]) -> bool;
    fn delete(&self, name: &str);
    fn locality(&self) -> u32;
}

static HOST: std::sync::OnceLock<Box<dyn Host>> = std::sync::OnceLock::new();

fn host() -> Option<&'static dyn Host> {
    HOST.get().map(|b| b.as_ref())
}

fn name_of(name: *const c_char) -> Option<String> {
    if name.is_null() {
        return None;
    }
    // SAFETY: libtpms passes NUL-terminated blob names ("permall", "volatilestate", ...) that
    // live for the duration of the callback; null was excluded above.
    Some(
        unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned(),
    )
}

extern "C" fn cb_nvram_init() -> TpmResult {
    TPM_SUCCESS
}

extern "C" fn cb_loaddata(
    data: *mut *mut c_uchar,
    length: *mut u32,
    _tpm: u32,
    name: *const c_char,
) -> TpmResult {
    const TPM_RETRY_NOT_FOUND: TpmResult = TPM_RETRY; // libtpms treats "retry" as "no such blob"
    let (Some(h), Some(name)) = (host(), name_of(name)) else {
        return TPM_FAIL;
    };
    if data.is_null() || length.is_null() {
        return TPM_FAIL;
    }
    let Some(blob) = h.load(&name) else {
        return TPM_RETRY_NOT_FOUND;
    };
    let Ok(len) = u32::try_from(blob.len()) else {
        return TPM_SIZE;
    };
    let mut buf: *mut c_uchar = std::ptr::null_mut();
    // SAFETY: TPM_Malloc allocates `len` bytes that libtpms will free with TPM_Free; `buf` is a
    // valid out-pointer.
    let rc = unsafe { TPM_Malloc(&mut buf, len.max(1)) };
    if rc != TPM_SUCCESS || buf.is_null() {
        return TPM_SIZE;
    }
    // SAFETY: `buf` holds at least `len` bytes (just allocated); `blob` has exactly `len` bytes;
    // `data`/`length` are non-null out-pointers provided by libtpms for this call.
    unsafe {
        std::ptr::copy_nonoverlapping(blob.as_ptr(), buf, blob.len());
        *data = buf;
        *length = len;
    }
    TPM_SUCCESS
}

extern "C" fn cb_storedata(
    data: *const c_uchar,
    length: u32,
    _tpm: u32,
    name: *const c_char,
) -> TpmResult {
    let (Some(h), Some(name)) = (host(), name_of(name)) else {
        return TPM_FAIL;
    };
    let bytes = if length == 0 {
        &[][..]
    } else if data.is_null() {
        return TPM_FAIL;
    } else {
        // SAFETY: libtpms passes a buffer of `length` bytes valid for the duration of the call.
        unsafe { std::slice::from_raw_parts(data, length as usize) }
    };
    if h.store(&name, bytes) {
        TPM_SUCCESS
    } else {
        TPM_FAIL
    }
}

extern "C" fn cb_deletename(_tpm: u32, name: *const c_char, _must_exist: c_uchar) -> TpmResult {
    if let (Some(h), Some(name)) = (host(), name_of(name)) {
        h.delete(&name);
    }
    TPM_SUCCESS
}

extern "C" fn cb_io_init() -> TpmResult {
    TPM_SUCCESS
}

extern "C" fn cb_getlocality(locality: *mut u32, _tpm: u32) -> TpmResult {
    if locality.is_null() {
        return TPM_FAIL;
    }
    // SAFETY: non-null out-pointer provided by libtpms for this call.
    unsafe { *locality = host().map_or(0, |h| h.locality()) };
    TPM_SUCCESS
}

extern "C" fn cb_getphysicalpresence(pp: *mut c_uchar, _tpm: u32) -> TpmResult {
    if pp.is_null() {
        return TPM_FAIL;
    }
    // SAFETY: non-null out-pointer provided by libtpms for this call.
    unsafe { *pp = 0 };
    TPM_SUCCESS
}

/// Installs the host (once per process) and registers the callbacks with libtpms.
pub fn register(host: Box<dyn Host>) -> Result<(), TpmResult> {
    if HOST.set(host).is_err() {
        return Err(TPM_FAIL);
    }
    let mut cbs = LibtpmsCallbacks {
        size_of_struct: std::mem::size_of::<LibtpmsCallbacks>() as c_int,
        tpm_nvram_init: Some(cb_nvram_init),
        tpm_nvram_loaddata: Some(cb_loaddata),
        tpm_nvram_storedata: Some(cb_storedata),
        tpm_nvram_deletename: Some(cb_deletename),
        tpm_io_init: Some(cb_io_init),
        tpm_io_getlocality: Some(cb_getlocality),
        tpm_io_getphysicalpresence: Some(cb_getphysicalpresence),
    };
    // SAFETY: plain calls into libtpms with a valid version constant; libtpms copies the callback
    // table (the function pointers are 'static).
    let rc = unsafe {
        let rc = TPMLIB_ChooseTPMVersion(TPMLIB_TPM_VERSION_2);
        if rc != TPM_SUCCESS {
            rc
        } else {
            TPMLIB_RegisterCallbacks(&mut cbs)
        }
    };
    if rc == TPM_SUCCESS { Ok(()) } else { Err(rc) }
}

pub fn main_init() -> TpmResult {
    // SAFETY: no arguments; callers serialise calls into libtpms (engine lock).
    unsafe { TPMLIB_MainInit() }
}

pub fn terminate() {
    // SAFETY: no arguments; safe to call when not initialised (libtpms checks).
    unsafe { TPMLIB_Terminate() }
}

/// The response buffer libtpms writes into, kept across commands as swtpm keeps its own:
/// libtpms reallocates it only when a response does not fit, so a command costs no allocation
/// on that side.
struct ResponseBuffer {
    ptr: *mut c_uchar,
    capacity: u32,
}

// SAFETY: the buffer is owned memory from libtpms' allocator, reached only through the mutex
// below; it is not tied to the thread that allocated it.
unsafe impl Send for ResponseBuffer {}

static RESPONSE: std::sync::Mutex<ResponseBuffer> = std::sync::Mutex::new(ResponseBuffer {
    ptr: std::ptr::null_mut(),
    capacity: 0,
});

/// Runs one TPM command; returns the response bytes.
pub fn process(cmd: &[u8]) -> Result<Vec<u8>, TpmResult> {
    // libtpms' prototype takes a mutable pointer; it gets a copy so our input stays ours.
    let mut command = cmd.to_vec();
    let cmd_len = u32::try_from(command.len()).map_err(|_| TPM_SIZE)?;
    let Ok(mut buf) = RESPONSE.lock() else {
        return Err(TPM_FAIL);
    };
    let mut resp_size: u32 = 0;
    let ResponseBuffer { ptr, capacity } = &mut *buf;
    // SAFETY: libtpms reads `cmd_len` bytes from our owned copy; `ptr`/`capacity` describe a
    // buffer from its own allocator (or null/0), which it reallocates with TPM_Realloc when a
    // response does not fit, updating both; all out-pointers are valid for the call.
    let rc =
        unsafe { TPMLIB_Process(ptr, &mut resp_size, capacity, command.as_mut_ptr(), cmd_len) };
    if rc != TPM_SUCCESS {
        return Err(rc);
    }
    if buf.ptr.is_null() || resp_size > buf.capacity {
        return Err(TPM_FAIL);
    }
    // SAFETY: libtpms wrote `resp_size` bytes into the buffer, whose capacity it reported; the
    // mutex keeps anyone else from touching it while we copy.
    Ok(unsafe { std::slice::from_raw_parts(buf.ptr, resp_size as usize) }.to_vec())
}

pub fn cancel() -> TpmResult {
    // SAFETY: no arguments.
    unsafe { TPMLIB_CancelCommand() }
}

/// (buffer size in use, min, max) after asking for `wanted` (0: query).
pub fn set_buffer_size(wanted: u32) -> (u32, u32, u32) {
    let (mut min, mut max) = (0u32, 0u32);
    // SAFETY: valid out-pointers to locals.
    let size = unsafe { TPMLIB_SetBufferSize(wanted, &mut min, &mut max) };
    (size, min, max)
}

/// Takes a buffer libtpms allocated and returns an owned copy, freeing the original.
fn take_buffer(buf: *mut c_uchar, len: u32) -> Vec<u8> {
    if buf.is_null() {
        return Vec::new();
    }
    // SAFETY: libtpms allocated `buf` with at least `len` bytes and handed ownership to us.
    let v = unsafe { std::slice::from_raw_parts(buf, len as usize) }.to_vec();
    // SAFETY: `buf` came from libtpms' allocator and is not used again.
    unsafe { TPM_Free(buf) };
    v
}

pub fn get_state(st: StateType) -> Result<Vec<u8>, TpmResult> {
    let mut buf: *mut c_uchar = std::ptr::null_mut();
    let mut len: u32 = 0;
    // SAFETY: valid out-pointers; libtpms allocates the buffer it returns.
    let rc = unsafe { TPMLIB_GetState(st as c_int, &mut buf, &mut len) };
    let v = take_buffer(buf, len);
    if rc == TPM_SUCCESS { Ok(v) } else { Err(rc) }
}

pub fn set_state(st: StateType, data: &[u8]) -> TpmResult {
    let Ok(len) = u32::try_from(data.len()) else {
        return TPM_SIZE;
    };
    // SAFETY: libtpms reads `len` bytes from `data` (null pointer with length 0 deletes the blob).
    unsafe {
        TPMLIB_SetState(
            st as c_int,
            if data.is_empty() {
                std::ptr::null()
            } else {
                data.as_ptr()
            },
            len,
        )
    }
}

pub fn volatile_all_store() -> Result<Vec<u8>, TpmResult> {
    let mut buf: *mut c_uchar = std::ptr::null_mut();
    let mut len: u32 = 0;
    // SAFETY: valid out-pointers; libtpms allocates the buffer it returns.
    let rc = unsafe { TPMLIB_VolatileAll_Store(&mut buf, &mut len) };
    let v = take_buffer(buf, len);
    if rc == TPM_SUCCESS { Ok(v) } else { Err(rc) }
}

pub fn get_info(flags: u32) -> Option<String> {
    // SAFETY: returns a malloc'ed NUL-terminated string or null.
    let p = unsafe { TPMLIB_GetInfo(flags) };
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null NUL-terminated string owned by us; freed with libc free (libtpms uses
    // the C allocator for this string).
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    // SAFETY: `p` was allocated with malloc by libtpms and is not used again.
    unsafe { libc::free(p.cast()) };
    Some(s)
}

pub fn hash_start() -> TpmResult {
    // SAFETY: no arguments.
    unsafe { TPM_IO_Hash_Start() }
}

pub fn hash_data(data: &[u8]) -> TpmResult {
    let Ok(len) = u32::try_from(data.len()) else {
        return TPM_SIZE;
    };
    // SAFETY: libtpms reads `len` bytes from `data`.
    unsafe { TPM_IO_Hash_Data(data.as_ptr(), len) }
}

pub fn hash_end() -> TpmResult {
    // SAFETY: no arguments.
    unsafe { TPM_IO_Hash_End() }
}

pub fn established_get() -> Result<bool, TpmResult> {
    let mut bit: c_uchar = 0;
    // SAFETY: valid out-pointer to a local.
    let rc = unsafe { TPM_IO_TpmEstablished_Get(&mut bit) };
    if rc == TPM_SUCCESS {
        Ok(bit != 0)
    } else {
        Err(rc)
    }
}

pub fn established_reset() -> TpmResult {
    // SAFETY: no arguments.
    unsafe { TPM_IO_TpmEstablished_Reset() }
}

/// Receives up to `buf.len()` bytes and at most one passed file descriptor (`SCM_RIGHTS`).
pub fn recv_with_fd(sock: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one descriptor, aligned as cmsghdr requires.
    let mut control = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid; the fields set below point to live locals.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `sock` is a socket the caller owns; `msg` describes valid buffers. MSG_CMSG_CLOEXEC
    // keeps received descriptors from leaking into children.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fd = None;
    // SAFETY: CMSG_* walk the control buffer the kernel filled in, bounded by msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET
                && (*c).cmsg_type == libc::SCM_RIGHTS
                && (*c).cmsg_len as usize
                    >= libc::CMSG_LEN(std::mem::size_of::<c_int>() as u32) as usize
            {
                let raw: c_int = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                if raw >= 0 && fd.is_none() {
                    fd = Some(OwnedFd::from_raw_fd(raw));
                } else if raw >= 0 {
                    libc::close(raw);
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, fd))
}
