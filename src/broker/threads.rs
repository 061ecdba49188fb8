//! Connection threads: their stack size, and handing back stack pages they no longer use.
//!
//! Thread-per-client costs what each thread's stack has touched: pages stay resident once used.
//! A connection's deepest calls happen once, while it handles CONNECT (authentication, session
//! set-up, logging); an idle client then waits in a shallow read for hours. Giving the pages
//! below the waiting frame back to the kernel keeps an idle connection at a few pages of stack.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Stack size of connection and writer threads: they do little stack work, and small stacks
/// keep thousands of clients cheap (only touched pages count, see above).
pub const THREAD_STACK: usize = 128 * 1024;

/// Bytes below the caller's frame left alone: the frames of this function and of `madvise`
/// itself live there while it runs (and the x86-64 red zone).
const KEEP_BELOW_CALLER: usize = 2 * 1024;

/// Return the unused part of the current thread's stack (everything deeper than the caller's
/// frame, less a margin) to the kernel. The pages read back as zeros if the thread grows into
/// them again, which is what a stack needs. A no-op where the bounds cannot be read.
#[inline(never)]
pub fn release_unused_stack() {
    let marker = 0u8;
    let here = std::ptr::addr_of!(marker) as usize;
    // SAFETY: pthread_getattr_np fills `attr` for the calling thread, which is destroyed after
    // use. The range given to madvise lies inside this thread's own stack mapping, strictly
    // below the live frames (the stack grows down from `here`, and KEEP_BELOW_CALLER covers the
    // frames of this call); MADV_DONTNEED there only drops pages no frame is using.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return;
        }
        let mut low: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let got = libc::pthread_attr_getstack(&attr, &mut low, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        let page = libc::sysconf(libc::_SC_PAGESIZE);
        if got != 0 || page <= 0 {
            return;
        }
        let page = page as usize;
        let start = (low as usize).div_ceil(page) * page;
        let end = here.saturating_sub(KEEP_BELOW_CALLER) / page * page;
        if end > start && here < low as usize + size {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

/// A thread started by `spawn`. Dropped without `join`, it is detached.
pub struct ConnectionThread {
    id: libc::pthread_t,
    finished: Arc<AtomicBool>,
}

/// What `thread_main` runs, and the flag it raises when that returned (or panicked).
struct ThreadStart {
    main: Box<dyn FnOnce() + Send>,
    finished: Arc<AtomicBool>,
}

/// Start a connection (or outbox writer) thread with a `THREAD_STACK` stack.
///
/// Made with `pthread_create`, not `std::thread`: std gives every thread an alternate signal
/// stack for its stack-overflow message, two more memory mappings per thread. At tens of
/// thousands of clients those mappings reach the kernel's `vm.max_map_count` (65530 by default)
/// and the thread start-up aborts the whole process; without them a thread costs two mappings
/// (stack and guard page), and a failed start is an error the listener logs. The price: a stack
/// overflow in a connection thread ends the process with a bare SIGSEGV instead of a message.
pub fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<ConnectionThread> {
    // The kernel allows 15 bytes of thread name.
    let name: Vec<u8> = name.bytes().filter(|&b| b != 0).take(15).collect();
    let name = std::ffi::CString::new(name).unwrap_or_default();
    let finished = Arc::new(AtomicBool::new(false));
    let start = ThreadStart {
        main: Box::new(move || {
            // SAFETY: `name` is a valid NUL-terminated string of at most 15 bytes.
            unsafe { libc::pthread_setname_np(libc::pthread_self(), name.as_ptr()) };
            f();
        }),
        finished: finished.clone(),
    };
    let arg = Box::into_raw(Box::new(start));
    // SAFETY: `attr` is initialised before use and destroyed after; on success the new thread
    // owns `arg` (freed by `thread_main`), on failure it is freed here.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_attr_init(&mut attr) != 0 {
            drop(Box::from_raw(arg));
            return Err(std::io::Error::other("pthread_attr_init failed"));
        }
        libc::pthread_attr_setstacksize(&mut attr, THREAD_STACK);
        let mut id: libc::pthread_t = 0;
        let rc = libc::pthread_create(&mut id, &attr, thread_main, arg.cast());
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 {
            drop(Box::from_raw(arg));
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(ConnectionThread { id, finished })
    }
}

extern "C" fn thread_main(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: `arg` is the box `spawn` leaked for this thread, taken back exactly once.
    let start = unsafe { Box::from_raw(arg.cast::<ThreadStart>()) };
    let ThreadStart { main, finished } = *start;
    // A panic must not unwind into C. The panic hook has already reported it; as with a std
    // thread, only this thread ends.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(main));
    finished.store(true, Ordering::Release);
    std::ptr::null_mut()
}

impl ConnectionThread {
    /// Whether the thread's function has returned.
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Wait for the thread to end.
    pub fn join(self) {
        let id = self.id;
        std::mem::forget(self);
        // SAFETY: `id` is a joinable thread that nobody else joins or detaches.
        unsafe { libc::pthread_join(id, std::ptr::null_mut()) };
    }
}

impl Drop for ConnectionThread {
    fn drop(&mut self) {
        // SAFETY: as in `join`; a detached thread frees its resources when it ends.
        unsafe { libc::pthread_detach(self.id) };
    }
}
